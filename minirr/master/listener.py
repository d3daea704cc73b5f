"""Listening sockets: binding one, and accepting from it in the loop.

Owns: `bind` (TCP or a unix socket file, with the operator's message when it fails), the
      accept loop (bounded per round), the connection limit, the back-off when the
      process runs out of descriptors, and the set of a listener's open connections.
Never: reads from a connection or decides what one is for (connection.py and the
       listener's owner do).

Two ways to be full (`when_full`):

    "wait"    the application listener: stop accepting; new connections wait in the
              kernel's backlog until one of ours closes (max_connections)
    "evict"   an operator listener: close the connection that has been stuck longest to
              make room (idle, a request that does not complete, or an answer it does
              not read), so no peer, whatever it does, can lock out a probe or the cli
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from typing import Callable, Dict, List, Optional, Tuple, Union

from ..errors import MinirrError
from .lifecycle import IDLE, LINGERING, READING, SENDING
from .loop import READ, Handler, Loop

log = logging.getLogger("minirr")

ACCEPTS_PER_ROUND = 64                 # bounded, so a flood of connects cannot starve the loop
ACCEPT_BACKOFF_S = 0.5                 # after EMFILE/ENFILE
BindAddress = Union[Tuple[str, int], str]  # (host, port), or the path of a unix socket
# "evict" may close a connection in these phases: the peer owes the next move (a request,
# the rest of one, reading its answer, or closing). A WAITING or STREAMING one is waiting
# for the master (a reset in progress, a stop), so it is never a candidate.
_EVICTABLE = (IDLE, READING, SENDING, LINGERING)


def bind(address: BindAddress, shown: str, backlog: int = 1024, nodelay: bool = False) -> socket.socket:
    """A listening, non-blocking socket on `address`. Raises MinirrError naming `shown`
    (the address and the config key it came from) when it cannot."""
    if isinstance(address, str):
        return _bind_unix(address, backlog)
    host, port = address
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if nodelay:
            # Answers leave in one send(); Nagle's algorithm would hold back the tail of a
            # large one until the client's (delayed) ACK. Accepted sockets inherit the
            # option from the listener (Linux, the BSDs), which saves a syscall each.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(min(socket.SOMAXCONN, backlog))
    except OSError as exc:
        sock.close()
        raise MinirrError(f"cannot listen on {shown}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _bind_unix(path: str, backlog: int) -> socket.socket:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # The umask makes the file 0600 from its first moment; chmod states it again, because
    # what the file's mode must be is the point (unix(7): connecting needs write permission).
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise MinirrError(f"cannot create the control socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a server that died is removed; one that answers is not ours."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise MinirrError(f"{path} exists and is not a socket; remove it or set [rpc] listen")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)   # start-up only: the loop is not running yet
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        _unlink_quietly(path)   # nobody listens: stale
        return
    except OSError as exc:
        raise MinirrError(f"cannot check the control socket {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise MinirrError(f"another minirr is running on {path}")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def file_identity(path: str) -> Optional[tuple]:
    """(device, inode, change time) of `path`, to recognise our own socket file later (an
    inode number alone may be reused by a file made after ours was removed)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def remove_own_socket(path: str, identity: Optional[tuple]) -> None:
    """Unlink the control socket file at exit, unless it is no longer ours (a server
    started after us, or a refused start, must keep its file)."""
    if identity is not None and file_identity(path) == identity:
        _unlink_quietly(path)


def stuck_since(conn) -> float:
    """Since when `conn` has made no progress: its last write progress while an answer
    waits unread, otherwise since it went idle (a request begun since counts from there:
    trickling one in is no progress)."""
    return conn.last_write_at if conn.out else conn.idle_since


class Listener(Handler):
    """A listening socket in the loop and the connections accepted from it.

    `accept(sock, peer, now)` is the owner's: it builds and returns the Connection."""

    def __init__(self, loop: Loop, sock: socket.socket, name: str, accept: Callable, max_connections: int,
                 when_full: str = "wait") -> None:
        self.loop = loop
        self.sock = sock
        self.name = name
        self.accept = accept
        self.max_connections = max_connections
        self.when_full = when_full
        self.connections: Dict[int, object] = {}
        self.listening = False
        self.closed = False
        self.paused_until = 0.0         # out of descriptors: no accepts before then
        self._exhaustion_logged = False
        self.resume()

    def __repr__(self) -> str:
        return f"the {self.name} listener"

    # ---- accepting -------------------------------------------------------------------------
    def on_event(self, mask: int) -> None:
        now = self.loop.clock()
        for _ in range(ACCEPTS_PER_ROUND):
            full = len(self.connections) >= self.max_connections
            if full and (self.when_full == "wait" or self._stuck_longest(now) is None):
                self.pause()            # the newcomer waits in the backlog: forget() or expire() resume
                return
            try:
                sock, addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._on_exhausted(exc, now)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue            # the peer gave up while in the backlog
                raise
            if full:
                self._make_room(now)    # "evict": a newcomer is here, so the one stuck longest goes
            self._add(sock, addr, now)

    def _add(self, sock: socket.socket, addr, now: float) -> None:
        try:
            sock.setblocking(False)     # (TCP_NODELAY comes from the listener: see bind())
        except OSError:                 # reset before we got to it
            sock.close()
            return
        peer = addr[0] if isinstance(addr, tuple) else ""
        conn = self.accept(sock, peer, now)
        self.connections[conn.fd] = conn
        conn.start()

    def _make_room(self, now: float) -> None:
        """"evict": close the connection that has been stuck longest (there is one)."""
        victim = self._stuck_longest(now)
        log.info("%s: %d connections open, the most allowed; closing the one stuck longest (%s, %s for %.1fs)",
                 self, len(self.connections), victim, victim.phase.value, now - stuck_since(victim))
        victim.close()

    def _stuck_longest(self, now: float):
        """The evictable connection whose last progress is oldest, or None. One accepted in
        this round (its `stuck_since` is `now`) has not had its turn yet: it is not taken,
        or a burst of newcomers would evict each other before any was read."""
        candidates = [conn for conn in self.connections.values()
                      if conn.phase in _EVICTABLE and stuck_since(conn) < now]
        return min(candidates, key=stuck_since) if candidates else None

    def _on_exhausted(self, exc: OSError, now: float) -> None:
        """Out of descriptors: the connection stays in the backlog, and the listener
        (still readable) is unwatched for a while: a retry at once would spin."""
        if not self._exhaustion_logged:
            log.error("%s: accept failed: %s; pausing accepts for %.1fs at a time (raise the open-files limit?)",
                      self, exc.strerror, ACCEPT_BACKOFF_S)
            self._exhaustion_logged = True
        self.pause()
        self.paused_until = now + ACCEPT_BACKOFF_S

    def pause(self) -> None:
        if self.listening:
            self.loop.unregister(self.sock)
            self.listening = False

    def resume(self) -> None:
        if not self.listening and not self.closed:
            self.loop.register(self.sock, READ, self)
            self.listening = True

    def forget(self, conn) -> None:
        """`conn` has closed."""
        self.connections.pop(conn.fd, None)
        if not self.listening and not self.paused_until and not self.closed:
            self.resume()

    # ---- time ----------------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Apply every connection's limits; end an accept back-off that is over."""
        for conn in list(self.connections.values()):
            conn.expire(now)
        if self.paused_until and now >= self.paused_until:
            self.paused_until = 0.0
            if len(self.connections) < self.max_connections:
                self.resume()
        if not self.listening and not self.paused_until and self.when_full == "evict" \
                and self._stuck_longest(now) is not None:
            self.resume()               # a peer can be evicted now: room can be made for a newcomer

    # ---- the end -------------------------------------------------------------------------
    def close(self) -> None:
        """Stop listening (the connections stay)."""
        if not self.closed:
            self.pause()
            self.closed = True
            self.sock.close()

    def close_connections(self) -> None:
        for conn in list(self.connections.values()):
            conn.close()

    def descriptors(self) -> List[object]:
        """Everything of ours a forked worker must close (STYLE.md §5)."""
        items: List[object] = [] if self.closed else [self.sock]
        return items + [item for conn in self.connections.values() for item in conn.descriptors()]
