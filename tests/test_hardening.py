"""Hardening: what a client, an app or a peer could do to spoof, forge, stall or lock out,
end to end, against real servers and real workers (the lower layers' tests say how).

    a field named X_Auth_User        never reaches a WSGI app as HTTP_X_AUTH_USER
    a control character in a header  never reaches the client
    a `"` in the query               cannot forge an access log line
    1-byte chunks                    refused past CHUNK_FRAMING_MIN_BYTES of framing
    peers that never read            cannot lock out /health or the control socket
    calls pipelined behind a reset   bounded in bytes, not in calls
"""

from __future__ import annotations

import json
import re
import select
import socket
import time

from minirr.master import control
from minirr.master.operations import MAX_PEERS, PEER_SEND_TIMEOUT_S
from minirr.http.chunked import CHUNK_FRAMING_FACTOR, CHUNK_FRAMING_MIN_BYTES
from serverproc import run_cli
from test_containment import rss_mb, status_address
from wire import exchange, parse_responses, read_until_closed

APP = "[server]\napp = hardening_app:create_app\nfactory = true\ninterface = wsgi\n[pool]\nnum_workers = 1\n"
STATUS = "[status]\naddress = 127.0.0.1:0\n"


# ---- what reaches the app, the client and the log -----------------------------------------------

def test_a_field_name_with_an_underscore_never_reaches_a_wsgi_app(serve):
    srv = serve(APP)
    data, _ = exchange(srv, b"POST /environ HTTP/1.1\r\nHost: x\r\nX_Auth_User: admin\r\nX-Real: 1\r\n"
                            b"X_Forwarded_For: 6.6.6.6\r\nContent-Type: text/plain\r\nContent_Type: evil/type\r\n"
                            b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    [(status, _, body)] = parse_responses(data)
    assert status == 200
    seen = json.loads(body)
    assert seen["HTTP_X_REAL"] == "1" and seen["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_X_AUTH_USER" not in seen and "HTTP_X_FORWARDED_FOR" not in seen
    assert srv.stop() == 0


def test_a_control_character_in_an_apps_header_never_reaches_the_client(serve):
    srv = serve(APP)
    data, _ = exchange(srv, b"GET /control-header HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    [(status, _, _)] = parse_responses(data)
    assert status >= 500 and b"\x0b" not in data and b"X-Bad" not in data
    srv.wait_for_log(r"response header 'X-Bad' contains the control character '\\x0b'")
    assert srv.request("GET", "/")[2] == b"ok"                 # and the server serves on
    assert srv.stop() == 0


def test_a_quote_in_the_query_cannot_forge_an_access_log_line(serve):
    srv = serve(APP)
    forged = b'/x?a="+200+0+0.1ms+pid=1+\\"'
    data, _ = exchange(srv, b"GET " + forged + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert parse_responses(data)[0][0] == 200
    [line] = srv.wait_for_log(r"minirr\.access: .*/x\?a=")
    assert line.count('"') == 2, line
    assert line.endswith("\"GET /x?a=\\x22+200+0+0.1ms+pid=1+\\x5C\\x22 HTTP/1.1\" 200 2 " + line.rsplit(" 2 ", 1)[1])
    assert srv.stop() == 0


# ---- 1-byte chunks --------------------------------------------------------------------------------------

def test_a_body_of_one_byte_chunks_is_refused_once_its_framing_passes_the_allowance(serve):
    srv = serve(APP)
    chunks = b"1\r\nX\r\n" * (CHUNK_FRAMING_MIN_BYTES // 5 + 100) + b"0\r\n\r\n"
    data, _ = exchange(srv, b"POST /environ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    [(status, _, body)] = parse_responses(data)
    assert status == 400
    assert body == (f"chunk framing exceeds {CHUNK_FRAMING_FACTOR} times the body's data "
                    f"(past {CHUNK_FRAMING_MIN_BYTES} bytes): chunks too small\n").encode()
    # Small chunks within the allowance, and a large body in 100-byte chunks, are served.
    for body_chunks in (b"1\r\nX\r\n" * 1000, (b"64\r\n" + b"y" * 100 + b"\r\n") * 2000):
        data, _ = exchange(srv, b"POST /environ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                b"Connection: close\r\n\r\n" + body_chunks + b"0\r\n\r\n")
        assert parse_responses(data)[0][0] == 200
    assert srv.stop() == 0


# ---- peers that never read ---------------------------------------------------------------------------------

def stick(peers, request: bytes, timeout: float = 10.0) -> None:
    """Pipeline `request` on every peer, reading nothing, until none of them takes more:
    the master has stopped reading them all, their answers filling the kernel's buffers."""
    deadline = time.monotonic() + timeout
    for peer in peers:
        peer.setblocking(False)
    while time.monotonic() < deadline:
        took = False
        for peer in peers:
            try:
                took = peer.send(request) > 0 or took
            except BlockingIOError:
                pass
        if not took and not select.select([], peers, [], 0.2)[1]:
            return
    raise AssertionError(f"the peers could still send after {timeout}s")


def trickle(peers) -> None:
    """Each peer reads a little of its answers: the master's writes to it make progress
    again (so no send deadline closes one and frees a place), and it is soon stuck again."""
    for peer in peers:
        try:
            peer.recv(4096)
        except (BlockingIOError, ConnectionResetError):     # (a peer evicted before is reset: fine)
            pass


def test_peers_that_pipeline_and_never_read_cannot_lock_out_a_health_probe(serve):
    """32 stuck peers (the most allowed) used to keep a fresh probe out until body_timeout
    closed one (10 s); the one stuck longest now makes room for it."""
    srv = serve(APP + STATUS)
    peers = []
    try:
        for _ in range(MAX_PEERS):
            peer = socket.create_connection(status_address(srv), timeout=10)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            peers.append(peer)
        stick(peers, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 100)
        for _ in range(3):
            trickle(peers)
            started = time.monotonic()
            with socket.create_connection(status_address(srv), timeout=10) as probe:
                probe.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                data, _ = read_until_closed(probe)
            assert [r[0] for r in parse_responses(data)] == [200]
            assert time.monotonic() - started < PEER_SEND_TIMEOUT_S   # evicted, not timed out
        srv.wait_for_log(r"the most allowed; closing the one stuck longest \(127\.0\.0\.1, writing the response")
    finally:
        for peer in peers:
            peer.close()
    assert srv.stop() == 0


def test_control_peers_that_pipeline_and_never_read_cannot_lock_out_the_cli(serve):
    srv = serve(APP)
    address = str(srv.config_path.parent / "minirr.sock")
    peers = []
    try:
        for _ in range(MAX_PEERS):
            peer = socket.socket(socket.AF_UNIX)
            peer.connect(address)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            peers.append(peer)
        stick(peers, control.encode_call(1, "workers", {}) * 50)
        trickle(peers)
        started = time.monotonic()
        proc = run_cli("workers", "--json", "-c", str(srv.config_path))
        assert proc.returncode == 0, proc.stderr
        assert len(json.loads(proc.stdout)["workers"]) == 1
        assert time.monotonic() - started < 10                        # it took 6.6 s before
        srv.wait_for_log(r"the control listener: \d+ connections open, the most allowed; closing the one stuck")
    finally:
        for peer in peers:
            peer.close()
    assert srv.stop() == 0


# ---- control calls pipelined behind a pending reset ---------------------------------------------------

def test_calls_pipelined_behind_a_pending_reset_are_bounded_in_bytes(serve):
    """While a reset waited for its reload, one peer queued 2,000 calls of 60 KB and the
    master grew 117 MB: the pipeline limit counted calls. It counts bytes now."""
    srv = serve(APP)
    hold = srv.config_path.parent / "hold-bootstrap"
    address = str(srv.config_path.parent / "minirr.sock")
    srv.wait_for_log(r"worker 1 \(pid \d+\) ready")
    before_mb = rss_mb(srv.proc.pid)
    hold.write_text("")                                    # the reload's new worker waits
    peer = socket.socket(socket.AF_UNIX)
    try:
        peer.connect(address)
        peer.sendall(control.encode_call(1, "reset", {}))
        srv.wait_for_log("reset requested over the control socket")
        call = control.encode_call(2, "workers", {"pad": "x" * 60_000})
        peer.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 3                    # three seconds of pushing calls in
        while time.monotonic() < deadline and sent < 50 * 1024 * 1024:
            if select.select([], [peer], [], 0.05)[1]:
                try:
                    sent += peer.send(call)
                except BlockingIOError:
                    pass
        grown = rss_mb(srv.proc.pid) - before_mb
        assert sent < 5 * 1024 * 1024, f"the master took {sent} bytes of calls behind a pending reset"
        assert grown < 10, f"the master grew by {grown:.0f} MB"
    finally:
        peer.close()
        hold.unlink()
    assert srv.stop() == 0
