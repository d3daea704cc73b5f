"""Test doubles for the services the demo app talks to: Vault and Flipt.

Owns: what both doubles share: a ThreadingHTTPServer on 127.0.0.1 (port 0 by default)
in a background thread, a route table, JSON answers, per-route counters, and the
switches every double has (`latency_s`, `failure`).
Never: reaches beyond loopback, or sleeps on the test's thread (latency is served
from the double's own request thread and ends early when the double stops).

    double = FliptDouble().start()      # double.url -> "http://127.0.0.1:40123"
    ...
    double.count("evaluate")            # requests that reached that route
    double.failure = "drop"             # None | "error" (500) | "drop" | "garbage"
    double.stop()

The contracts they follow are in shared/reference/vault-flipt-api.md §4.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Pattern, Tuple
from urllib.parse import parse_qs, urlsplit


class Answer(Exception):
    """An HTTP answer. Handlers return one, or raise one from deep inside a check."""

    def __init__(self, status: int, body: Any = None, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body          # JSON-able, or None for an empty body (204)
        self.headers = headers or {}


@dataclass
class Call:
    """One request as a route handler sees it."""

    method: str
    path: str
    params: Dict[str, str]
    query: Dict[str, List[str]]
    headers: Dict[str, str]      # lower-case names
    body: bytes
    route: str = ""
    bad_json: Callable[[str], Answer] = field(default=lambda msg: Answer(400, {"error": msg}), repr=False)

    def json(self) -> Dict[str, Any]:
        """The body as a JSON object, or the service's own 400 answer."""
        try:
            obj = json.loads(self.body or b"null")
        except ValueError as err:
            raise self.bad_json(str(err)) from None
        if obj is None:
            return {}
        if not isinstance(obj, dict):
            raise self.bad_json("expected a JSON object")
        return obj


Route = Tuple[str, Pattern[str], str, Callable[[Call], Answer]]


class DoubleServer:
    """Base of both doubles. Subclasses fill `self.routes` and say how errors look."""

    name = "double"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.routes: List[Route] = []
        self.counts: Dict[str, int] = {}
        self.calls: List[Call] = []
        self.latency_s = 0.0
        self.failure: Optional[str] = None
        self._stopping = threading.Event()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._port = 0

    # ---- the route table ------------------------------------------------------------
    def add_route(self, methods: str, pattern: str, name: str, handler: Callable[[Call], Answer]) -> None:
        """`methods` like "POST|PUT"; `pattern` a regex for the whole path."""
        for method in methods.split("|"):
            self.routes.append((method, re.compile(pattern + r"\Z"), name, handler))

    def count(self, name: str) -> int:
        with self.lock:
            return self.counts.get(name, 0)

    # ---- what a subclass decides ----------------------------------------------------
    def error_answer(self, status: int, message: str) -> Answer:
        raise NotImplementedError

    def before(self, call: Call) -> None:
        """Hook run before every routed handler; may raise an Answer (e.g. Vault sealed)."""

    # ---- starting and stopping ------------------------------------------------------
    def start(self, port: int = 0, host: str = "127.0.0.1") -> "DoubleServer":
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{self.name}-double", daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The bound port; still known after stop(), so tests can point at a dead service."""
        assert self._port, "start() the double first"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Stop serving and free the port; a request thread in `latency_s` wakes up."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "DoubleServer":
        return self if self._httpd else self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def serve_forever_in_foreground(self, port: int) -> None:
        """For `python tests/doubles/xxx_double.py --port N`: serve until Ctrl-C."""
        self.start(port)
        print(f"{self.name} double listening on {self.url}", flush=True)
        try:
            self._stopping.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # ---- one request ----------------------------------------------------------------
    def dispatch(self, call: Call) -> Optional[Answer]:
        """The answer for `call`, or None to drop the connection without one."""
        handler = self._find_route(call)
        with self.lock:
            self.counts[call.route] = self.counts.get(call.route, 0) + 1
            self.calls.append(call)
        if self.latency_s:
            self._stopping.wait(self.latency_s)
        if self.failure == "drop":
            return None
        if self.failure == "error":
            return self.error_answer(500, "injected failure")
        if self.failure == "garbage":
            return Answer(200, b"<html>this is not JSON</html>")
        try:
            self.before(call)
            return handler(call)
        except Answer as answer:
            return answer

    def _find_route(self, call: Call) -> Callable[[Call], Answer]:
        path_matched = False
        for method, pattern, name, handler in self.routes:
            match = pattern.match(call.path)
            if not match:
                continue
            path_matched = True
            if method == call.method:
                call.params, call.route = match.groupdict(), name
                return handler
        call.route = "method_not_allowed" if path_matched else "not_found"
        status = 405 if path_matched else 404
        return lambda _call: self.error_answer(status, "")


def _handler_for(double: DoubleServer) -> type:
    """A BaseHTTPRequestHandler class bound to `double` (http.server wants a class)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = f"{double.name}-double"

        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            call = Call(self.command, split.path.rstrip("/") or "/", {}, parse_qs(split.query),
                        {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length) if length else b"")
            call.bad_json = lambda msg: double.error_answer(400, msg)
            answer = double.dispatch(call)
            if answer is None:
                self.close_connection = True  # say nothing: the client sees a dropped connection
                return
            self._send(answer)

        def _send(self, answer: Answer) -> None:
            if isinstance(answer.body, bytes):
                payload = answer.body
            else:
                payload = b"" if answer.body is None else json.dumps(answer.body).encode("utf-8")
            self.send_response(answer.status)
            if payload:
                self.send_header("Content-Type", "application/json")
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read the counters, not an access log."""

    return Handler
