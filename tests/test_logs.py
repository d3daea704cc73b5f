"""[logs]: level, format = text | json, access_log; the JSON formatter on its own first."""

from __future__ import annotations

import io
import json
import logging

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
