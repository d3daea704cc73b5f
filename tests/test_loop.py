"""The master's loop on its own (minirr.master.loop): a round, containment, `soon`, with a fake
selector whose events the test scripts and a fake clock."""

from __future__ import annotations

import os

import pytest

from fakes import READ, WRITE, FakeClock, FakeSelector
from minirr.master.loop import Handler, Loop


class Recorder(Handler):
    """A handler that records its events; `action` runs inside on_event."""

    def __init__(self, name: str, calls: list, action=None, contain_raises: bool = False) -> None:
        self.name = name
        self.calls = calls
        self.action = action
        self.contain_raises = contain_raises

    def on_event(self, mask: int) -> None:
        self.calls.append((self.name, "event", mask))
        if self.action is not None:
            self.action()

    def contain(self, exc: BaseException) -> None:
        self.calls.append((self.name, "contain", str(exc)))
        if self.contain_raises:
            raise exc


def boom(message: str = "boom"):
    def action():
        raise ValueError(message)
    return action


@pytest.fixture
def fds():
    """Three pipes: their read ends are the descriptors the loop watches."""
    pipes = [os.pipe() for _ in range(3)]
    yield [r for r, _ in pipes]
    for pair in pipes:
        for fd in pair:
            os.close(fd)


def make_loop(selector=None) -> Loop:
    return Loop(selector=selector or FakeSelector(), clock=FakeClock())


def test_each_ready_handler_runs_with_its_mask(fds):
    loop, calls = make_loop(), []
    a, b = Recorder("a", calls), Recorder("b", calls)
    loop.register(fds[0], READ, a)
    loop.register(fds[1], READ | WRITE, b)
    loop.selector.ready(fds[0], READ)
    loop.selector.ready(fds[1], WRITE)
    loop.run_once(1.5)
    assert calls == [("a", "event", READ), ("b", "event", WRITE)]
    assert loop.selector.timeouts == [1.5]


def test_a_handler_that_raises_is_contained_by_its_own_contain_and_the_others_still_run(fds):
    loop, calls = make_loop(), []
    loop.register(fds[0], READ, Recorder("a", calls))
    loop.register(fds[1], READ, Recorder("b", calls, action=boom("b failed")))
    loop.register(fds[2], READ, Recorder("c", calls))
    for fd in fds:
        loop.selector.ready(fd)
    loop.run_once(0)
    assert calls == [("a", "event", READ), ("b", "event", READ), ("b", "contain", "b failed"),
                     ("c", "event", READ)]


def test_a_key_unregistered_earlier_in_the_same_round_is_skipped(fds):
    loop, calls = make_loop(), []
    loop.register(fds[0], READ, Recorder("a", calls, action=lambda: loop.unregister(fds[1])))
    loop.register(fds[1], READ, Recorder("b", calls))
    loop.selector.ready(fds[0])
    loop.selector.ready(fds[1])
    loop.run_once(0)
    assert calls == [("a", "event", READ)]
    assert not loop.registered(fds[1])


def test_a_key_re_registered_earlier_in_the_same_round_is_skipped(fds):
    """The descriptor number now belongs to someone else (closed, and reused): the event
    selected for the old registration must not reach the new handler, nor the old one."""
    loop, calls = make_loop(), []
    newcomer = Recorder("new", calls)

    def replace():
        loop.unregister(fds[1])
        loop.register(fds[1], READ, newcomer)

    loop.register(fds[0], READ, Recorder("a", calls, action=replace))
    loop.register(fds[1], READ, Recorder("old", calls))
    loop.selector.ready(fds[0])
    loop.selector.ready(fds[1])
    loop.run_once(0)
    assert calls == [("a", "event", READ)]
    loop.selector.ready(fds[1])            # level-triggered: the event comes again
    loop.run_once(0)
    assert calls[-1] == ("new", "event", READ)


def test_a_key_modified_earlier_in_the_same_round_is_skipped_too(fds):
    loop, calls = make_loop(), []
    b = Recorder("b", calls)
    loop.register(fds[0], READ, Recorder("a", calls, action=lambda: loop.modify(fds[1], READ | WRITE, b)))
    loop.register(fds[1], READ, b)
    loop.selector.ready(fds[0])
    loop.selector.ready(fds[1])
    loop.run_once(0)
    assert calls == [("a", "event", READ)]


def test_a_descriptor_registered_anew_earlier_in_the_round_waits_for_the_next(fds):
    loop, calls = make_loop(), []
    new = Recorder("new", calls)
    loop.register(fds[0], READ, Recorder("a", calls, action=lambda: loop.modify(fds[1], READ, new)))
    loop.register(fds[1], READ, Recorder("old", calls))
    loop.selector.ready(fds[0])
    loop.selector.ready(fds[1])
    loop.run_once(0)
    assert calls == [("a", "event", READ)]                 # the old key's event is not delivered ...
    loop.selector.ready(fds[1])
    loop.run_once(0)
    assert calls[-1] == ("new", "event", READ)             # ... its new handler gets the next one


def test_soon_callbacks_run_at_the_end_of_the_round_in_order(fds):
    loop, calls = make_loop(), []
    a = Recorder("a", calls)

    def on_event():
        loop.soon(a, lambda: calls.append("soon 1"))
        loop.soon(a, lambda: calls.append("soon 2"))

    a.action = on_event
    loop.register(fds[0], READ, a)
    loop.register(fds[1], READ, Recorder("b", calls))
    loop.selector.ready(fds[0])
    loop.selector.ready(fds[1])
    loop.run_once(0)
    assert calls == [("a", "event", READ), ("b", "event", READ), "soon 1", "soon 2"]


def test_a_soon_callback_that_raises_is_contained_by_its_handler_and_the_next_runs():
    loop, calls = make_loop(), []
    a, b = Recorder("a", calls), Recorder("b", calls)
    loop.soon(a, boom("later"))
    loop.soon(b, lambda: calls.append("b's callback"))
    loop.run_once(0)
    assert calls == [("a", "contain", "later"), "b's callback"]


def test_what_a_soon_callback_adds_runs_next_round_after_a_select_that_does_not_wait():
    loop, calls = make_loop(), []
    a = Recorder("a", calls)
    loop.soon(a, lambda: loop.soon(a, lambda: calls.append("second")))
    loop.run_once(5.0)
    assert calls == []
    loop.run_once(5.0)
    assert calls == ["second"]
    # work was waiting at the start of each round: select() did not wait for it
    assert loop.selector.timeouts == [0.0, 0.0]
    loop.run_once(5.0)
    assert loop.selector.timeouts[-1] == 5.0


def test_an_exception_escaping_contain_propagates(fds):
    loop, calls = make_loop(), []
    loop.register(fds[0], READ, Recorder("a", calls, action=boom("fatal"), contain_raises=True))
    loop.register(fds[1], READ, Recorder("b", calls))
    loop.selector.ready(fds[0])
    loop.selector.ready(fds[1])
    with pytest.raises(ValueError, match="fatal"):
        loop.run_once(0)
    assert ("b", "event", READ) not in calls     # the round ended there


def test_an_exception_escaping_contain_from_soon_propagates():
    loop, calls = make_loop(), []
    loop.soon(Recorder("a", calls, contain_raises=True), boom("fatal later"))
    with pytest.raises(ValueError, match="fatal later"):
        loop.run_once(0)


def test_the_base_handler_contains_nothing():
    handler = Handler()
    with pytest.raises(NotImplementedError):
        handler.on_event(READ)
    with pytest.raises(KeyError):
        handler.contain(KeyError("x"))


def test_registration_helpers_and_the_clock(fds):
    clock = FakeClock(start=50.0)
    loop = Loop(selector=FakeSelector(), clock=clock)
    handler = Recorder("a", [])
    assert not loop.registered(fds[0])
    loop.unregister(fds[0])                      # unregistering what is not registered is quiet
    loop.register(fds[0], READ, handler)
    assert loop.registered(fds[0]) and loop.selector.events_of(fds[0]) == READ
    loop.modify(fds[0], WRITE, handler)
    assert loop.selector.events_of(fds[0]) == WRITE
    assert loop.clock() == 50.0
    clock.advance(2.5)
    assert loop.clock() == 52.5
    loop.close()
    assert loop.selector.closed
