"""A Flipt v1 double: boolean evaluation, flag management, API tokens, two auth modes.

Owns: an in-memory Flipt answering like v1.39.2 on the paths the demo app and
`demo_app.py setup` / `flag` use (reference §3, §4.2, §5.1), with counters and switches.
Never: evaluates rollouts or segments (the demo's flag has none: its value is `enabled`).

    flipt = FliptDouble().start()
    flipt.set_flag("show_reverse_greeting", True)
    flipt.evaluations             # evaluation requests received
    flipt.auth_required = True    # 401 unless "Authorization: Bearer <known token>"
    flipt.latency_s = 3           # every answer this late
    flipt.failure = "drop"        # None | "error" (500) | "drop" | "garbage"

Auth modes (§3.6): with `auth_required` False, as in the tutorial, any or no token is
fine; with True, management, evaluation and token calls need a token Flipt issued
(or the bootstrap token).

Standalone, for the docs and the benchmark:

    python tests/doubles/flipt_double.py --port 8100 [--auth-required --bootstrap-token T]
"""

from __future__ import annotations

import base64
import os
import re
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):  # run as a script: make the `doubles` package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from doubles import Answer, Call, DoubleServer  # noqa: E402

# gRPC status codes and the HTTP status grpc-gateway gives each (reference §3.1).
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 500: 13}
NOT_AUTHENTICATED = "request was not authenticated"
FLAG_KEY_RE = re.compile(r"^[-_,A-Za-z0-9]+$")
PROTECTED_PREFIXES = ("/api/v1/", "/evaluate/v1/", "/auth/v1/method/token", "/auth/v1/tokens")
FLAG_TYPES = {"BOOLEAN_FLAG_TYPE": "BOOLEAN_FLAG_TYPE", 1: "BOOLEAN_FLAG_TYPE",
              "VARIANT_FLAG_TYPE": "VARIANT_FLAG_TYPE", 0: "VARIANT_FLAG_TYPE", None: "VARIANT_FLAG_TYPE"}


def grpc_error(status: int, message: str) -> Answer:
    headers = {"WWW-Authenticate": message} if status == 401 else {}
    return Answer(status, {"code": GRPC_CODES.get(status, 2), "message": message, "details": []}, headers)


def _field(body: Dict[str, Any], camel: str, snake: str, default: Any = None) -> Any:
    """Flipt accepts lowerCamelCase and the proto's snake_case names (reference §3.1)."""
    value = body.get(camel)
    if value is None:
        value = body.get(snake)
    return default if value is None else value


class FliptDouble(DoubleServer):
    name = "flipt"

    def __init__(self, auth_required: bool = False, bootstrap_token: str = "", token_method: bool = True) -> None:
        super().__init__()
        self.auth_required = auth_required
        self.token_method = token_method
        self.flags: Dict[str, Dict[str, Any]] = {}       # key -> Flag JSON (namespace "default")
        self.tokens: Dict[str, Dict[str, Any]] = {}      # clientToken -> authentication JSON
        if bootstrap_token:
            self.tokens[bootstrap_token] = {"id": str(uuid.uuid4()), "method": "METHOD_TOKEN"}
        self.add_route("GET", r"/health", "health", self._health)
        self.add_route("POST", r"/evaluate/v1/boolean", "evaluate", self._evaluate)
        self.add_route("GET", r"/api/v1/namespaces/(?P<ns>[^/]+)/flags", "list_flags", self._list_flags)
        self.add_route("POST", r"/api/v1/namespaces/(?P<ns>[^/]+)/flags", "create_flag", self._create_flag)
        self.add_route("GET", r"/api/v1/namespaces/(?P<ns>[^/]+)/flags/(?P<key>[^/]+)", "get_flag", self._get_flag)
        self.add_route("PUT", r"/api/v1/namespaces/(?P<ns>[^/]+)/flags/(?P<key>[^/]+)", "update_flag",
                       self._update_flag)
        self.add_route("DELETE", r"/api/v1/namespaces/(?P<ns>[^/]+)/flags/(?P<key>[^/]+)", "delete_flag",
                       self._delete_flag)
        self.add_route("POST", r"/auth/v1/method/token", "create_token", self._create_token)

    # ---- counters and seeding -------------------------------------------------------
    @property
    def evaluations(self) -> int:
        return self.count("evaluate")

    def set_flag(self, key: str, enabled: bool, flag_type: str = "BOOLEAN_FLAG_TYPE") -> None:
        with self.lock:
            flag = self.flags.get(key) or _new_flag(key, key, flag_type)
            flag["enabled"], flag["updatedAt"] = bool(enabled), _now_rfc3339()
            self.flags[key] = flag

    def flag_enabled(self, key: str) -> Optional[bool]:
        with self.lock:
            flag = self.flags.get(key)
        return None if flag is None else flag["enabled"]

    # ---- errors and auth ------------------------------------------------------------
    def error_answer(self, status: int, message: str) -> Answer:
        return grpc_error(status, message or {404: "Not Found", 405: "Method Not Allowed"}.get(status, "internal"))

    def before(self, call: Call) -> None:
        if not self.auth_required or not call.path.startswith(PROTECTED_PREFIXES):
            return
        header = call.headers.get("authorization", "")
        token = header[len("Bearer "):] if header.startswith("Bearer ") else ""
        with self.lock:
            known = token in self.tokens
        if not known:
            raise grpc_error(401, NOT_AUTHENTICATED)

    def _flag_or_404(self, namespace: str, key: str) -> Dict[str, Any]:
        with self.lock:
            flag = self.flags.get(key) if namespace == "default" else None
        if flag is None:
            raise grpc_error(404, f'flag "{namespace}/{key}" not found')
        return flag

    # ---- routes ---------------------------------------------------------------------
    def _health(self, call: Call) -> Answer:
        return Answer(200, {"status": "SERVING"})

    def _evaluate(self, call: Call) -> Answer:
        started = time.perf_counter()
        body = call.json()
        namespace = _field(body, "namespaceKey", "namespace_key", "") or "default"
        key = _field(body, "flagKey", "flag_key", "")
        context = body.get("context") or {}
        if not isinstance(context, dict) or not all(isinstance(v, str) for v in context.values()):
            raise grpc_error(400, "invalid value for map field context: expected string values")
        flag = self._flag_or_404(namespace, key)
        if flag["type"] != "BOOLEAN_FLAG_TYPE":
            raise grpc_error(400, f"flag type {flag['type']} invalid")
        return Answer(200, {"enabled": flag["enabled"], "reason": "DEFAULT_EVALUATION_REASON",
                            "requestId": _field(body, "requestId", "request_id", "") or str(uuid.uuid4()),
                            "requestDurationMillis": (time.perf_counter() - started) * 1000,
                            "timestamp": _now_rfc3339(), "flagKey": key, "segmentKeys": []})

    def _list_flags(self, call: Call) -> Answer:
        with self.lock:
            flags = [dict(f) for f in self.flags.values()] if call.params["ns"] == "default" else []
        return Answer(200, {"flags": flags, "nextPageToken": "", "totalCount": len(flags)})

    def _create_flag(self, call: Call) -> Answer:
        body = call.json()
        key, name = body.get("key") or "", body.get("name") or ""
        if not key:
            raise grpc_error(400, "invalid field key: must not be empty")
        if not FLAG_KEY_RE.match(key):
            raise grpc_error(400, "invalid field key: contains invalid characters")
        if not name:
            raise grpc_error(400, "invalid field name: must not be empty")
        flag_type = FLAG_TYPES.get(body.get("type"))
        if flag_type is None:
            raise grpc_error(400, f"invalid value for enum field type: {body.get('type')!r}")
        flag = _new_flag(key, name, flag_type, bool(body.get("enabled")), body.get("description") or "")
        with self.lock:
            if key in self.flags:
                raise grpc_error(400, f'flag "default/{key}" is not unique')
            self.flags[key] = flag
        return Answer(200, dict(flag))

    def _get_flag(self, call: Call) -> Answer:
        return Answer(200, dict(self._flag_or_404(call.params["ns"], call.params["key"])))

    def _update_flag(self, call: Call) -> Answer:
        body = call.json()
        if not body.get("name"):
            raise grpc_error(400, "invalid field name: must not be empty")
        flag = self._flag_or_404(call.params["ns"], call.params["key"])
        with self.lock:  # a full update: what is not sent becomes empty
            flag.update(name=body["name"], description=body.get("description") or "",
                        enabled=bool(body.get("enabled")), updatedAt=_now_rfc3339())
            return Answer(200, dict(flag))

    def _delete_flag(self, call: Call) -> Answer:
        with self.lock:
            self.flags.pop(call.params["key"], None)
        return Answer(200, {})

    def _create_token(self, call: Call) -> Answer:
        if not self.token_method:
            raise grpc_error(404, "Not Found")  # the route exists only with the token method on
        body = call.json()
        if not body.get("name"):
            raise grpc_error(400, "invalid field name: must not be empty")
        client_token = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")  # 44 chars, like Flipt
        now = _now_rfc3339()
        authentication = {"id": str(uuid.uuid4()), "method": "METHOD_TOKEN", "expiresAt": body.get("expiresAt"),
                          "createdAt": now, "updatedAt": now,
                          "metadata": {"io.flipt.auth.token.name": body["name"],
                                       "io.flipt.auth.token.description": body.get("description") or ""}}
        with self.lock:
            self.tokens[client_token] = authentication
        return Answer(200, {"clientToken": client_token, "authentication": authentication})


def _new_flag(key: str, name: str, flag_type: str, enabled: bool = False, description: str = "") -> Dict[str, Any]:
    now = _now_rfc3339()
    return {"key": key, "name": name, "description": description, "enabled": enabled, "createdAt": now,
            "updatedAt": now, "variants": [], "namespaceKey": "default", "type": flag_type}


def _now_rfc3339() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def main(argv: Optional[List[str]] = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Serve a Flipt double on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--auth-required", action="store_true", help="like FLIPT_AUTHENTICATION_REQUIRED=true")
    parser.add_argument("--bootstrap-token", default="", help="a token accepted from the start")
    parser.add_argument("--flag", choices=("on", "off"), help="create show_reverse_greeting in this state")
    args = parser.parse_args(argv)
    flipt = FliptDouble(auth_required=args.auth_required, bootstrap_token=args.bootstrap_token)
    if args.flag:
        flipt.set_flag("show_reverse_greeting", args.flag == "on")
    flipt.serve_forever_in_foreground(args.port)


if __name__ == "__main__":
    main()
