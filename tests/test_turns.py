"""One catch-up at a time per conversation (``gigi_crdt.sync.turns``), on a mock clock."""

from __future__ import annotations

import trio
import trio.testing

from gigi_crdt.sync.turns import LATE_FOR, CatchUpTurns

WAIT = 10.0


async def _take(
    turns: CatchUpTurns, link: object, deadline: float, took: list[tuple[object, float]], peer: str = "peer"
) -> None:
    await turns.take("chat", link, peer, deadline)
    took.append((link, trio.current_time()))


async def test_the_turn_passes_from_link_to_link_as_each_catch_up_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    turns, took = CatchUpTurns(WAIT), []
    first, second, third = object(), object(), object()
    assert turns.try_take("chat", first, "first")
    assert not turns.try_take("chat", second, "second")
    assert turns.try_take("other", second, "second")  # turns are per conversation
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
    turns, took = CatchUpTurns(WAIT), []
    stuck, patient, gone, after = object(), object(), object(), object()
    assert turns.try_take("chat", stuck, "stuck")
    await _take(turns, patient, 10.0, took)  # the stuck link's catch-up never comes
    assert took == [(patient, 10.0)]
    turns.release(patient)
    assert turns.try_take("chat", gone, "gone")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_take, turns, after, 1000.0, took)
        await trio.testing.wait_all_tasks_blocked()
        turns.release(gone)  # its link ended
    assert took[-1] == (after, 10.0)


async def test_a_peer_that_let_a_turn_run_out_holds_none_for_a_while(autojump_clock: trio.testing.MockClock) -> None:
    turns, took = CatchUpTurns(WAIT), []
    stuck, patient = object(), object()
    assert turns.try_take("chat", stuck, "mallory")
    await _take(turns, patient, WAIT, took, "alice")  # mallory held it all the wait long
    assert turns.is_late("mallory")
    assert not turns.is_late("alice")
    turns.release(patient)
    again = object()  # mallory links again: it may ask, but nobody waits for it
    assert turns.try_take("chat", again, "mallory")
    await _take(turns, patient, trio.current_time() + WAIT, took, "alice")
    assert took[-1] == (patient, WAIT)  # at once
    turns.release(patient)
    autojump_clock.jump(LATE_FOR)
    assert not turns.is_late("mallory")  # forgiven: it holds turns again
    assert turns.try_take("chat", again, "mallory")
    assert not turns.try_take("chat", patient, "alice")


async def test_a_holder_cut_short_before_its_wait_is_not_late(autojump_clock: trio.testing.MockClock) -> None:
    turns, took = CatchUpTurns(WAIT), []
    first, second = object(), object()
    autojump_clock.jump(5.0)
    assert turns.try_take("chat", first, "bob")
    await _take(turns, second, WAIT, took, "alice")  # alice's deadline came 5 s into bob's turn
    assert took == [(second, WAIT)]
    assert not turns.is_late("bob")
