"""Listening sockets (minirr.master.listener): bind, accept into connections, the connection
limit ("wait" and "evict"), the back-off when descriptors run out; a fake selector
(readiness asked of the kernel) and a fake clock."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat

import pytest

from fakes import READ, FakeClock, FakeSelector, made_and_finished, spin
from minirr.errors import MinirrError
from minirr.master.lifecycle import CLOSED, IDLE, READING, SENDING, WAITING
from minirr.master.listener import (ACCEPT_BACKOFF_S, ACCEPTS_PER_ROUND, Listener, bind, file_identity,
                             remove_own_socket)
from minirr.master.loop import Loop


# ---- bind ---------------------------------------------------------------------------------------------

def test_bind_tcp_port_0_gives_a_listening_non_blocking_socket():
    sock = bind(("127.0.0.1", 0), "127.0.0.1:0 ([http] address)", nodelay=True)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert not sock.getblocking()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        socket.create_connection((host, port), timeout=5).close()   # it listens
    finally:
        sock.close()


def test_bind_on_a_taken_port_names_the_address_and_the_cause():
    taken = bind(("127.0.0.1", 0), "first")
    port = taken.getsockname()[1]
    try:
        with pytest.raises(MinirrError) as info:
            bind(("127.0.0.1", port), f"127.0.0.1:{port} ([http] address)")
        assert str(info.value) == f"cannot listen on 127.0.0.1:{port} ([http] address): Address already in use"
    finally:
        taken.close()


def test_bind_a_unix_path_makes_a_socket_file_only_its_owner_can_use(tmp_path):
    path = str(tmp_path / "minirr.sock")
    sock = bind(path, f"unix:{path}")
    try:
        mode = os.lstat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        assert not sock.getblocking()
    finally:
        sock.close()


def test_bind_replaces_a_stale_socket_file(tmp_path):
    path = str(tmp_path / "minirr.sock")
    bind(path, "first").close()                       # nobody listens on the file it leaves
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    bind(path, "second").close()


def test_bind_refuses_a_socket_file_that_answers(tmp_path):
    path = str(tmp_path / "minirr.sock")
    live = bind(path, "first")
    try:
        with pytest.raises(MinirrError, match=f"another minirr is running on {path}"):
            bind(path, "second")
    finally:
        live.close()


def test_bind_refuses_to_remove_a_file_that_is_not_a_socket(tmp_path):
    path = tmp_path / "minirr.sock"
    path.write_text("keep me")
    with pytest.raises(MinirrError, match="exists and is not a socket; remove it or set \\[rpc\\] listen"):
        bind(str(path), "unix")
    assert path.read_text() == "keep me"


def test_bind_a_unix_path_in_a_missing_folder_says_why(tmp_path):
    path = str(tmp_path / "no-such-dir" / "minirr.sock")
    with pytest.raises(MinirrError, match=f"cannot create the control socket {path}: No such file or directory"):
        bind(path, "unix")


def test_remove_own_socket_only_removes_our_own_file(tmp_path):
    path = str(tmp_path / "minirr.sock")
    bind(path, "ours").close()
    ours = file_identity(path)
    os.rename(path, path + ".old")                    # still there: its inode is not reused
    bind(path, "a later server's").close()
    remove_own_socket(path, ours)                     # not ours any more: kept
    assert os.path.exists(path)
    remove_own_socket(path, file_identity(path))
    assert not os.path.exists(path)
    remove_own_socket(path, None)                     # nothing to remove: quiet


# ---- accepting -------------------------------------------------------------------------------------------

class FakeConn:
    """What the listener needs of a connection: fd, sock, phase, idle_since, out,
    last_write_at, start, close, descriptors."""

    def __init__(self, listener_box: list, sock: socket.socket, peer: str, now: float) -> None:
        self.listener_box = listener_box
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.phase = IDLE
        self.idle_since = now
        self.out = b""                  # unsent bytes of an answer
        self.last_write_at = now
        self.started = False
        self.expired_at = []

    def start(self) -> None:
        self.started = True

    def descriptors(self) -> list:
        return [self.sock]

    def expire(self, now: float) -> None:
        self.expired_at.append(now)

    def close(self) -> None:
        if self.phase is not CLOSED:
            self.phase = CLOSED
            self.listener_box[0].forget(self)
            self.sock.close()


class Setup:
    def __init__(self, max_connections: int = 10, when_full: str = "wait", sock=None) -> None:
        self.clock = FakeClock()
        self.loop = Loop(selector=FakeSelector(real=True), clock=self.clock)
        self.sock = sock if sock is not None else bind(("127.0.0.1", 0), "test")
        self.accepted = []
        box = []
        self.listener = Listener(self.loop, self.sock, "test", self._accept, max_connections, when_full)
        box.append(self.listener)
        self._box = box
        self.clients = []
        self.new_phase = IDLE

    def _accept(self, sock, peer, now):
        conn = FakeConn(self._box, sock, peer, now)
        conn.phase = self.new_phase
        self.accepted.append(conn)
        return conn

    def connect(self, count: int = 1) -> None:
        for _ in range(count):
            self.clients.append(socket.create_connection(self.sock.getsockname(), timeout=5))

    @property
    def listening(self) -> bool:
        return self.loop.selector.events_of(self.sock) == READ

    def close(self) -> None:
        for conn in list(self.listener.connections.values()):
            conn.close()
        self.listener.close()
        for client in self.clients:
            client.close()


@pytest.fixture
def setup():
    yield from made_and_finished(Setup, Setup.close)


def test_accepted_sockets_become_started_non_blocking_connections(setup):
    s = setup()
    assert s.listening and s.listener.listening
    s.connect(3)
    spin(s.loop, 1)
    assert len(s.accepted) == 3
    for conn in s.accepted:
        assert conn.started and not conn.sock.getblocking()
        assert conn.peer == "127.0.0.1" and conn.idle_since == s.clock()
    assert s.listener.connections == {conn.fd: conn for conn in s.accepted}


def test_accepts_are_bounded_per_round(setup):
    s = setup(max_connections=1000)
    s.connect(ACCEPTS_PER_ROUND + 5)
    spin(s.loop, 1)
    assert len(s.accepted) == ACCEPTS_PER_ROUND
    spin(s.loop, 1)
    assert len(s.accepted) == ACCEPTS_PER_ROUND + 5


def test_when_full_wait_pauses_the_listener_until_one_closes(setup):
    s = setup(max_connections=2)
    s.connect(3)
    spin(s.loop, 2)
    assert len(s.accepted) == 2
    assert not s.listening                           # the third waits in the kernel's backlog
    s.accepted[0].close()
    assert s.listening
    spin(s.loop, 1)
    assert len(s.accepted) == 3 and len(s.listener.connections) == 2


def full_of_idle_peers(setup):
    """An "evict" listener with its two places taken by idle peers; a third connects."""
    s = setup(max_connections=10, when_full="evict")
    s.connect(2)
    spin(s.loop, 1)
    s.listener.max_connections = 2                   # full now (without an eviction on the way)
    older, newer = s.accepted
    older.idle_since, newer.idle_since = 5.0, 3.0    # the second one idle longer
    s.connect(1)
    spin(s.loop, 1)
    return s, older, newer


def test_when_full_evict_closes_the_connection_idle_longest(setup):
    s, older, newer = full_of_idle_peers(setup)
    assert newer.phase is CLOSED
    assert len(s.accepted) == 3 and s.accepted[2].phase is IDLE and s.listening


def test_when_full_evict_closes_one_connection_per_newcomer(setup):
    s, older, newer = full_of_idle_peers(setup)
    assert older.phase is IDLE
    assert set(s.listener.connections.values()) == {older, s.accepted[2]}


def test_when_full_evict_keeps_the_connection_it_just_accepted(setup):
    s = setup(max_connections=1, when_full="evict")
    s.connect(1)
    spin(s.loop, 1)
    assert s.accepted[0].phase is IDLE


def test_when_full_evict_without_an_idle_connection_pauses(setup):
    s = setup(max_connections=1, when_full="evict")
    s.new_phase = WAITING                            # busy: not a candidate
    s.connect(2)
    spin(s.loop, 1)
    assert len(s.accepted) == 1 and not s.listening
    s.accepted[0].close()
    assert s.listening
    spin(s.loop, 1)
    assert len(s.accepted) == 2


def test_when_full_evict_paused_while_busy_makes_room_once_a_peer_is_idle(setup):
    s = setup(max_connections=1, when_full="evict")
    s.new_phase = WAITING
    s.connect(2)
    spin(s.loop, 1)
    assert not s.listening
    s.accepted[0].phase = IDLE                       # its answer went out; it stays connected
    s.clock.advance(1.0)
    s.listener.expire(s.clock())                     # a tick
    spin(s.loop, 1)
    assert len(s.accepted) == 2


def full_of_stuck_peers(setup):
    """An "evict" listener with its three places taken by peers stuck in different ways."""
    s = setup(max_connections=10, when_full="evict")
    s.connect(3)
    spin(s.loop, 1)
    s.listener.max_connections = 3
    reader, sender, idle = s.accepted
    reader.phase, reader.idle_since = READING, 900.0            # a request begun, never completed
    sender.phase, sender.out, sender.last_write_at = SENDING, b"unread", 800.0   # never reads its answer
    idle.idle_since = 950.0
    s.clock.advance(5.0)
    return s, reader, sender, idle


def test_when_full_evict_closes_the_peer_stuck_longest_whatever_its_phase(setup):
    """A peer that pipelines requests and never reads is not idle: it must go too."""
    s, reader, sender, idle = full_of_stuck_peers(setup)
    s.connect(1)
    spin(s.loop, 1)
    assert sender.phase is CLOSED and {reader.phase, idle.phase} == {READING, IDLE}
    s.connect(1)
    spin(s.loop, 1)
    assert reader.phase is CLOSED and idle.phase is IDLE and len(s.accepted) == 5


def test_when_full_evict_counts_a_sender_stuck_from_its_last_write_progress(setup):
    s, reader, sender, idle = full_of_stuck_peers(setup)
    sender.last_write_at = s.clock() - 1.0                      # it did read, a second ago
    s.connect(1)
    spin(s.loop, 1)
    assert reader.phase is CLOSED and sender.phase is SENDING


def test_when_full_evict_never_takes_a_peer_accepted_in_the_same_round(setup):
    """A burst of newcomers must not evict each other before any of them is read: the
    last of the burst waits in the backlog until the others have had a turn."""
    s = setup(max_connections=2, when_full="evict")
    s.connect(3)
    spin(s.loop, 1)
    assert len(s.accepted) == 2 and not s.listening
    assert all(conn.phase is IDLE for conn in s.accepted)
    s.clock.advance(0.5)
    s.listener.expire(s.clock())                               # a tick: the first two are older now
    spin(s.loop, 1)
    assert len(s.accepted) == 3 and s.accepted[0].phase is CLOSED


class ExhaustedSocket:
    """A listening socket whose accept() fails as when the process has no descriptors left."""

    def __init__(self, real: socket.socket, errno_value: int = errno.EMFILE) -> None:
        self.real = real
        self.errno_value = errno_value
        self.accept_calls = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self):
        self.accept_calls += 1
        raise OSError(self.errno_value, os.strerror(self.errno_value))

    def close(self) -> None:
        self.real.close()

    def getsockname(self):
        return self.real.getsockname()


@pytest.mark.parametrize("errno_value", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
def test_out_of_descriptors_backs_off_then_resumes(setup, caplog, errno_value):
    fake = ExhaustedSocket(bind(("127.0.0.1", 0), "test"), errno_value)
    s = setup(sock=fake)
    s.connect(1)
    with caplog.at_level(logging.ERROR, logger="minirr"):
        spin(s.loop, 1)
    assert fake.accept_calls == 1 and not s.listening    # no retry at once: it would spin
    assert s.listener.paused_until == s.clock() + ACCEPT_BACKOFF_S
    [record] = [r for r in caplog.records if "accept failed" in r.getMessage()]
    assert os.strerror(errno_value) in record.getMessage()
    s.clock.advance(ACCEPT_BACKOFF_S - 0.01)
    s.listener.expire(s.clock())
    assert not s.listening
    s.clock.advance(0.01)
    s.listener.expire(s.clock())
    assert s.listening and s.listener.paused_until == 0.0
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="minirr"):
        spin(s.loop, 1)                                  # still exhausted: paused again, logged once
    assert fake.accept_calls == 2 and not s.listening
    assert not [r for r in caplog.records if "accept failed" in r.getMessage()]


def test_a_closing_connection_does_not_end_the_back_off_early(setup):
    fake = ExhaustedSocket(bind(("127.0.0.1", 0), "test"))
    s = setup(sock=fake)
    conn = FakeConn([s.listener], *socket.socketpair()[:1], "x", 0.0)
    s.listener.connections[conn.fd] = conn
    s.connect(1)
    spin(s.loop, 1)
    conn.close()
    assert not s.listening
    s.clock.advance(ACCEPT_BACKOFF_S)
    s.listener.expire(s.clock())
    assert s.listening


def test_a_connection_aborted_in_the_backlog_is_skipped(setup):
    class AbortedOnce(ExhaustedSocket):
        def accept(self):
            self.accept_calls += 1
            if self.accept_calls == 1:
                raise OSError(errno.ECONNABORTED, "aborted")
            return self.real.accept()

    fake = AbortedOnce(bind(("127.0.0.1", 0), "test"))
    s = setup(sock=fake)
    s.connect(1)
    spin(s.loop, 1)
    assert len(s.accepted) == 1 and s.listening


def test_another_accept_error_escapes_to_the_loops_containment(setup):
    fake = ExhaustedSocket(bind(("127.0.0.1", 0), "test"), errno.EINVAL)
    s = setup(sock=fake)
    with pytest.raises(OSError):
        s.listener.on_event(READ)


def test_expire_applies_every_connections_limits(setup):
    s = setup()
    s.connect(2)
    spin(s.loop, 1)
    s.clock.advance(7.0)
    s.listener.expire(s.clock())
    assert [conn.expired_at for conn in s.accepted] == [[s.clock()], [s.clock()]]


# ---- the end, and what a worker must close ------------------------------------------------------------------

def test_descriptors_are_the_listening_socket_and_every_connection(setup):
    s = setup()
    s.connect(2)
    spin(s.loop, 1)
    assert s.listener.descriptors() == [s.sock] + [conn.sock for conn in s.accepted]
    s.listener.close()
    assert s.listener.descriptors() == [conn.sock for conn in s.accepted]


def test_close_stops_listening_and_keeps_the_connections(setup):
    s = setup()
    s.connect(1)
    spin(s.loop, 1)
    s.listener.close()
    assert not s.listening and s.sock.fileno() == -1
    assert s.accepted[0].phase is IDLE
    s.accepted[0].close()
    assert not s.listening                           # a closed listener is never resumed
    s.listener.close()                               # twice is harmless
    s.listener.close_connections()


def test_close_connections_closes_each(setup):
    s = setup()
    s.connect(2)
    spin(s.loop, 1)
    s.listener.close_connections()
    assert [conn.phase for conn in s.accepted] == [CLOSED, CLOSED]
    assert s.listener.connections == {}
