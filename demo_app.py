"""The minirr demo: Vault once per worker at bootstrap, a Flipt feature flag per request.

Owns: the demo application (`create_app`, `Application`), its small Vault and Flipt
clients, and the `setup` / `flag` commands that replace the tutorial's UI clicks.
Never: imports anything but the standard library and minirr; sleeps or touches the network at
import time; puts a password or a token into a log line or an error message.

Theory of operation (rr.ini: `app = demo_app:create_app`, `factory = true`):

    worker process starts
      create_app()                      once per worker: the expensive part
        POST {VAULT_HOST}/v1/auth/userpass/login/{VAULT_USER}    ~100 ms (bcrypt)
        GET  {VAULT_HOST}/v1/secret/data/demoapp                 -> Flipt host + token
      -> Application(FliptClient)
    every request
      Application.handle(request)
        POST {flipt_api_host}/evaluate/v1/boolean                ~1 ms
        -> "Hello, world!"  or  "!dlrow ,olleH" when the flag is on

The same app in ASGI (rr.ini: `app = demo_app:asgi_app`, no factory; `interface = auto`
tells it is ASGI): the Vault login is the lifespan startup, once per worker, and each
request asks Flipt in a thread (urllib blocks; asyncio.to_thread keeps the event loop,
and every other request the worker holds, going meanwhile):

    lifespan.startup     create_app() in a thread, into scope["state"]   once per worker
    every request        await asyncio.to_thread(flag_enabled) -> the greeting

A bootstrap failure with a known cause raises SystemExit with one line that names Vault,
its address and the cause; minirr logs that line, retries the worker with backoff, and
answers 503 meanwhile. A Flipt failure during a request is not fatal: the flag counts
as off and a warning is logged at most once every few seconds.

Without VAULT_HOST the demo needs no services at all: the flag then comes from the
environment variable DEMO_SHOW_REVERSE_GREETING (1/true/on).

Command line (the tutorial's setup steps, automated and idempotent):

    python demo_app.py setup --vault-addr URL --vault-token ROOT --flipt-addr URL
    python demo_app.py flag on --flipt-addr URL
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable, Dict, List, Mapping, Optional

from minirr import Request, Response

log = logging.getLogger("demo_app")

FLAG_KEY = "show_reverse_greeting"
GREETING = "Hello, world!"
DEFAULT_AUTH_PATH = "userpass"
DEFAULT_SECRET_PATH = "secret/data/demoapp"
APP_USER = "demoapp"
VAULT_TIMEOUT_S = 5.0
FLIPT_TIMEOUT_S = 2.0      # per request: a slow Flipt must not make the page slow
WARN_EVERY_S = 5.0         # at most one "Flipt failed" warning per worker this often
MAX_MESSAGE_CHARS = 200    # error text taken from a server answer is cut to this


# ---------------------------------------------------------------------------------
# HTTP with JSON in and out, and errors turned into one readable line
# ---------------------------------------------------------------------------------

class CallFailed(Exception):
    """An HTTP call got no usable answer. `status` is None when no answer came at all.

    The message is built from the status and the server's error text only, never from
    what we sent, so it cannot contain a password or a token.
    """

    def __init__(self, cause: str, status: Optional[int] = None) -> None:
        super().__init__(cause if status is None else f"{cause} (HTTP {status})")
        self.cause = cause
        self.status = status


class ServiceError(Exception):
    """A call to Vault or Flipt failed: `"Vault at http://...: what we did: why"`."""

    def __init__(self, service: str, address: str, problem: str, status: Optional[int] = None) -> None:
        super().__init__(f"{service} at {address}: {problem}")
        self.status = status


def call_json(method: str, url: str, payload: Any = None, headers: Optional[Dict[str, str]] = None,
              timeout_s: float = VAULT_TIMEOUT_S) -> Any:
    """One HTTP exchange: `payload` sent as JSON, the answer's JSON returned (None if empty).

    Raises CallFailed for a refused connection, a timeout, a non-2xx status or an
    answer that is not JSON.
    """
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    all_headers = {"Accept": "application/json"}
    if data is not None:
        # Without this urllib labels the body as a form (application/x-www-form-urlencoded).
        all_headers["Content-Type"] = "application/json"
    all_headers.update(headers or {})
    if not url.startswith(("http://", "https://")):
        raise CallFailed("invalid address (expected http://host:port)")
    request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            body = answer.read()
            status = answer.status
    except urllib.error.HTTPError as err:  # a non-2xx answer: its body says why
        raise CallFailed(error_text(err.code, _read_quietly(err)), err.code) from None
    except urllib.error.URLError as err:   # no answer: refused, unresolvable, timed out
        raise CallFailed(_describe_no_answer(err.reason, timeout_s)) from None
    except (OSError, http.client.HTTPException) as err:  # timeout or reset while reading
        raise CallFailed(_describe_no_answer(err, timeout_s)) from None
    if not body.strip():
        return None  # 204 and friends: there is no JSON to decode
    try:
        return json.loads(body)
    except ValueError:
        raise CallFailed("answered with something that is not JSON", status) from None


def error_text(status: int, body: bytes) -> str:
    """A readable cause from an error answer: Vault's `errors` list, Flipt's `message`."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        errors = parsed.get("errors")  # Vault: {"errors": ["..."]}, possibly empty
        if isinstance(errors, list):
            texts = [_one_line(e) for e in errors if isinstance(e, str) and _one_line(e)]
            if texts:
                return "; ".join(texts)[:MAX_MESSAGE_CHARS]
        message = parsed.get("message")  # Flipt: {"code": 5, "message": "...", "details": []}
        if isinstance(message, str) and message.strip():
            return _one_line(message)[:MAX_MESSAGE_CHARS]
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


def _one_line(text: str) -> str:
    """Vault wraps ACL errors as "1 error occurred:\\n\\t* permission denied\\n\\n"."""
    parts = []
    for line in text.splitlines():
        line = line.strip().lstrip("*").strip()
        if line and not (line.endswith("occurred:") and line.split()[0].isdigit()):
            parts.append(line)
    return "; ".join(parts)


def _read_quietly(err: urllib.error.HTTPError) -> bytes:
    try:
        return err.read()
    except (OSError, http.client.HTTPException):
        return b""


def _describe_no_answer(reason: Any, timeout_s: float) -> str:
    # socket.timeout is TimeoutError from Python 3.10 on; on 3.9 it is its own class.
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout_s:g} s"
    if isinstance(reason, ConnectionRefusedError):
        return "unreachable (connection refused)"
    if isinstance(reason, ConnectionResetError):  # includes http.client.RemoteDisconnected
        return "connection closed without an answer"
    if isinstance(reason, socket.gaierror):
        return "unreachable (cannot resolve the host name)"
    if isinstance(reason, OSError) and reason.strerror:
        return f"unreachable ({reason.strerror.lower()})"
    return f"unreachable ({reason})"


# ---------------------------------------------------------------------------------
# Vault: log in with userpass, read one KV v2 secret
# ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class VaultSettings:
    """Where and how the app logs in to Vault. The password stays out of repr()."""

    address: str
    username: str
    password: str = field(repr=False)
    auth_path: str = DEFAULT_AUTH_PATH
    secret_path: str = DEFAULT_SECRET_PATH

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "VaultSettings":
        address = env.get("VAULT_HOST", "").strip().rstrip("/")
        username = env.get("VAULT_USER", "").strip()
        password = env.get("VAULT_PASS", "")
        missing = [name for name, value in (("VAULT_USER", username), ("VAULT_PASS", password)) if not value]
        if missing:
            raise ServiceError("Vault", address, f"{' and '.join(missing)} must be set when VAULT_HOST is")
        return cls(address, username, password,
                   env.get("VAULT_AUTH_PATH", "").strip("/ ") or DEFAULT_AUTH_PATH,
                   env.get("VAULT_SECRET_PATH", "").strip("/ ") or DEFAULT_SECRET_PATH)


class VaultClient:
    """The two Vault calls the app needs, plus the few that `setup` needs."""

    def __init__(self, address: str, timeout_s: float = VAULT_TIMEOUT_S) -> None:
        self.address = address.rstrip("/")
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, payload: Any = None, token: Optional[str] = None,
             doing: str = "") -> Any:
        """`path` is relative to /v1/. Failures become ServiceError naming Vault and `doing`."""
        headers = {"X-Vault-Token": token} if token else {}
        try:
            return call_json(method, f"{self.address}/v1/{path}", payload, headers, self.timeout_s)
        except CallFailed as err:
            raise ServiceError("Vault", self.address, f"{doing or path}: {err}", err.status) from None

    def login(self, auth_path: str, username: str, password: str) -> str:
        """userpass login -> client token (an opaque string; never logged)."""
        doing = f"cannot log in as {username!r} via auth/{auth_path}"
        answer = self.call("POST", f"auth/{auth_path}/login/{username}", {"password": password}, doing=doing)
        token = _dig(answer, "auth", "client_token")
        if not isinstance(token, str) or not token:
            raise ServiceError("Vault", self.address, f"{doing}: the answer has no auth.client_token")
        return token

    def read_secret(self, secret_path: str, token: str) -> Dict[str, Any]:
        """KV v2 read -> the secret's key/value pairs (the envelope's data.data)."""
        doing = f"cannot read {secret_path}"
        answer = self.call("GET", secret_path, token=token, doing=doing)
        values = _dig(answer, "data", "data")
        if not isinstance(values, dict):
            raise ServiceError("Vault", self.address, f"{doing}: the answer has no data.data (is it a KV v2 path?)")
        return values


def _dig(obj: Any, *keys: str) -> Any:
    """obj[k1][k2]... or None when any level is missing or not an object."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


@dataclass(frozen=True)
class FliptSettings:
    """What the app reads from Vault: where Flipt is and the token to send it."""

    host: str
    token: str = field(repr=False)


def load_flipt_settings(settings: VaultSettings, vault: Optional[VaultClient] = None) -> FliptSettings:
    """The bootstrap: log in, read the secret, pick out the two Flipt values.

    A 403 on the read means the token was refused (expired, revoked) or the policy does
    not allow the path. Logging in again once cures the first; the second fails again.
    """
    vault = vault or VaultClient(settings.address)
    token = vault.login(settings.auth_path, settings.username, settings.password)
    try:
        values = vault.read_secret(settings.secret_path, token)
    except ServiceError as err:
        if err.status != 403:
            raise
        log.info("Vault at %s refused the token on %s (HTTP 403); logging in again once",
                 vault.address, settings.secret_path)
        token = vault.login(settings.auth_path, settings.username, settings.password)
        values = vault.read_secret(settings.secret_path, token)
    host = _secret_value(vault, settings.secret_path, values, "flipt_api_host")
    token_value = _secret_value(vault, settings.secret_path, values, "flipt_api_token")
    return FliptSettings(host.rstrip("/"), token_value)


def _secret_value(vault: VaultClient, secret_path: str, values: Dict[str, Any], key: str) -> str:
    value = values.get(key)
    if not isinstance(value, str) or not value:
        raise ServiceError("Vault", vault.address, f"secret {secret_path} has no {key!r} (a non-empty string)")
    return value


# ---------------------------------------------------------------------------------
# Flipt: one boolean flag per request
# ---------------------------------------------------------------------------------

class FliptClient:
    """Evaluates boolean flags over Flipt's REST API (v1 and v2 speak the same here)."""

    def __init__(self, host: str, token: str = "", timeout_s: float = FLIPT_TIMEOUT_S) -> None:
        self.host = host.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"FliptClient({self.host!r})"

    def boolean(self, flag_key: str, entity_id: str = "", context: Optional[Dict[str, str]] = None,
                namespace: str = "default") -> bool:
        """True when the flag is enabled. Raises ServiceError naming Flipt and the cause."""
        body = {"namespaceKey": namespace, "flagKey": flag_key, "entityId": entity_id, "context": context or {}}
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            answer = call_json("POST", f"{self.host}/evaluate/v1/boolean", body, headers, self.timeout_s)
        except CallFailed as err:
            raise ServiceError("Flipt", self.host, f"cannot evaluate {flag_key}: {err}", err.status) from None
        enabled = _dig(answer, "enabled")
        if not isinstance(enabled, bool):
            raise ServiceError("Flipt", self.host, f"cannot evaluate {flag_key}: the answer has no boolean 'enabled'")
        return enabled


class StaticFlags:
    """The embedded default when Vault is not configured: one fixed value for every flag."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def boolean(self, flag_key: str) -> bool:
        return self.enabled


# ---------------------------------------------------------------------------------
# The application: what each request does
# ---------------------------------------------------------------------------------

def greeting(reverse: bool) -> str:
    return GREETING[::-1] if reverse else GREETING


class WarningLimiter:
    """Lets one warning through every `every_s` seconds and counts the ones it held back."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._next_at = float("-inf")
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        if now < self._next_at:
            self.suppressed += 1
            return False
        self._next_at = now + self.every_s
        return True


class Application:
    """The request handler minirr calls: answers every request with the greeting.

    `flags` is a FliptClient or StaticFlags. `clock` is a parameter so tests can make
    time pass for the warning limiter without sleeping.
    """

    def __init__(self, flags: Any, clock: Callable[[], float] = time.monotonic,
                 warn_every_s: float = WARN_EVERY_S) -> None:
        self.flags = flags
        self.clock = clock
        self._warnings = WarningLimiter(warn_every_s)

    def handle(self, request: Request) -> Response:
        reverse = self.flag_enabled(FLAG_KEY)
        return Response(200, {"Content-Type": "text/plain; charset=utf-8"}, greeting(reverse))

    def flag_enabled(self, flag_key: str) -> bool:
        """The flag's value; False when Flipt fails, so the page still works."""
        try:
            return self.flags.boolean(flag_key)
        except ServiceError as err:
            self._warn(f"{err}; treating the flag as off")
            return False

    def _warn(self, message: str) -> None:
        held_back = self._warnings.suppressed
        if not self._warnings.allow(self.clock()):
            return
        self._warnings.suppressed = 0
        if held_back:
            message += f" ({held_back} similar warnings suppressed)"
        log.warning("%s", message)


def create_app(environ: Optional[Mapping[str, str]] = None) -> Application:
    """The worker bootstrap (rr.ini: `factory = true`): runs once in each worker process."""
    env = os.environ if environ is None else environ
    _configure_logging()
    if not env.get("VAULT_HOST", "").strip():
        reverse = env.get("DEMO_SHOW_REVERSE_GREETING", "").strip().lower() in ("1", "true", "on")
        log.info("Vault is not configured (VAULT_HOST is empty); serving without Flipt, "
                 "flag %s from DEMO_SHOW_REVERSE_GREETING", "on" if reverse else "off")
        return Application(StaticFlags(reverse))
    started_at = time.monotonic()
    try:
        vault_settings = VaultSettings.from_env(env)
        flipt = load_flipt_settings(vault_settings)
    except ServiceError as err:
        # One line, no traceback: minirr logs a SystemExit's message and retries later.
        raise SystemExit(str(err)) from None
    log.info("bootstrap: logged in to Vault at %s as %r and read %s in %.0f ms; Flipt at %s",
             vault_settings.address, vault_settings.username, vault_settings.secret_path,
             (time.monotonic() - started_at) * 1000, flipt.host)
    return Application(FliptClient(flipt.host, flipt.token))


# ---------------------------------------------------------------------------------
# The same app in ASGI: the login in the lifespan startup, Flipt in a thread
# ---------------------------------------------------------------------------------

TEXT_PLAIN = [(b"content-type", b"text/plain; charset=utf-8")]


async def asgi_app(scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
    """ASGI 3 (rr.ini: `app = demo_app:asgi_app`): the demo's bootstrap is its lifespan
    startup; a request awaits the flag without holding up the event loop."""
    if scope["type"] == "lifespan":
        await _lifespan(scope["state"], receive, send)
        return
    application: Application = scope["state"]["application"]
    reverse = await asyncio.to_thread(application.flag_enabled, FLAG_KEY)   # urllib blocks: not in the loop
    await send({"type": "http.response.start", "status": 200, "headers": TEXT_PLAIN})
    await send({"type": "http.response.body", "body": greeting(reverse).encode("utf-8")})


async def _lifespan(state: Dict[str, Any], receive: Callable, send: Callable) -> None:
    """startup: create_app() (the Vault login) in a thread; a known cause fails the start
    with its one line, as create_app's SystemExit does for the minirr handler."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                state["application"] = await asyncio.to_thread(create_app)
            except SystemExit as exc:
                await send({"type": "lifespan.startup.failed", "message": str(exc.code)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _configure_logging() -> None:
    """Make INFO lines visible when nobody configured logging (a bare worker process)."""
    if logging.getLogger().handlers or log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("demo_app %(levelname)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


# ---------------------------------------------------------------------------------
# `setup` and `flag`: the tutorial's UI clicks as API calls (reference §5)
# ---------------------------------------------------------------------------------

FLAGS_API = "/api/v1/namespaces/default/flags"


def app_policy(secret_path: str) -> str:
    """The Vault policy that lets the app read its secret and nothing else."""
    return f'path "{secret_path}" {{\n  capabilities = ["read"]\n}}\n'


def flipt_call(flipt_addr: str, method: str, path: str, payload: Any = None, token: str = "",
               doing: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        return call_json(method, f"{flipt_addr}{path}", payload, headers, VAULT_TIMEOUT_S)
    except CallFailed as err:
        raise ServiceError("Flipt", flipt_addr, f"{doing or path}: {err}", err.status) from None


def wait_healthy(service: str, address: str, health_path: str, timeout_s: float) -> None:
    """Poll a health endpoint until it answers 2xx; containers may still be starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            call_json("GET", address + health_path, timeout_s=2.0)
            return
        except CallFailed as err:
            if time.monotonic() >= deadline:
                raise ServiceError(service, address, f"not healthy after {timeout_s:g} s: {err}") from None
        time.sleep(0.25)  # a poll interval in a command-line tool


def setup_flipt(flipt_addr: str, admin_token: str) -> str:
    """Create the flag (boolean, off) unless it exists, and a fresh API token for the app."""
    flag = {"key": FLAG_KEY, "name": FLAG_KEY, "type": "BOOLEAN_FLAG_TYPE", "enabled": False}
    try:
        flipt_call(flipt_addr, "POST", FLAGS_API, flag, admin_token, f"cannot create flag {FLAG_KEY}")
        print(f"Flipt: created flag {FLAG_KEY} (boolean, off)")
    except ServiceError as err:
        if "is not unique" not in str(err):
            raise
        print(f"Flipt: flag {FLAG_KEY} already exists")
    answer = flipt_call(flipt_addr, "POST", "/auth/v1/method/token",
                        {"name": APP_USER, "description": "minirr demo app"}, admin_token,
                        "cannot create an API token (is FLIPT_AUTHENTICATION_METHODS_TOKEN_ENABLED=true?)")
    client_token = _dig(answer, "clientToken")
    if not isinstance(client_token, str) or not client_token:
        raise ServiceError("Flipt", flipt_addr, "the token answer has no clientToken")
    print(f"Flipt: created API token {APP_USER!r}")
    return client_token


def setup_vault(vault: VaultClient, root_token: str, app_password: str, flipt_settings: FliptSettings) -> None:
    """userpass on, the read policy, the app user, and the secret holding Flipt's address."""
    try:
        vault.call("POST", f"sys/auth/{DEFAULT_AUTH_PATH}", {"type": "userpass"}, root_token,
                   "cannot enable userpass")
        print("Vault: enabled userpass")
    except ServiceError as err:
        if "path is already in use" not in str(err):
            raise
        print("Vault: userpass already enabled")
    vault.call("PUT", f"sys/policies/acl/{APP_USER}", {"policy": app_policy(DEFAULT_SECRET_PATH)}, root_token,
               f"cannot write policy {APP_USER}")
    vault.call("POST", f"auth/{DEFAULT_AUTH_PATH}/users/{APP_USER}",
               {"password": app_password, "token_policies": APP_USER}, root_token, f"cannot write user {APP_USER}")
    vault.call("POST", DEFAULT_SECRET_PATH,
               {"data": {"flipt_api_host": flipt_settings.host, "flipt_api_token": flipt_settings.token}},
               root_token, f"cannot write {DEFAULT_SECRET_PATH}")
    print(f"Vault: policy {APP_USER}, user {APP_USER} and secret {DEFAULT_SECRET_PATH} written")


def write_env_file(path: str, values: Dict[str, str]) -> None:
    """KEY=value lines, readable by the owner only (the file holds a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
    with os.fdopen(fd, "w") as f:
        for key, value in values.items():
            f.write(f"{key}={value}\n")


def run_setup(args: Any) -> int:
    flipt_addr = args.flipt_addr.rstrip("/")
    vault = VaultClient(args.vault_addr)
    wait_healthy("Flipt", flipt_addr, "/health", args.wait)
    wait_healthy("Vault", vault.address, "/v1/sys/health", args.wait)
    flipt_token = setup_flipt(flipt_addr, args.flipt_token)
    flipt_settings = FliptSettings((args.flipt_api_host or flipt_addr).rstrip("/"), flipt_token)
    password = args.app_password or secrets.token_urlsafe(18)
    setup_vault(vault, args.vault_token, password, flipt_settings)
    # Check it the way a worker will: log in as the app, read the secret.
    app_settings = VaultSettings(vault.address, APP_USER, password)
    load_flipt_settings(app_settings, vault)
    print(f"Vault: verified: {APP_USER} can log in and read {DEFAULT_SECRET_PATH}")
    write_env_file(args.env_file, {"VAULT_HOST": vault.address, "VAULT_USER": APP_USER, "VAULT_PASS": password})
    print(f"wrote {args.env_file} (VAULT_HOST, VAULT_USER, VAULT_PASS; mode 0600)")
    print(f"start the demo:  python -m minirr serve --dotenv {args.env_file}")
    print(f"flip the flag:   python demo_app.py flag on --flipt-addr {flipt_addr}")
    return 0


def run_flag(args: Any) -> int:
    """PUT is a full update in Flipt: `name` is required, so send it along."""
    flipt_addr = args.flipt_addr.rstrip("/")
    enabled = args.state == "on"
    flipt_call(flipt_addr, "PUT", f"{FLAGS_API}/{FLAG_KEY}", {"name": FLAG_KEY, "enabled": enabled},
               args.flipt_token, f"cannot update flag {FLAG_KEY}")
    print(f"Flipt: flag {FLAG_KEY} is now {args.state}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    import argparse  # only the command line needs it; a worker importing the app does not

    parser = argparse.ArgumentParser(prog="demo_app.py", description="Set up and drive the minirr demo.")
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("setup", help="create the Flipt flag and token, the Vault user, policy and secret")
    setup.add_argument("--vault-addr", required=True, help="e.g. http://127.0.0.1:8200")
    setup.add_argument("--vault-token", required=True, help="a root (or admin) Vault token")
    setup.add_argument("--flipt-addr", required=True, help="e.g. http://127.0.0.1:8100")
    setup.add_argument("--flipt-token", default="", help="Flipt token for management calls, if Flipt requires one")
    setup.add_argument("--flipt-api-host", default="", help="Flipt address as the app sees it (default: --flipt-addr)")
    setup.add_argument("--app-password", default="", help="password for Vault user demoapp (default: generated)")
    setup.add_argument("--env-file", default="vault.env", help="where to write VAULT_HOST/USER/PASS (default: vault.env)")
    setup.add_argument("--wait", type=float, default=30.0, help="seconds to wait for both services to be healthy")
    setup.set_defaults(run=run_setup)
    flag = commands.add_parser("flag", help=f"turn the {FLAG_KEY} flag on or off")
    flag.add_argument("state", choices=("on", "off"))
    flag.add_argument("--flipt-addr", required=True, help="e.g. http://127.0.0.1:8100")
    flag.add_argument("--flipt-token", default="", help="Flipt token, if Flipt requires one")
    flag.set_defaults(run=run_flag)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ServiceError as err:
        print(f"demo_app.py {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
