"""The master's operator endpoints: the control socket and the status and metrics listeners.

Owns: binding them (a unix control socket mode 0600, stale file replaced, a live one
      refused), accepting, reading, writing with backpressure and closing their
      connections ("peers"), all non-blocking in the loop's one selector.
Never: decides what to answer: a control call goes to `self._on_control_call(peer, call,
       now)` and an HTTP request to `self._answer_http(endpoint_name, request, now)`,
       both in operations.py. Never serves application traffic (frontend.py does).

`Endpoints` is mixed into server.Server through `operations.Operations`.

    control socket ──accept──> Peer(FrameDecoder) ──frames──> control.decode_call ──> Call
    status/metrics ──accept──> Peer(http11.Connection) ──Request──> (status, headers, body)
    answer bytes ──> _send_to_peer (kernel takes what it can) ──> out buffer ──> EVENT_WRITE

Each peer is small and local, so the rules are simple: at most MAX_PEERS per endpoint,
an HTTP peer idle for PEER_IDLE_TIMEOUT_S is closed, a broken control frame closes
its peer.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import stat
import time
from typing import Dict, Optional

from . import control, http11
from .control import ControlError, UnixAddress
from .errors import FrameError, MinirrError, ProtocolError
from .frame import FrameDecoder

log = logging.getLogger("minirr")

READ_SIZE = 64 * 1024
ACCEPTS_PER_TICK = 16
MAX_PEERS = 32                         # per endpoint; more are accepted and closed at once
PEER_IDLE_TIMEOUT_S = 60.0             # an HTTP peer (a scraper, a probe) idle this long
CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
HTTP_LIMITS = http11.Limits(max_request_size=64 * 1024, limit_request_headers=32 * 1024)


class Endpoint:
    """One listening socket: `name` is control, status or metrics; `kind` control or http."""

    def __init__(self, name: str, kind: str, sock: socket.socket) -> None:
        self.name = name
        self.kind = kind
        self.sock = sock
        self.peers = 0


class Peer:
    """One accepted connection to an endpoint. `parser` is a FrameDecoder (control) or an
    http11.Connection (status, metrics)."""

    def __init__(self, endpoint: Endpoint, sock: socket.socket, parser, now: float) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = parser
        self.out = bytearray()
        self.reading = True            # registered for EVENT_READ (until the peer's EOF)
        self.writing = False           # registered for EVENT_WRITE (while `out` has bytes)
        self.closed = False
        self.close_after_write = False
        self.active_at = now


# ---- binding (start-up, before the loop runs) ------------------------------------------------

def bind_control(address: control.Address) -> socket.socket:
    """The control socket, listening and non-blocking. Raises MinirrError with a message
    for the operator when the address is taken."""
    if isinstance(address, UnixAddress):
        return _bind_unix(address.path)
    return _bind_tcp(address.host, address.port, str(address))


def bind_http(name: str, address) -> socket.socket:
    host, port = address
    return _bind_tcp(host, port, f"{host}:{port} for [{name}]")


def _bind_tcp(host: str, port: int, shown: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise MinirrError(f"cannot listen on {shown}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _bind_unix(path: str) -> socket.socket:
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
    sock.listen(16)
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
    """(device, inode) of `path`, to recognise our own socket file later."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def remove_own_socket(path: str, identity: Optional[tuple]) -> None:
    """Unlink the control socket file at exit, unless it is no longer ours (a server
    started after us, or a refused start, must keep its file)."""
    if identity is not None and file_identity(path) == identity:
        _unlink_quietly(path)


# ---- the mixin -------------------------------------------------------------------------------

class Endpoints:
    """Operator endpoints in the loop; mixed into server.Server via operations.Operations."""

    endpoints: Dict[str, Endpoint]
    peers: Dict[int, Peer]

    def _add_endpoint(self, name: str, kind: str, sock: socket.socket) -> Endpoint:
        endpoint = Endpoint(name, kind, sock)
        self.endpoints[name] = endpoint
        self.selector.register(sock, selectors.EVENT_READ, lambda mask: self._on_endpoint_acceptable(endpoint))
        return endpoint

    def _on_endpoint_acceptable(self, endpoint: Endpoint) -> None:
        now = time.monotonic()
        for _ in range(ACCEPTS_PER_TICK):
            try:
                sock, addr = endpoint.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:   # EMFILE and friends: the next tick retries
                log.warning("%s endpoint: accept failed: %s", endpoint.name, exc.strerror)
                return
            if endpoint.peers >= MAX_PEERS:
                sock.close()
                continue
            self._add_peer(endpoint, sock, addr, now)

    def _add_peer(self, endpoint: Endpoint, sock: socket.socket, addr, now: float) -> None:
        sock.setblocking(False)
        if endpoint.kind == "control":
            parser = FrameDecoder(control.MAX_PAYLOAD_BYTES)
        else:
            peer_ip = addr[0] if isinstance(addr, tuple) else ""
            host, port = endpoint.sock.getsockname()[:2]
            parser = http11.Connection(HTTP_LIMITS, remote_addr=peer_ip, default_host=f"{host}:{port}")
        peer = Peer(endpoint, sock, parser, now)
        endpoint.peers += 1
        self.peers[peer.fd] = peer
        self.selector.register(sock, selectors.EVENT_READ, lambda mask: self._on_peer_event(peer, mask))

    def _on_peer_event(self, peer: Peer, mask: int) -> None:
        if peer.closed:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush_peer(peer)
        if mask & selectors.EVENT_READ and not peer.closed:
            self._on_peer_readable(peer)

    def _on_peer_readable(self, peer: Peer) -> None:
        try:
            data = peer.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:              # ConnectionResetError and friends
            self._close_peer(peer)
            return
        now = time.monotonic()
        peer.active_at = now
        handlers = {"control": self._on_control_bytes, "http": self._on_http_bytes}
        handlers[peer.endpoint.kind](peer, data, now)

    # ---- control peers ------------------------------------------------------------------
    def _on_control_bytes(self, peer: Peer, data: bytes, now: float) -> None:
        if not data:
            self._close_peer(peer)   # the cli went away; a pending reset still completes
            return
        try:
            frames = peer.parser.feed(data)
        except FrameError as exc:
            log.warning("control connection sent a broken frame (%s); closing it", exc)
            self._close_peer(peer)
            return
        for item in frames:
            if peer.closed:
                return
            try:
                call = control.decode_call(item)
            except ControlError as exc:
                log.warning("control connection sent an invalid call (%s); closing it", exc)
                self._close_peer(peer)
                return
            self._on_control_call(peer, call, now)

    # ---- HTTP peers (status, metrics) ------------------------------------------------------
    def _on_http_bytes(self, peer: Peer, data: bytes, now: float) -> None:
        conn: http11.Connection = peer.parser
        conn.receive_data(data)
        self._parse_http_requests(peer, conn, now)
        if not data and not peer.closed:
            # EOF stays readable forever: stop watching it, finish writing, then close.
            peer.reading = False
            self._update_peer_registration(peer)
            self._finish_peer(peer)

    def _parse_http_requests(self, peer: Peer, conn: http11.Connection, now: float) -> None:
        while not peer.closed and not peer.close_after_write:
            try:
                event = conn.next_event()
            except ProtocolError as exc:
                self._send_to_peer(peer, http11.error_response(exc.status, exc.msg, date=self._http_date()))
                self._finish_peer(peer)
                return
            if event is http11.NEED_DATA:
                return
            if event is http11.CONTINUE:
                self._send_to_peer(peer, CONTINUE_RESPONSE)
                continue
            if event is http11.CLOSED or event is http11.PAUSED:
                self._finish_peer(peer)
                return
            self._answer_http_request(peer, event, now)

    def _answer_http_request(self, peer: Peer, request, now: float) -> None:
        conn: http11.Connection = peer.parser
        status, headers, body = self._answer_http(peer.endpoint.name, request, now)
        keep_alive = conn.keep_alive
        self._send_to_peer(peer, http11.serialize_response(
            status, headers, body, keep_alive=keep_alive, head_only=request.method == "HEAD",
            date=self._http_date(), protocol=request.protocol))
        if keep_alive:
            conn.start_next_cycle()
        else:
            self._finish_peer(peer)

    # ---- writing and closing ----------------------------------------------------------------
    def _send_to_peer(self, peer: Peer, data: bytes) -> None:
        if peer.closed:
            return
        if peer.out:
            peer.out += data
            return
        try:
            sent = peer.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:              # BrokenPipeError, ConnectionResetError
            self._close_peer(peer)
            return
        if sent < len(data):
            peer.out += memoryview(data)[sent:]
            peer.writing = True
            self._update_peer_registration(peer)

    def _flush_peer(self, peer: Peer) -> None:
        try:
            sent = peer.sock.send(peer.out)
        except BlockingIOError:
            return
        except OSError:
            self._close_peer(peer)
            return
        del peer.out[:sent]
        if peer.out:
            return
        peer.writing = False
        self._update_peer_registration(peer)
        if peer.close_after_write:
            self._close_peer(peer)

    def _update_peer_registration(self, peer: Peer) -> None:
        events = (selectors.EVENT_READ if peer.reading else 0) | (selectors.EVENT_WRITE if peer.writing else 0)
        registered = peer.fd in self.selector.get_map()
        if events and registered:
            self.selector.modify(peer.sock, events, self.selector.get_key(peer.sock).data)
        elif events:
            self.selector.register(peer.sock, events, lambda mask: self._on_peer_event(peer, mask))
        elif registered:
            self.selector.unregister(peer.sock)

    def _finish_peer(self, peer: Peer) -> None:
        """Close once everything owed has been written."""
        peer.close_after_write = True
        if not peer.out:
            self._close_peer(peer)

    def _close_peer(self, peer: Peer) -> None:
        if peer.closed:
            return
        peer.closed = True
        if peer.fd in self.selector.get_map():
            self.selector.unregister(peer.sock)
        peer.sock.close()
        peer.endpoint.peers -= 1
        del self.peers[peer.fd]

    def _expire_peers(self, now: float) -> None:
        for peer in list(self.peers.values()):
            if peer.endpoint.kind == "http" and now - peer.active_at >= PEER_IDLE_TIMEOUT_S:
                self._close_peer(peer)

    def _endpoint_descriptors(self) -> list:
        """Listeners and peers: a forked worker closes them all (STYLE §5)."""
        return [e.sock for e in self.endpoints.values()] + [p.sock for p in self.peers.values()]

    def _close_endpoints(self) -> None:
        for peer in list(self.peers.values()):
            self._close_peer(peer)
        for endpoint in list(self.endpoints.values()):
            if endpoint.sock.fileno() in self.selector.get_map():
                self.selector.unregister(endpoint.sock)
            endpoint.sock.close()
        self.endpoints.clear()
