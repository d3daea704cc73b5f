"""The demo served by a real minirr: bootstrap once per worker, Flipt once per request.

The Vault and Flipt doubles run in this test process on 127.0.0.1; the workers of the
`python -m minirr serve` under test talk to them, and the doubles count what arrives.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

import pytest

from serverproc import ROOT, wait_until

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from doubles.demo import closed_port, demo_fixtures  # noqa: E402
from doubles.flipt_double import FliptDouble  # noqa: E402
from doubles.vault_double import VaultDouble  # noqa: E402

CONFIG = """\
[server]
app = demo_app:create_app
factory = true
"""
ASGI_CONFIG = """\
[server]
app = demo_app:asgi_app
"""
BOTH = pytest.mark.parametrize("config", [CONFIG, ASGI_CONFIG], ids=["minirr", "asgi"])
PASSWORD = "pw-Served-9931"
FLIPT_TOKEN = "flipt-Served-Token-77"
FLAG = "show_reverse_greeting"
HELLO = b"Hello, world!"
OLLEH = b"!dlrow ,olleH"

flipt, vault, vault_env = demo_fixtures(root_token="root-Served", password=PASSWORD, flipt_token=FLIPT_TOKEN)


def demo_command(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(ROOT / "demo_app.py"), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def body_of(srv) -> bytes:
    status, _headers, body = srv.request("GET", "/")
    assert status == 200
    return body


def assert_no_secrets(text: str) -> None:
    for secret in (PASSWORD, FLIPT_TOKEN, "root-Served"):
        assert secret not in text


@BOTH
def test_two_workers_thirty_requests_two_logins_thirty_evaluations(serve, vault, flipt, vault_env, config):
    srv = serve(config, overrides=["pool.num_workers=2"], env=vault_env)
    srv.wait_for_log(r"demo_app: bootstrap: logged in to Vault", count=2)
    for _ in range(30):
        status, headers, body = srv.request("GET", "/")
        assert (status, body) == (200, HELLO)
        assert headers["content-type"].startswith("text/plain")
    assert (vault.logins, vault.reads) == (2, 2)
    assert flipt.evaluations == 30
    assert_no_secrets(srv.log)


def test_tutorial_story_setup_serve_flip(serve, tmp_path):
    """setup -> serve --dotenv vault.env -> flag on -> the greeting reverses -> flag off."""
    with VaultDouble(root_token="root-Served") as vault, FliptDouble() as flipt:
        env_file = tmp_path / "vault.env"
        demo_command("setup", "--vault-addr", vault.url, "--vault-token", "root-Served",
                     "--flipt-addr", flipt.url, "--env-file", str(env_file))
        srv = serve(CONFIG, args=["--dotenv", str(env_file)])
        assert body_of(srv) == HELLO
        demo_command("flag", "on", "--flipt-addr", flipt.url)
        assert body_of(srv) == OLLEH
        demo_command("flag", "off", "--flipt-addr", flipt.url)
        assert body_of(srv) == HELLO
        assert vault.logins == 1 + srv.log.count("bootstrap: logged in")  # setup verifies once
        assert env_file.read_text().split("VAULT_PASS=")[1].strip() not in srv.log


def _sealed(vault, env):
    vault.sealed = True
    return env, "Vault is sealed (HTTP 503)"


def _wrong_password(vault, env):
    return dict(env, VAULT_PASS="not-" + PASSWORD), "invalid username or password (HTTP 400)"


def _unreachable(vault, env):
    return dict(env, VAULT_HOST=f"http://127.0.0.1:{closed_port()}"), "unreachable (connection refused)"


def _missing_password(vault, env):
    return dict(env, VAULT_PASS=""), "VAULT_PASS must be set when VAULT_HOST is"


@BOTH
@pytest.mark.parametrize("breakage", [_unreachable, _wrong_password, _sealed, _missing_password])
def test_vault_down_at_bootstrap_gives_503_and_one_line(serve, vault, vault_env, breakage, config):
    env, cause = breakage(vault, vault_env)
    srv = serve(config, overrides=["pool.num_workers=1"], env=env)
    address = env["VAULT_HOST"]
    (line,) = srv.wait_for_log(r"bootstrap failed")[:1]
    assert f"Vault at {address}: " in line and line.endswith(cause), line
    started = time.monotonic()
    status, headers, _ = srv.request("GET", "/")
    assert status == 503 and "retry-after" in headers
    assert time.monotonic() - started < 2.0
    assert "Traceback" not in srv.log
    assert_no_secrets(srv.log)


def test_workers_start_once_vault_is_unsealed(serve, vault, vault_env):
    vault.sealed = True
    srv = serve(CONFIG, overrides=["pool.num_workers=1"], env=vault_env)
    srv.wait_for_log(r"bootstrap failed: Vault at .*Vault is sealed")
    assert srv.request("GET", "/")[0] == 503
    vault.sealed = False  # the core retries with backoff (0.5 s, 1 s, ...)
    wait_until(lambda: srv.request("GET", "/")[0] == 200, timeout=15, message="a worker to boot after unsealing")
    assert body_of(srv) == HELLO


@BOTH
def test_flipt_down_still_greets_and_warns_once(serve, vault, flipt, vault_env, config):
    srv = serve(config, overrides=["pool.num_workers=1"], env=vault_env)
    flipt.set_flag(FLAG, True)
    assert body_of(srv) == OLLEH
    flipt.stop()
    for _ in range(10):
        assert body_of(srv) == HELLO
    warning_rx = rf"WARNING minirr: worker \d+ \(pid \d+\): demo_app: Flipt at {re.escape(flipt.url)}: .*unreachable.*treating the flag as off"
    srv.wait_for_log(warning_rx)
    assert len(re.findall(warning_rx, srv.log)) == 1  # rate-limited: one per worker per 5 s
    assert_no_secrets(srv.log)


def test_embedded_default_without_vault(serve):
    srv = serve(CONFIG, overrides=["pool.num_workers=2"], env={"DEMO_SHOW_REVERSE_GREETING": "on"})
    assert body_of(srv) == OLLEH
    srv.wait_for_log(r"Vault is not configured", count=2)
    off = serve(CONFIG, overrides=["pool.num_workers=1"])
    assert body_of(off) == HELLO


class PairedFlipt(FliptDouble):
    """Answers no evaluation until a second one is in: both go back together. A worker
    whose event loop is blocked by its first call never sends the second, and its first
    call times out instead (the flag then counts as off)."""

    def __init__(self) -> None:
        super().__init__()
        self.pair = threading.Barrier(2)

    def _evaluate(self, call):
        try:
            self.pair.wait(20)
        except threading.BrokenBarrierError:
            pass
        return super()._evaluate(call)


def test_the_asgi_demo_asks_flipt_without_holding_up_its_event_loop(vault, vault_env):
    """Two requests at once on one worker (the multiplexed wire, the test playing the
    master): both are answered from Flipt, so each was in Flipt while the other was."""
    from asgiworker import AsgiWorker, body_of
    with PairedFlipt() as paired:
        paired.set_flag(FLAG, True)
        vault.put_secret("secret/data/demoapp", {"flipt_api_host": paired.url, "flipt_api_token": FLIPT_TOKEN})
        worker = AsgiWorker("demo_app:asgi_app", interface="auto", env=vault_env, path=ROOT)
        try:
            worker.handshake()
            worker.request("/", request_id=1)
            worker.request("/", request_id=2)
            assert body_of(worker.answer(1)) == OLLEH and body_of(worker.answer(2)) == OLLEH
            assert worker.stop() == 0
        finally:
            paired.pair.abort()
            worker.close()
    assert vault.logins == 1 and "treating the flag as off" not in worker.log
