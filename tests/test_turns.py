"""One catch-up at a time per conversation (``gigi_crdt.sync.turns``), on a mock clock."""

from __future__ import annotations

import trio
import trio.testing

from gigi_crdt.sync.turns import CatchUpTurns


async def _take(turns: CatchUpTurns, link: object, deadline: float, took: list[tuple[object, float]]) -> None:
    await turns.take("chat", link, deadline)
    took.append((link, trio.current_time()))


async def test_the_turn_passes_from_link_to_link_as_each_catch_up_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns, took = CatchUpTurns(), []
    first, second, third = object(), object(), object()
    assert turns.try_take("chat", first)
    assert not turns.try_take("chat", second)
    assert turns.try_take("other", second)  # turns are per conversation
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_take, turns, second, 100.0, took)
        nursery.start_soon(_take, turns, third, 100.0, took)
        await trio.testing.wait_all_tasks_blocked()
        assert took == []
        turns.arrived("chat", first)
        await trio.testing.wait_all_tasks_blocked()
        assert len(took) == 1  # one at a time: the other waits for this one's catch-up
        turns.arrived("chat", third)  # not the holder: changes nothing
        turns.arrived("chat", took[0][0])
    assert {link for link, _ in took} == {second, third}
    assert all(when == 0 for _, when in took)


async def test_a_link_waits_no_longer_than_its_deadline_and_not_at_all_once_the_holder_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns, took = CatchUpTurns(), []
    stuck, patient, gone, after = object(), object(), object(), object()
    assert turns.try_take("chat", stuck)
    await _take(turns, patient, 10.0, took)  # the stuck link's catch-up never comes
    assert took == [(patient, 10.0)]
    turns.release(patient)
    assert turns.try_take("chat", gone)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_take, turns, after, 1000.0, took)
        await trio.testing.wait_all_tasks_blocked()
        turns.release(gone)  # its link ended
    assert took[-1] == (after, 10.0)
