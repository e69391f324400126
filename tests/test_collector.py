"""Pausing the cyclic garbage collector around large merges."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from gigi_crdt._collector import collector_paused, run_with_collector_paused


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_the_collector_resumes_when_the_last_of_overlapping_pauses_ends(collector_on: None) -> None:
    first_in, second_done = threading.Event(), threading.Event()
    seen: list[bool] = []

    def first() -> None:
        with collector_paused():
            first_in.set()
            second_done.wait()
            seen.append(gc.isenabled())  # the other pause ended: this one still holds

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait()
    assert run_with_collector_paused(gc.isenabled) is False
    second_done.set()
    thread.join()
    assert seen == [False]
    assert gc.isenabled()


def test_a_collector_turned_off_by_the_application_stays_off(collector_on: None) -> None:
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_the_collector_resumes_after_an_error(collector_on: None) -> None:
    with pytest.raises(ValueError, match="boom"), collector_paused():
        raise ValueError("boom")
    assert gc.isenabled()
