"""WebSockets behind a real `python -m minirr serve`: the handshake and its refusals, the
ASGI WebSocket scope, what each way an app may end gives the client, RFC 6455 enforced by
the master, pings, windows both ways, and a WebSocket's life with its worker: a crash
(1011), a graceful stop (1001), destroy_timeout, a reload, max_jobs; and where it shows:
`minirr workers`, /metrics, the access log. tests/apps/websocket_testapp.py is the app;
tests/wsclient.py the client (raw frames); tests/test_websocket_conformance.py goes
through RFC 6455 case by case.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import time

import pytest

from minirr.http import websocket as ws
from serverproc import ServerProcess, run_cli, wait_until
from wire import stop_module_server
from wsclient import WSClient

APP = "[server]\napp = websocket_testapp:app\n[pool]\nnum_workers = 1\n[rpc]\nlisten = unix:minirr.sock\n"
COMMAND = (f"[server]\ncommand = {sys.executable} -m minirr.worker websocket_testapp:app --interface asgi\n"
           f"[pool]\nnum_workers = 1\n")


@pytest.fixture(scope="module", params=["fork", "command"])
def srv(request, tmp_path_factory):
    text = APP if request.param == "fork" else COMMAND
    server = ServerProcess.start(tmp_path_factory.mktemp(f"ws-{request.param}"), text,
                                 overrides=["websocket.max_message_size=256KB"])
    yield server
    stop_module_server(server)


def pid_of(srv) -> int:
    with WSClient.connect(srv, "/scope") as c:
        return json.loads(c.message()[1])["state"]["pid"]


# ---- the handshake ------------------------------------------------------------------------------------

def test_messages_are_echoed_and_the_close_handshake_completes(srv):
    with WSClient.connect(srv, "/echo") as c:
        assert c.status == 101 and c.headers["upgrade"] == "websocket"
        c.send(ws.TEXT, "héllo".encode())
        c.send(ws.BINARY, b"\x00\xff")
        assert c.message() == ("text", "héllo".encode())
        assert c.message() == ("binary", b"\x00\xff")
        c.close(1000, "bye")
        assert c.closed() == (1000, "")
    srv.wait_for_log(r'"GET /echo HTTP/1\.1" 101 8 [\d.]+ms pid=\d+ websocket in=2 out=2 close=1000 by=client')


def test_the_scope_and_the_subprotocol_the_app_chose(srv):
    with WSClient.connect(srv, "/scope?room=7", protocols=("chat", "other"), extra={"X-Seen": "1"}) as c:
        assert c.status == 101 and c.headers["sec-websocket-protocol"] == "chat"
        scope = json.loads(c.message()[1])
    assert scope["type"] == "websocket" and scope["scheme"] == "ws" and scope["spec_version"] == "2.4"
    assert scope["path"] == "/scope" and scope["query_string"] == "room=7"
    assert scope["subprotocols"] == ["chat", "other"] and ["x-seen", "1"] in scope["headers"]
    assert scope["client"] == ["127.0.0.1", 0] and scope["state"]["pid"] in srv.workers()


def test_the_apps_own_headers_are_in_the_101(srv):
    with WSClient.connect(srv, "/headers") as c:
        assert c.status == 101 and c.headers["x-app"] == "yes"


@pytest.mark.parametrize("path,status", [("/deny", 403), ("/raise-before", 500), ("/return-before", 500)])
def test_an_app_that_does_not_accept_gets_its_client_an_http_answer_and_the_worker_stays(srv, path, status):
    before = pid_of(srv)
    with WSClient.connect(srv, path) as c:
        assert c.status == status
    assert pid_of(srv) == before


@pytest.mark.parametrize("extra,status,why", [
    ({"Sec-WebSocket-Version": "8"}, 426, b"this server speaks version 13"),
    ({"Sec-WebSocket-Key": None}, 400, b"one Sec-WebSocket-Key"),
    ({"Sec-WebSocket-Key": "c2hvcnQ="}, 400, b"one Sec-WebSocket-Key"),
    ({"Content-Length": "3"}, 400, b"has no body"),
    ({"Connection": "keep-alive"}, 400, b"Connection: Upgrade"),
])
def test_a_bad_handshake_is_refused_by_the_master(srv, extra, status, why):
    pid_of(srv)                                                 # a worker has said it takes WebSockets
    body = b"abc" if "Content-Length" in extra else b""
    with WSClient.connect(srv, "/echo", extra=extra, after=body) as c:
        assert c.status == status and why in c.body()
        if status == 426:
            assert c.headers["sec-websocket-version"] == "13"


def test_frames_sent_with_the_handshake_are_read_after_the_101(srv):
    early = ws.encode_frame(ws.TEXT, b"early", mask=b"abcd")
    with WSClient.connect(srv, "/echo", after=early) as c:
        assert c.status == 101 and c.message() == ("text", b"early")


# ---- how an accepted WebSocket ends ------------------------------------------------------------------

@pytest.mark.parametrize("path,said,code,reason", [
    ("/raise-after", b"hello", ws.INTERNAL_ERROR, ""),
    ("/returns", b"done", ws.NORMAL, ""),
    ("/close/4000", b"bye", 4000, "done here"),
])
def test_the_apps_end_closes_the_websocket(srv, path, said, code, reason):
    with WSClient.connect(srv, path) as c:
        assert c.message() == ("text", said)
        kind, (got_code, got_reason) = c.message()
        assert kind == "close" and (got_code, got_reason) == (code, reason)
        c.close(got_code)                                      # the client's answer: then the TCP close
        assert c.event() == ("eof", None)
    srv.wait_for_log(rf'"GET {path} HTTP/1\.1" 101 \d+ [\d.]+ms pid=\d+ websocket in=0 out=1 close={code} by=server')


def test_a_client_gone_without_a_close_is_a_disconnect_1006(srv):
    c = WSClient.connect(srv, "/echo-log/dropped")
    c.send(ws.TEXT, b"x")
    assert c.message() == ("text", b"x")
    c.sock.close()
    srv.wait_for_log("dropped disconnect 1006")
    srv.wait_for_log(r"websocket in=1 out=1 close=1006 by=nobody")


@pytest.mark.parametrize("frames,code", [
    (ws.encode_frame(ws.TEXT, b"not masked"), ws.PROTOCOL_ERROR),
    (ws.encode_frame(ws.TEXT, b"\xff", mask=b"abcd"), ws.INVALID_DATA),
    (ws.encode_frame(ws.BINARY, b"x" * (256 * 1024 + 1), mask=b"abcd"), ws.MESSAGE_TOO_BIG),
])
def test_the_master_fails_a_client_that_breaks_rfc_6455_and_tells_the_app(srv, frames, code):
    name = f"broken{code}"
    with WSClient.connect(srv, f"/echo-log/{name}") as c:
        c.raw(frames)
        assert c.closed()[0] == code
    srv.wait_for_log(f"{name} disconnect {code}")


def test_an_upgrade_request_to_a_wsgi_or_native_app_is_an_ordinary_request(serve):
    server = serve("[server]\napp = minirr_testapp:create_app\nfactory = true\n[pool]\nnum_workers = 1\n")
    for _ in range(2):                                          # before its worker is ready, and after
        with WSClient.connect(server, "/echo", extra={"Sec-WebSocket-Version": "8"}) as c:
            assert c.status == 200 and c.body() == b""           # not 426: the app answered it
        server.wait_for_log("ready in")


# ---- pings, and windows both ways --------------------------------------------------------------------

def test_an_idle_client_is_pinged_and_one_that_does_not_answer_is_closed_1011(serve):
    server = serve(APP, overrides=["websocket.ping_interval=300ms", "websocket.ping_timeout=600ms"])
    with WSClient.connect(server, "/echo-log/answers") as alive, WSClient.connect(server, "/echo-log/silent") as silent:
        for _ in range(3):                                       # it answers each ping and stays
            kind, data = alive.event()
            assert kind == "ping"
            alive.send(ws.PONG, data)
        assert silent.event() == ("ping", b"minirr")
        assert silent.closed()[0] == ws.INTERNAL_ERROR           # no pong within ping_timeout
        server.wait_for_log("silent disconnect 1011")
        alive.send(ws.TEXT, b"still here")
        assert alive.message() == ("text", b"still here")


def test_a_fast_client_of_a_slow_app_stops_being_read(serve):
    server = serve(APP, overrides=["websocket.ping_timeout=1s", "pool.destroy_timeout=2s"])
    with WSClient.connect(server, "/no-receive") as c:
        c.sock.settimeout(2.0)
        sent = 0
        with pytest.raises(socket.timeout):
            while sent < 256 << 20:                              # without a window the master reads it all
                c.sock.sendall(ws.encode_frame(ws.BINARY, b"x" * 65536, mask=b"abcd"))
                sent += 65536
        assert sent < 64 << 20
        assert server.request("GET", "/")[0] == 200              # the master serves the rest meanwhile


def test_a_slow_client_holds_up_the_apps_sends_and_gets_every_message_in_order(serve):
    server = serve(APP)
    n, size = 600, 60000                                         # 36 MB: more than every buffer on the way
    with WSClient.connect(server, f"/flood?n={n}&size={size}") as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        assert "flood sent" not in server.log
        got = 0
        for index in range(n):
            kind, data = c.message()
            assert kind == "binary" and data == bytes([index % 256]) * size
            got += 1
            if index == 0:
                # the app is held up now: it cannot have sent them all while we read one
                assert "flood sent" not in server.log
        server.wait_for_log(f"flood sent {n}")
        c.close()
        assert c.closed()[0] == 1000
    assert got == n


def test_large_messages_sent_from_many_tasks_at_once_arrive_whole(serve):
    server = serve(APP)
    n, size = 8, 300_000                # 64 KiB pieces, more than a window: the tasks wait for credit mid-message
    with WSClient.connect(server, f"/concurrent?n={n}&size={size}") as c:
        got = sorted(c.message()[1] for _ in range(n))
    assert got == [bytes([index]) * size for index in range(n)]  # never the pieces of two in one


# ---- a WebSocket's life with its worker ----------------------------------------------------------------

def test_a_worker_crash_closes_its_websockets_1011_and_it_is_replaced(serve):
    server = serve(APP)
    first = server.wait_workers(1)
    with WSClient.connect(server, "/echo-log/bystander") as bystander, WSClient.connect(server, "/crash") as c:
        c.send(ws.TEXT, b"now")
        assert c.closed()[0] == ws.INTERNAL_ERROR
        assert bystander.message()[0] == "close"                 # the same worker held it
    server.wait_workers(1, exclude=first)
    with WSClient.connect(server, "/echo") as again:
        again.send(ws.TEXT, b"new worker")
        assert again.message() == ("text", b"new worker")


def test_a_graceful_stop_closes_each_websocket_1001_and_waits_for_it(serve):
    server = serve(APP)
    c = WSClient.connect(server, "/echo-log/stopping")
    c.send(ws.TEXT, b"x")
    assert c.message() == ("text", b"x")
    server.send_signal(signal.SIGTERM)
    kind, (code, reason) = c.message()
    assert kind == "close" and code == ws.GOING_AWAY and reason == "the server is going away"
    assert server.proc.poll() is None                            # it waits for the close handshake
    c.close(ws.GOING_AWAY)
    assert c.event() == ("eof", None)
    assert server.wait_exit() == 0
    assert "stopping disconnect 1001" in server.log


def test_a_websocket_accepted_after_a_stop_began_is_closed_1001(serve, tmp_path):
    server = serve(APP)
    release = tmp_path / "accept-now"
    sock = socket.create_connection((server.host, server.port), timeout=10)
    from wsclient import handshake_request
    sock.sendall(handshake_request(f"/accept-when?file={release}", f"{server.host}:{server.port}"))
    server.wait_for_log("accept-when waiting")
    server.send_signal(signal.SIGTERM)
    server.wait_for_log("stopping: finishing 1 in-flight")
    release.write_text("")                                       # the app accepts only now
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 101 ")
    c = WSClient(sock, 101, {}, data.partition(b"\r\n\r\n")[2], 10.0)
    assert c.message() == ("close", (ws.GOING_AWAY, "the server is going away"))
    c.close(ws.GOING_AWAY)
    assert c.event() == ("eof", None)
    assert server.wait_exit() == 0
    sock.close()


def test_an_app_that_goes_on_after_its_disconnect_is_killed_past_destroy_timeout(serve):
    server = serve(APP, overrides=["pool.destroy_timeout=1s"])
    first = server.wait_workers(1)
    with WSClient.connect(server, "/linger/lingering") as c:
        c.close()
        assert c.closed() == (1000, "")
    server.wait_for_log("lingering still running")
    server.wait_for_log("went on with a request whose answer is over")
    server.wait_workers(1, exclude=first)


def test_a_reload_leaves_open_websockets_on_their_old_worker_and_new_ones_go_to_new_workers(serve):
    server = serve(APP)
    old = pid_of(server)
    with WSClient.connect(server, "/echo") as kept:
        server.send_signal(signal.SIGHUP)
        server.wait_for_log("reload complete")
        assert pid_of(server) != old                             # new WebSockets: the new worker
        assert old in server.workers()                           # the old one stays for the open one
        kept.send(ws.TEXT, b"on the old worker")
        assert kept.message() == ("text", b"on the old worker")
        kept.close()
        assert kept.closed() == (1000, "")
    wait_until(lambda: old not in server.workers(), message="the old worker to stop once its WebSocket closed")


def test_a_reload_closes_old_websockets_1001_after_destroy_timeout(serve):
    server = serve(APP, overrides=["pool.destroy_timeout=1s"])
    old = pid_of(server)
    with WSClient.connect(server, "/echo") as kept:
        server.send_signal(signal.SIGHUP)
        assert kept.message(timeout=10) == ("close", (ws.GOING_AWAY, "the server is going away"))
        kept.close(ws.GOING_AWAY)
        assert kept.event() == ("eof", None)
    wait_until(lambda: old not in server.workers(), message="the old worker to stop")


def test_max_jobs_counts_a_websocket_as_one_request(serve):
    server = serve(APP, overrides=["pool.max_jobs=2"])
    first = pid_of(server)                                       # request 1
    with WSClient.connect(server, "/echo") as c:                 # request 2: the worker is retired after it
        assert server.workers() == [first]
        c.close()
        assert c.closed() == (1000, "")
    server.wait_workers(1, exclude=[first])


# ---- where WebSockets show --------------------------------------------------------------------------------

def test_open_websockets_show_in_minirr_workers_and_in_metrics(serve):
    server = serve(APP + "[metrics]\naddress = 127.0.0.1:0\n")
    [port] = [int(line.rsplit(":", 1)[1]) for line in server.stdout_lines if line.startswith("minirr metrics on")]
    with WSClient.connect(server, "/echo") as a, WSClient.connect(server, "/echo") as b:
        a.send(ws.TEXT, b"1")
        assert a.message() == ("text", b"1")
        b.send(ws.TEXT, b"2")
        assert b.message() == ("text", b"2")
        rows = json.loads(run_cli("workers", "--json", "-c", str(server.config_path)).stdout)
        assert [row["in_flight"] for row in rows["workers"]] == [2]
        text = fetch_metrics(port)
        assert "minirr_websockets_open 2" in text
        assert 'minirr_websocket_messages_total{direction="in"} 2' in text
        assert 'minirr_websocket_messages_total{direction="out"} 2' in text
    wait_until(lambda: "minirr_websockets_open 0" in fetch_metrics(port), message="the gauge to go back to 0")


def fetch_metrics(port: int) -> str:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()
