"""A connection's lifecycle (minirr.master.lifecycle): the Phase table walked pair by pair, and
`expiry` for every row of the table in the module docstring, with the times passed in."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from minirr.errors import MinirrError
from minirr.master.lifecycle import (CLOSED, IDLE, LINGERING, READING, SENDING, STREAMING, TRANSITIONS, WAITING,
                              ConnectionLimits, Expiry, Phase, advance, expiry)

EVENTS = sorted({event for _, event in TRANSITIONS})


# ---- the table ---------------------------------------------------------------------------------

@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("event", EVENTS)
def test_every_pair_follows_the_table(phase, event):
    conn = SimpleNamespace(phase=phase)
    expected = TRANSITIONS.get((phase, event))
    if expected is None:
        with pytest.raises(MinirrError, match=f"event {event!r} is not allowed in phase {phase.name}"):
            advance(conn, event)
        assert conn.phase is phase
    else:
        assert advance(conn, event) is expected
        assert conn.phase is expected


def test_closed_is_terminal():
    assert {new for (old, _), new in TRANSITIONS.items() if old is CLOSED} == {CLOSED}
    assert [event for (old, event) in TRANSITIONS if old is CLOSED] == ["close"]


def test_every_phase_can_close_and_every_phase_has_a_way_in():
    assert all(TRANSITIONS[(phase, "close")] is CLOSED for phase in Phase)
    assert set(TRANSITIONS.values()) | {IDLE} == set(Phase)


def test_the_moves_the_docstring_draws():
    assert TRANSITIONS[(IDLE, "data")] is READING
    assert TRANSITIONS[(READING, "request")] is TRANSITIONS[(IDLE, "request")] is WAITING
    assert TRANSITIONS[(WAITING, "respond")] is SENDING
    assert TRANSITIONS[(WAITING, "stream")] is STREAMING
    assert TRANSITIONS[(STREAMING, "respond")] is SENDING
    for phase in (WAITING, STREAMING, SENDING):
        assert TRANSITIONS[(phase, "answered")] is IDLE
        assert TRANSITIONS[(phase, "linger")] is LINGERING
    for phase in (IDLE, READING):
        assert TRANSITIONS[(phase, "reject")] is SENDING


# ---- expiry -------------------------------------------------------------------------------------

LIMITS = ConnectionLimits(header_timeout=10.0, body_timeout=30.0, keepalive_timeout=5.0, min_body_rate=100,
                          min_send_rate=200)
T0 = 1000.0


def conn(phase=IDLE, *, served=0, unsent=0, reading_body=False, idle_since=T0, last_read_at=T0,
         body_started_at=T0, body_bytes=0, last_write_at=T0, send_started_at=T0, sent_since=0, linger_until=0.0):
    """What expiry reads of a connection, and nothing else."""
    return SimpleNamespace(phase=phase, served=served, unsent=unsent, idle_since=idle_since,
                           last_read_at=last_read_at, body_started_at=body_started_at, body_bytes=body_bytes,
                           last_write_at=last_write_at, send_started_at=send_started_at, sent_since=sent_since,
                           linger_until=linger_until, parser=SimpleNamespace(reading_body=reading_body))


def limits(**changes) -> ConnectionLimits:
    return ConnectionLimits(**{**LIMITS.__dict__, **changes})


# IDLE, no request yet: header_timeout, then close without a word
def test_idle_before_the_first_request_closes_after_header_timeout():
    c = conn(IDLE)
    assert expiry(c, LIMITS, T0 + 9.99) is None
    assert expiry(c, LIMITS, T0 + 10.0) == Expiry(0, "idle")


# IDLE after a response: keepalive_timeout
def test_idle_after_a_response_closes_after_keepalive_timeout():
    c = conn(IDLE, served=1)
    assert expiry(c, LIMITS, T0 + 4.99) is None
    assert expiry(c, LIMITS, T0 + 5.0) == Expiry(0, "idle")


@pytest.mark.parametrize("served,key", [(0, "header_timeout"), (1, "keepalive_timeout")])
def test_a_zero_idle_limit_keeps_an_idle_connection(served, key):
    assert expiry(conn(IDLE, served=served), limits(**{key: 0}), T0 + 1e6) is None


# READING the head: header_timeout from going idle, answered 408
def test_a_head_not_complete_within_header_timeout_is_408():
    c = conn(READING, idle_since=T0, last_read_at=T0 + 9.0)     # bytes keep coming, slowly
    assert expiry(c, LIMITS, T0 + 9.99) is None
    assert expiry(c, LIMITS, T0 + 10.0) == Expiry(408, "request header not complete within 10s")


def test_a_zero_header_timeout_lets_a_head_take_its_time():
    assert expiry(conn(READING), limits(header_timeout=0), T0 + 1e6) is None


# READING the body: body_timeout without a byte, 408
def test_a_body_silent_for_body_timeout_is_408():
    c = conn(READING, reading_body=True, last_read_at=T0 + 5.0, body_bytes=10 ** 9)
    assert expiry(c, LIMITS, T0 + 34.99) is None
    assert expiry(c, LIMITS, T0 + 35.0) == Expiry(408, "no request body bytes for 30s")


def test_the_header_timeout_does_not_apply_to_a_body():
    c = conn(READING, reading_body=True, idle_since=T0 - 1000, last_read_at=T0, body_bytes=10 ** 9)
    assert expiry(c, LIMITS, T0 + 1.0) is None


# READING the body: slower than min_body_rate once the body is older than body_timeout, 408
@pytest.mark.parametrize("age,body_bytes,expired", [
    (29.99, 0, False),                 # younger than body_timeout: no rate yet, however slow
    (30.0, 3000, False),               # exactly min_body_rate (100 bytes/s over 30 s)
    (30.0, 2999, True),                # one byte short of it
    (60.0, 6000, False),
    (60.0, 5999, True),
])
def test_min_body_rate_at_and_around_its_threshold(age, body_bytes, expired):
    c = conn(READING, reading_body=True, body_started_at=T0, last_read_at=T0 + age, body_bytes=body_bytes)
    found = expiry(c, LIMITS, T0 + age)
    if expired:
        rate = body_bytes / age
        assert found == Expiry(408, f"request body arrived at {rate:.0f} bytes/s, below min_body_rate (100 bytes/s)")
    else:
        assert found is None


def test_a_burst_makes_up_for_a_pause_in_a_body():
    """The rate is the whole body's average (as Kestrel's): a pause followed by a burst passes."""
    c = conn(READING, reading_body=True, body_started_at=T0, last_read_at=T0 + 59, body_bytes=6000)
    assert expiry(c, LIMITS, T0 + 60) is None


def test_a_zero_min_body_rate_disables_the_rate_rule_only():
    c = conn(READING, reading_body=True, body_started_at=T0, last_read_at=T0 + 100, body_bytes=1)
    assert expiry(c, limits(min_body_rate=0), T0 + 100) is None
    assert expiry(c, limits(min_body_rate=0), T0 + 130).status == 408     # the silence rule still holds


def test_a_zero_body_timeout_disables_both_body_rules():
    c = conn(READING, reading_body=True, body_started_at=T0, last_read_at=T0, body_bytes=0)
    assert expiry(c, limits(body_timeout=0), T0 + 1e6) is None


# any phase with unsent bytes: body_timeout without write progress, close
@pytest.mark.parametrize("phase", [SENDING, STREAMING, WAITING, IDLE, READING])
def test_unsent_bytes_without_write_progress_for_body_timeout_close(phase):
    c = conn(phase, unsent=10, last_write_at=T0 + 1.0, send_started_at=T0 + 1.0, sent_since=10 ** 9)
    assert expiry(c, LIMITS, T0 + 30.99) is None
    assert expiry(c, LIMITS, T0 + 31.0) == Expiry(0, "response not read for 30s")


def test_unsent_bytes_hold_an_idle_connection_past_its_idle_limit():
    """Bytes still owed: the write rules apply, not the idle ones."""
    c = conn(IDLE, unsent=10, last_write_at=T0 + 20, send_started_at=T0 + 20, sent_since=10 ** 9)
    assert expiry(c, LIMITS, T0 + 20) is None


# any phase with unsent bytes: slower than min_send_rate once older than body_timeout, close
@pytest.mark.parametrize("age,sent,expired", [
    (29.99, 0, False),                 # younger than body_timeout
    (30.0, 6000, False),               # exactly min_send_rate (200 bytes/s over 30 s)
    (30.0, 5999, True),
    (45.0, 9000, False),
    (45.0, 8999, True),
])
def test_min_send_rate_at_and_around_its_threshold(age, sent, expired):
    c = conn(SENDING, unsent=1, send_started_at=T0, last_write_at=T0 + age, sent_since=sent)
    found = expiry(c, LIMITS, T0 + age)
    if expired:
        assert found == Expiry(0, f"response read at {sent / age:.0f} bytes/s, below min_send_rate (200 bytes/s)")
    else:
        assert found is None


def test_a_zero_min_send_rate_disables_the_rate_rule_only():
    c = conn(SENDING, unsent=1, send_started_at=T0, last_write_at=T0 + 100, sent_since=1)
    assert expiry(c, limits(min_send_rate=0), T0 + 100) is None
    assert expiry(c, limits(min_send_rate=0), T0 + 130) == Expiry(0, "response not read for 30s")


def test_a_zero_body_timeout_disables_both_send_rules():
    c = conn(SENDING, unsent=1, send_started_at=T0, last_write_at=T0, sent_since=0)
    assert expiry(c, limits(body_timeout=0), T0 + 1e6) is None


# WAITING, STREAMING: the pool's own limits, nothing here
@pytest.mark.parametrize("phase", [WAITING, STREAMING, SENDING])
def test_a_connection_whose_answer_is_under_way_does_not_expire_here(phase):
    c = conn(phase, idle_since=T0 - 1e6, last_read_at=T0 - 1e6, last_write_at=T0 - 1e6)
    assert expiry(c, LIMITS, T0 + 1e6) is None


# LINGERING: LINGER_S, close
def test_lingering_ends_at_linger_until_even_with_unsent_bytes():
    c = conn(LINGERING, linger_until=T0 + 2.0, unsent=5, last_write_at=T0 - 1e6)
    assert expiry(c, LIMITS, T0 + 1.99) is None
    assert expiry(c, LIMITS, T0 + 2.0) == Expiry(0, "lingered")


def test_a_closed_connection_never_expires():
    assert expiry(conn(CLOSED), LIMITS, T0 + 1e6) is None
