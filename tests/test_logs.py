"""[logs]: level, format = text | json, access_log, trace_frames; the JSON formatter, the
log writer and the access log's fast path on their own first."""

from __future__ import annotations

import io
import json
import logging
import re

from minirr import logs

CONFIG = """[server]
app = minirr_testapp:create_app
factory = true
[pool]
num_workers = 1
[logs]
"""


def test_json_formatter_fields_and_exceptions():
    stream = io.StringIO()
    logs.configure("debug", "json", stream)
    try:
        logging.getLogger("minirr.test").info("answered %d", 200, extra={"status": 200, "pid": 12})
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("minirr.test").exception("it failed")
    finally:
        logs.configure()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "answered 200" and first["level"] == "info" and first["logger"] == "minirr.test"
    assert (first["status"], first["pid"]) == (200, 12)
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["level"] == "error" and "ValueError: bad" in second["exc"]


def test_level_filters():
    stream = io.StringIO()
    logs.configure("warning", "text", stream)
    try:
        logging.getLogger("minirr").info("hidden")
        logging.getLogger("minirr").warning("shown")
    finally:
        logs.configure()
    assert "hidden" not in stream.getvalue() and "WARNING minirr: shown" in stream.getvalue()


def test_json_lines_from_a_live_server_parse(serve):
    srv = serve(CONFIG + "format = json\n")
    assert srv.request("GET", "/print")[0] == 200
    assert srv.request("GET", "/raise")[0] == 500
    srv.wait_for_log(r"hello from stderr")
    srv.wait_for_log(r"GET /raise")
    assert srv.stop() == 0
    entries = [json.loads(line) for line in srv.stderr_lines]          # every line is one object
    assert all({"time", "level", "logger", "msg"} <= set(entry) for entry in entries)
    access = [e for e in entries if e["logger"] == "minirr.access"]
    assert [(e["method"], e["target"], e["status"]) for e in access] == [("GET", "/print", 200), ("GET", "/raise", 500)]
    relayed = [e for e in entries if e["msg"].endswith("hello from stdout")]
    assert relayed and relayed[0]["pid"] == access[0]["pid"] and relayed[0]["worker"] == 1
    assert any(e["level"] == "warning" and "boom from the app" in e["msg"] for e in entries)


def test_level_warning_and_no_access_log(serve):
    srv = serve(CONFIG + "level = warning\naccess_log = false\n")
    assert srv.request("GET", "/raise")[0] == 500
    srv.wait_for_log(r"request GET /raise failed")
    assert srv.stop() == 0
    assert "minirr.access" not in srv.log
    assert " INFO " not in srv.log and "started" not in srv.log


def test_access_log_on_by_default(serve):
    srv = serve(CONFIG)
    assert srv.request("GET", "/pid")[0] == 200
    srv.wait_for_log(r'INFO minirr.access: 127.0.0.1 "GET /pid HTTP/1.1" 200 \d+ [\d.]+ms pid=\d+')


def test_the_access_log_counts_body_bytes_not_the_head(serve):
    """As nginx's $body_bytes_sent: "Hello, world!" is 13 bytes, whatever the head weighs;
    a HEAD answer sends no body, so 0."""
    srv = serve(CONFIG)
    assert srv.request("GET", "/")[2] == b"Hello, world!"
    assert srv.request("HEAD", "/")[0] == 200
    srv.wait_for_log(r'"GET / HTTP/1\.1" 200 13 [\d.]+ms')
    srv.wait_for_log(r'"HEAD / HTTP/1\.1" 200 0 [\d.]+ms')
    assert srv.stop() == 0


def test_a_relayed_line_does_not_repeat_its_level(serve):
    srv = serve(CONFIG)
    assert srv.request("GET", "/raise")[0] == 500
    line = srv.wait_for_log(r"worker \d+ \(pid \d+\): minirr\.worker: request failed")[0]
    assert " ERROR minirr: worker " in line and "): ERROR " not in line
    assert srv.stop() == 0


def test_the_access_log_line_format_is_unchanged_by_its_fast_path():
    """logs.AccessLog writes what the logging module's text format would."""
    import io
    writer = logs.LogWriter(io.StringIO())
    access = logs.AccessLog(writer, "text", clock=lambda: 1764251697.25)
    access.log("10.0.0.1", "GET", "/a?b", "HTTP/1.1", 200, 13, 0.0012, 4242)
    line = writer.stream.getvalue()
    assert line.endswith(',250 INFO minirr.access: 10.0.0.1 "GET /a?b HTTP/1.1" 200 13 1.2ms pid=4242\n')
    json_writer = logs.LogWriter(io.StringIO())
    logs.AccessLog(json_writer, "json", clock=lambda: 1764251697.25).log(
        "10.0.0.1", "GET", "/a", "HTTP/1.1", 404, 0, 0.5, "-")
    entry = json.loads(json_writer.stream.getvalue())
    assert (entry["logger"], entry["status"], entry["bytes"], entry["duration_ms"], entry["pid"]) == (
        "minirr.access", 404, 0, 500.0, "-")
    assert entry["time"] == "2025-11-27T13:54:57.250Z"


FORGED = '/q?a=1 HTTP/1.1" 200 5 0.1ms pid=1\n2025-01-01 00:00:00,000 INFO minirr.access: 6.6.6.6 "GET /admin'


def test_the_access_log_escapes_what_a_client_sent_as_nginx_does():
    """A `"` in the query must not end the request field: `"`, `\\`, control characters
    and bytes past 0x7e become \\xHH in the method, target, protocol and address."""
    import io
    writer = logs.LogWriter(io.StringIO())
    access = logs.AccessLog(writer, "text", clock=lambda: 1764251697.25)
    access.log('10.0.0.1"x', "GE\x1bT", FORGED + '\\caf\xe9\x7f', "HTTP/1.1\t", 200, 13, 0.0012, 4242)
    text = writer.stream.getvalue()
    assert text.count("\n") == 1 and text.count('"') == 2
    assert text.endswith(' INFO minirr.access: 10.0.0.1\\x22x "GE\\x1BT /q?a=1 HTTP/1.1\\x22 200 5 0.1ms pid=1'
                         '\\x0A2025-01-01 00:00:00,000 INFO minirr.access: 6.6.6.6 \\x22GET /admin\\x5Ccaf\\xE9\\x7F '
                         'HTTP/1.1\\x09" 200 13 1.2ms pid=4242\n')


def test_the_json_access_log_stays_json_and_keeps_each_field_as_sent():
    import io
    writer = logs.LogWriter(io.StringIO())
    logs.AccessLog(writer, "json", clock=lambda: 1764251697.25).log(
        "10.0.0.1", "GET", FORGED, "HTTP/1.1", 200, 0, 0.5, 7)
    lines = writer.stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["target"] == FORGED
    assert entry["msg"].count('"') == 2 and "\n" not in entry["msg"] and "\\x22" in entry["msg"]


def test_escape_log_field_leaves_a_plain_field_as_it_is():
    assert logs.escape_log_field("/a/b?c=d&e=%22f") == "/a/b?c=d&e=%22f"
    assert logs.escape_log_field("\u2603") == "\\xE2\\x98\\x83"


def test_the_log_writer_never_blocks_on_a_full_pipe_and_counts_what_it_drops():
    import os
    read_end, write_end = os.pipe()
    try:
        stream = os.fdopen(write_end, "w", closefd=False)
        writer = logs.LogWriter(stream, max_pending_bytes=64 * 1024)
        line = "x" * 99 + "\n"
        for _ in range(5000):                         # 500 KB: far past the pipe and the bound
            writer.write(line)                        # returns at once every time
        assert writer.dropped > 0 and writer.pending_bytes <= 64 * 1024
        received = b""
        os.set_blocking(read_end, False)
        for _ in range(1000):                         # the reader wakes up; the loop flushes
            try:
                received += os.read(read_end, 1 << 16)
            except BlockingIOError:
                pass
            writer.flush()
            if b"log lines were dropped" in received:
                break
        assert b"log lines were dropped: stderr was not being read" in received
        import re
        dropped = int(re.search(rb"minirr: (\d+) log lines were dropped", received).group(1))
        assert received.count(line.encode()) + dropped == 5000      # every line written or counted
    finally:
        os.close(read_end)
        os.close(write_end)


def test_trace_frames_shows_every_frame_and_every_worker_move(serve):
    srv = serve(CONFIG + "trace_frames = true\n")
    assert srv.request("GET", "/pid")[0] == 200
    srv.wait_for_log(r"worker 1 \(pid \d+\): WORKING --done--> READY")
    log = srv.log
    assert "STARTING --hello--> READY" in log and "READY --assign--> WORKING" in log
    assert re.search(r"frame master → worker 1 \(pid \d+\): v1 flags=CONTROL\|JSON stream=- length=\d+ crc=ok "
                     r"options=\[\] body=\d+ bytes b'\{\"pid\"", log)                      # the handshake
    assert re.search(r'frame master → worker 1 \(pid \d+\): v1 flags=JSON .* head=\{"remoteAddr"', log)
    assert re.search(r'frame worker 1 \(pid \d+\) → master: v1 flags=JSON stream=- length=\d+ crc=ok '
                     r'options=\[\d+\] head=\{"status":200', log)
    assert srv.stop() == 0
    assert "READY --retire--> STOPPING" in srv.log and "STOPPING --exit--> DEAD" in srv.log


def test_without_trace_frames_no_frame_is_logged(serve):
    srv = serve(CONFIG)
    assert srv.request("GET", "/pid")[0] == 200
    srv.wait_for_log(r'"GET /pid HTTP/1\.1" 200')
    assert srv.stop() == 0
    assert "frame master" not in srv.log and "--assign-->" not in srv.log


def test_the_log_writer_writes_a_rounds_lines_to_a_file_at_once(tmp_path):
    with open(tmp_path / "err.log", "w") as stream:
        writer = logs.LogWriter(stream)
        writer.batching = True                        # as in the loop: lines wait for the round's end
        for n in range(1000):
            writer.write(f"line {n}\n")
        assert writer.pending_bytes > 0 and (tmp_path / "err.log").read_text() == ""
        writer.flush()
        assert writer.pending_bytes == 0
    assert (tmp_path / "err.log").read_text() == "".join(f"line {n}\n" for n in range(1000))
