"""The demo against a real Vault-compatible server: OpenBao's `bao server -dev`.

Found through the environment variable MINIRR_BAO (what `.ci/openbao.sh` prints) or
`bao` on PATH; without it these tests skip and say so. Flipt has no runnable server
package, so it is the double here too.

One dev server serves the whole module (it starts in well under a second); its data
lives in memory and dies with it. Teardown always kills it, by pid.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serverproc import ROOT, pid_alive, wait_until

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import demo_app  # noqa: E402
from doubles.flipt_double import FliptDouble  # noqa: E402

ROOT_TOKEN = "root"
PASSWORD = "pw-Bao-5521"
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


def find_bao() -> str:
    """The bao binary, or skip. A MINIRR_BAO that points nowhere is an error, not a skip."""
    configured = os.environ.get("MINIRR_BAO", "")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"MINIRR_BAO={configured} is not an executable file")
        return configured
    found = shutil.which("bao")
    if not found:
        pytest.skip("OpenBao not found: set MINIRR_BAO to a bao binary "
                    "(export MINIRR_BAO=$(bash .ci/openbao.sh | tail -n1)) or put bao on PATH")
    return found


def free_port_pair() -> int:
    """A port P with P+1 free too: the dev server listens on P and clusters on P+1.

    SO_REUSEADDR as bao (Go) sets it: a port whose old connections sit in TIME_WAIT is
    free for a listener, and other tests leave plenty of those behind.
    """
    for _ in range(200):
        with socket.socket() as first, socket.socket() as second:
            for sock in (first, second):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free loopback ports")


class BaoServer:
    def __init__(self, binary: str, folder: Path) -> None:
        self.port = free_port_pair()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "bao.log"
        env = dict(os.environ, HOME=str(folder))  # nothing of ours lands in the real $HOME
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}",
                 f"-dev-listen-address=127.0.0.1:{self.port}", "-dev-no-store-token"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(folder), env=env)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"bao exited with {self.proc.returncode}:\n{self.log()}")
            try:
                demo_app.call_json("GET", f"{self.url}/v1/sys/health", timeout_s=1.0)
                return True
            except demo_app.CallFailed:
                return False
        wait_until(healthy, timeout, interval=0.05, message="bao to answer /v1/sys/health")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def unseal_key(self) -> str:
        return re.search(r"Unseal Key: (\S+)", self.log()).group(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        assert not pid_alive(self.proc.pid)


def start_bao(binary: str, folder: Path, attempts: int = 3) -> BaoServer:
    """Start a dev server; try a new port if another process took ours in the meantime."""
    for attempt in range(attempts):
        server = BaoServer(binary, folder)
        try:
            server.wait_healthy()
            return server
        except AssertionError:
            server.stop()
            if attempt == attempts - 1 or "address already in use" not in server.log():
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    server = start_bao(find_bao(), tmp_path_factory.mktemp("bao"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def flipt():
    double = FliptDouble().start()
    yield double
    double.stop()


@pytest.fixture(scope="module")
def env_file(bao, flipt, tmp_path_factory):
    """`demo_app.py setup` run twice against the real server: the second run must succeed too."""
    path = tmp_path_factory.mktemp("setup") / "vault.env"
    for _ in range(2):
        run_demo("setup", "--vault-addr", bao.url, "--vault-token", ROOT_TOKEN, "--flipt-addr", flipt.url,
                 "--app-password", PASSWORD, "--env-file", str(path))
    return path


def run_demo(*args: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "demo_app.py"), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def app_env(bao, **changes):
    return dict({"VAULT_HOST": bao.url, "VAULT_USER": "demoapp", "VAULT_PASS": PASSWORD}, **changes)


def boot_failure(env) -> str:
    with pytest.raises(SystemExit) as info:
        demo_app.create_app(env)
    assert "\n" not in info.value.code
    return info.value.code


def root_call(bao, method, path, payload=None):
    return demo_app.call_json(method, f"{bao.url}/v1/{path}", payload, {"X-Vault-Token": ROOT_TOKEN})


@BOTH
def test_setup_serve_and_flip_the_flag(serve, bao, flipt, env_file, config):
    srv = serve(config, overrides=["pool.num_workers=2"], args=["--dotenv", str(env_file)])
    srv.wait_for_log(r"demo_app: bootstrap: logged in to Vault", count=2)
    before = flipt.evaluations
    assert srv.request("GET", "/")[2] == b"Hello, world!"
    run_demo("flag", "on", "--flipt-addr", flipt.url)
    assert srv.request("GET", "/")[2] == b"!dlrow ,olleH"
    run_demo("flag", "off", "--flipt-addr", flipt.url)
    assert srv.request("GET", "/")[2] == b"Hello, world!"
    assert flipt.evaluations - before == 3
    assert PASSWORD not in srv.log


@BOTH
def test_wrong_password_is_one_boot_failure_line(serve, bao, env_file, config):
    srv = serve(config, overrides=["pool.num_workers=1"], env=app_env(bao, VAULT_PASS="not-" + PASSWORD))
    (line,) = srv.wait_for_log(r"bootstrap failed")[:1]
    assert line.endswith(f"Vault at {bao.url}: cannot log in as 'demoapp' via auth/userpass: "
                         "invalid username or password (HTTP 400)")
    assert srv.request("GET", "/")[0] == 503
    assert "Traceback" not in srv.log and PASSWORD not in srv.log


def test_permission_denied_by_the_policy(bao, env_file):
    message = boot_failure(app_env(bao, VAULT_SECRET_PATH="secret/data/other"))
    assert message == f"Vault at {bao.url}: cannot read secret/data/other: permission denied (HTTP 403)"


def test_secret_missing_or_lacking_a_key(bao, env_file):
    root_call(bao, "PUT", "sys/policies/acl/reader", {"policy": 'path "secret/data/*" {\n  capabilities = ["read"]\n}\n'})
    root_call(bao, "POST", "auth/userpass/users/reader", {"password": PASSWORD, "token_policies": "reader"})
    reader = app_env(bao, VAULT_USER="reader")
    message = boot_failure(dict(reader, VAULT_SECRET_PATH="secret/data/nothing"))
    assert message == f"Vault at {bao.url}: cannot read secret/data/nothing: not found (HTTP 404)"
    root_call(bao, "POST", "secret/data/partial", {"data": {"flipt_api_host": "http://127.0.0.1:1"}})
    message = boot_failure(dict(reader, VAULT_SECRET_PATH="secret/data/partial"))
    assert message.endswith("secret secret/data/partial has no 'flipt_api_token' (a non-empty string)")


def test_sealed_vault(bao, env_file):
    root_call(bao, "POST", "sys/seal")
    try:
        message = boot_failure(app_env(bao))
        assert message == f"Vault at {bao.url}: cannot log in as 'demoapp' via auth/userpass: Vault is sealed (HTTP 503)"
    finally:
        demo_app.call_json("POST", f"{bao.url}/v1/sys/unseal", {"key": bao.unseal_key()})

    def boots() -> bool:
        try:
            demo_app.create_app(app_env(bao))
            return True
        except SystemExit:
            return False
    wait_until(boots, timeout=10, interval=0.1, message="the app to start after unsealing")
