"""Unit tests of demo_app against the Vault and Flipt doubles, in this process (fast).

Every bootstrap failure the issue lists has a test, each checking that the one-line
message names Vault, the address and the cause, and carries no secret.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys

import pytest

from serverproc import ROOT

if str(ROOT) not in sys.path:  # demo_app.py lives at the top of the repo
    sys.path.insert(0, str(ROOT))

import demo_app  # noqa: E402
from doubles.demo import closed_port, demo_fixtures  # noqa: E402
from doubles.flipt_double import FliptDouble  # noqa: E402
from doubles.vault_double import VaultDouble  # noqa: E402

PASSWORD = "pw-Secret-4711"
FLIPT_TOKEN = "flipt-Token-0815"
ROOT_TOKEN = "root-Token-42"
FLAG = "show_reverse_greeting"

flipt, vault, env = demo_fixtures(root_token=ROOT_TOKEN, password=PASSWORD, flipt_token=FLIPT_TOKEN)


def boot_failure(env) -> str:
    """create_app(env) must fail with SystemExit(one line); that line is returned."""
    with pytest.raises(SystemExit) as info:
        demo_app.create_app(env)
    message = info.value.code
    assert isinstance(message, str) and "\n" not in message, repr(message)
    return message


def assert_no_secrets(text: str) -> None:
    for secret in (PASSWORD, FLIPT_TOKEN, ROOT_TOKEN):
        assert secret not in text, f"{secret!r} leaked into: {text}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- embedded default: no Vault ----------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (None, "Hello, world!"), ("", "Hello, world!"), ("0", "Hello, world!"), ("no", "Hello, world!"),
    ("1", "!dlrow ,olleH"), ("true", "!dlrow ,olleH"), ("TRUE", "!dlrow ,olleH"), ("On", "!dlrow ,olleH"),
])
def test_without_vault_host_the_flag_comes_from_the_environment(value, expected, monkeypatch, caplog):
    def no_network(*args, **kwargs):
        raise AssertionError("the embedded default must not touch the network")
    monkeypatch.setattr(demo_app.urllib.request, "urlopen", no_network)
    env = {"VAULT_HOST": "  "} if value is None else {"DEMO_SHOW_REVERSE_GREETING": value}
    with caplog.at_level(logging.INFO, logger="demo_app"):
        app = demo_app.create_app(env)
        response = app.handle(None)
        app.handle(None)
    assert (response.status, response.body.decode()) == (200, expected)
    assert dict(response.headers)["Content-Type"].startswith("text/plain")
    notes = [r.getMessage() for r in caplog.records if "Vault is not configured" in r.getMessage()]
    assert len(notes) == 1


# ---- the happy path ----------------------------------------------------------------

def test_bootstrap_logs_in_once_and_each_request_asks_flipt(env, vault, flipt):
    app = demo_app.create_app(env)
    assert app.handle(None).body == b"Hello, world!"
    flipt.set_flag(FLAG, True)
    assert app.handle(None).body == b"!dlrow ,olleH"
    assert (vault.logins, vault.reads, flipt.evaluations) == (1, 1, 2)


def test_vault_calls_follow_the_contract(env, vault):
    demo_app.create_app(env)
    login, read = vault.calls
    assert (login.method, login.path) == ("POST", "/v1/auth/userpass/login/demoapp")
    assert login.headers["content-type"] == "application/json"
    assert json.loads(login.body) == {"password": PASSWORD}
    assert (read.method, read.path) == ("GET", "/v1/secret/data/demoapp")
    assert read.headers["x-vault-token"].startswith("s.")


def test_evaluation_request_follows_the_contract(env, flipt):
    demo_app.create_app(env).handle(None)
    (call,) = flipt.calls
    assert (call.method, call.path) == ("POST", "/evaluate/v1/boolean")
    assert call.headers["authorization"] == f"Bearer {FLIPT_TOKEN}"
    assert call.headers["content-type"] == "application/json"
    assert call.headers["accept"] == "application/json"
    assert json.loads(call.body) == {"namespaceKey": "default", "flagKey": FLAG, "entityId": "", "context": {}}


def test_trailing_slashes_in_addresses_are_harmless(env, vault, flipt):
    vault.put_secret("secret/data/demoapp", {"flipt_api_host": flipt.url + "/", "flipt_api_token": FLIPT_TOKEN})
    app = demo_app.create_app(dict(env, VAULT_HOST=vault.url + "/"))
    assert app.handle(None).body == b"Hello, world!"
    assert flipt.calls[-1].path == "/evaluate/v1/boolean"


def test_auth_path_and_secret_path_can_be_configured(env, vault, flipt):
    vault.enable_userpass("people")
    vault.add_policy("other", 'path "secret/data/apps/*" {\n  capabilities = ["read"]\n}\n')
    vault.add_user("alice", PASSWORD, ["other"])
    vault.put_secret("secret/data/apps/demo", {"flipt_api_host": flipt.url, "flipt_api_token": FLIPT_TOKEN})
    app = demo_app.create_app(dict(env, VAULT_USER="alice", VAULT_AUTH_PATH="people",
                                   VAULT_SECRET_PATH="secret/data/apps/demo"))
    assert app.handle(None).body == b"Hello, world!"
    assert [c.path for c in vault.calls] == ["/v1/auth/people/login/alice", "/v1/secret/data/apps/demo"]


def test_flipt_with_authentication_required_accepts_the_token_from_vault(env, flipt):
    flipt.auth_required = True
    flipt.tokens[FLIPT_TOKEN] = {"id": "t1"}
    flipt.set_flag(FLAG, True)
    assert demo_app.create_app(env).handle(None).body == b"!dlrow ,olleH"


def test_a_refused_token_means_one_more_login_then_success(env, vault):
    vault.reject_next_reads = 1
    app = demo_app.create_app(env)
    assert app.handle(None).body == b"Hello, world!"
    assert (vault.logins, vault.reads) == (2, 2)


# ---- bootstrap failures: one line naming Vault, the address and the cause -----------

@pytest.mark.parametrize("drop, missing", [
    (("VAULT_USER",), "VAULT_USER must be set"),
    (("VAULT_PASS",), "VAULT_PASS must be set"),
    (("VAULT_USER", "VAULT_PASS"), "VAULT_USER and VAULT_PASS must be set"),
])
def test_missing_credentials(env, vault, drop, missing):
    for name in drop:
        env[name] = ""
    message = boot_failure(env)
    assert message.startswith(f"Vault at {vault.url}: ") and missing in message
    assert vault.logins == 0


def test_vault_unreachable():
    address = f"http://127.0.0.1:{closed_port()}"
    message = boot_failure({"VAULT_HOST": address, "VAULT_USER": "demoapp", "VAULT_PASS": PASSWORD})
    assert message.startswith(f"Vault at {address}: ") and "unreachable (connection refused)" in message
    assert_no_secrets(message)


def test_vault_address_without_scheme():
    message = boot_failure({"VAULT_HOST": "vault:8200", "VAULT_USER": "demoapp", "VAULT_PASS": PASSWORD})
    assert message.startswith("Vault at vault:8200: ") and "invalid address" in message


@pytest.mark.parametrize("user, password", [("demoapp", "wrong-password"), ("nobody", PASSWORD)])
def test_wrong_credentials(env, vault, user, password):
    message = boot_failure(dict(env, VAULT_USER=user, VAULT_PASS=password))
    assert message == (f"Vault at {vault.url}: cannot log in as {user!r} via auth/userpass: "
                       "invalid username or password (HTTP 400)")
    assert "wrong-password" not in message


def test_userpass_not_enabled(env, vault):
    message = boot_failure(dict(env, VAULT_AUTH_PATH="nosuch"))
    assert message.startswith(f"Vault at {vault.url}: cannot log in")
    assert message.endswith("permission denied (HTTP 403)")


def test_permission_denied_on_the_secret_logs_in_again_once_then_fails(env, vault, caplog):
    vault.add_policy("demoapp", 'path "secret/data/other" {\n  capabilities = ["read"]\n}\n')
    with caplog.at_level(logging.INFO, logger="demo_app"):
        message = boot_failure(env)
    assert message == f"Vault at {vault.url}: cannot read secret/data/demoapp: permission denied (HTTP 403)"
    assert (vault.logins, vault.reads) == (2, 2)
    assert any("logging in again once" in r.getMessage() for r in caplog.records)


def test_vault_sealed(env, vault):
    vault.sealed = True
    message = boot_failure(env)
    assert message.startswith(f"Vault at {vault.url}: ") and message.endswith("Vault is sealed (HTTP 503)")


def test_secret_missing(env, vault):
    vault.kv.clear()
    message = boot_failure(env)
    assert message == f"Vault at {vault.url}: cannot read secret/data/demoapp: not found (HTTP 404)"


@pytest.mark.parametrize("key", ["flipt_api_host", "flipt_api_token"])
def test_secret_lacking_a_key(env, vault, flipt, key):
    values = {"flipt_api_host": flipt.url, "flipt_api_token": FLIPT_TOKEN}
    del values[key]
    vault.put_secret("secret/data/demoapp", values)
    message = boot_failure(env)
    assert message == f"Vault at {vault.url}: secret secret/data/demoapp has no {key!r} (a non-empty string)"
    assert_no_secrets(message)


@pytest.mark.parametrize("failure, cause", [
    ("error", "injected failure (HTTP 500)"),
    ("drop", "connection closed without an answer"),
    ("garbage", "answered with something that is not JSON (HTTP 200)"),
])
def test_vault_answering_nonsense(env, vault, failure, cause):
    vault.failure = failure
    message = boot_failure(env)
    assert message.startswith(f"Vault at {vault.url}: cannot log in") and message.endswith(cause)


def test_slow_vault_times_out(env, vault):
    vault.latency_s = 5
    settings = demo_app.VaultSettings.from_env(env)
    with pytest.raises(demo_app.ServiceError) as info:
        demo_app.load_flipt_settings(settings, demo_app.VaultClient(vault.url, timeout_s=0.2))
    assert str(info.value).endswith("no answer within 0.2 s")


# ---- Flipt failures per request: flag off, 200, a rate-limited warning --------------

def _stop(double):
    double.stop()


@pytest.mark.parametrize("breakage, cause", [
    (_stop, "unreachable (connection refused)"),
    (lambda d: setattr(d, "failure", "drop"), "connection closed without an answer"),
    (lambda d: setattr(d, "failure", "error"), "injected failure (HTTP 500)"),
    (lambda d: setattr(d, "failure", "garbage"), "not JSON (HTTP 200)"),
    (lambda d: d.flags.clear(), 'flag "default/show_reverse_greeting" not found (HTTP 404)'),
    (lambda d: setattr(d, "auth_required", True), "request was not authenticated (HTTP 401)"),
])
def test_flipt_failure_means_flag_off_and_a_warning(env, flipt, caplog, breakage, cause):
    app = demo_app.create_app(env)
    flipt.set_flag(FLAG, True)
    breakage(flipt)
    with caplog.at_level(logging.INFO, logger="demo_app"):
        response = app.handle(None)
    assert (response.status, response.body) == (200, b"Hello, world!")
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith(f"Flipt at {flipt.url}: cannot evaluate {FLAG}: ")
    assert cause in warning.getMessage() and "treating the flag as off" in warning.getMessage()
    assert_no_secrets(warning.getMessage())


def test_slow_flipt_counts_as_off(flipt, caplog):
    flipt.set_flag(FLAG, True)
    flipt.latency_s = 5
    app = demo_app.Application(demo_app.FliptClient(flipt.url, FLIPT_TOKEN, timeout_s=0.2))
    assert app.handle(None).body == b"Hello, world!"
    assert "no answer within 0.2 s" in caplog.text


def test_flipt_answer_without_enabled(flipt, caplog, monkeypatch):
    monkeypatch.setattr(demo_app, "call_json", lambda *a, **k: {"flagKey": FLAG})
    app = demo_app.Application(demo_app.FliptClient(flipt.url, FLIPT_TOKEN))
    assert app.handle(None).body == b"Hello, world!"
    assert "the answer has no boolean 'enabled'" in caplog.text


def test_flipt_warnings_are_rate_limited_per_worker(env, flipt, caplog):
    clock = FakeClock()
    app = demo_app.create_app(env)
    app.clock = clock
    flipt.failure = "error"

    def warnings_after(n_requests):
        caplog.clear()
        for _ in range(n_requests):
            assert app.handle(None).body == b"Hello, world!"
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level(logging.WARNING, logger="demo_app"):
        assert len(warnings_after(10)) == 1
        clock.now += 4.9
        assert warnings_after(10) == []
        clock.now += 0.1
        (again,) = warnings_after(1)
        assert again.endswith("(19 similar warnings suppressed)")
        flipt.failure = None
        clock.now += 60
        assert warnings_after(5) == []


# ---- secrets stay out of everything that is printed ---------------------------------

def test_secrets_never_appear_in_logs_or_errors(env, vault, flipt, caplog):
    texts = []
    with caplog.at_level(logging.DEBUG):
        app = demo_app.Application(demo_app.create_app(env).flags, warn_every_s=0)  # every warning logged
        for failure in ("error", "drop", "garbage"):
            flipt.failure = failure
            app.handle(None)
        for change in ({"VAULT_PASS": "x" + PASSWORD}, {"VAULT_USER": ""}):
            with pytest.raises(SystemExit) as info:
                demo_app.create_app(dict(env, **change))
            texts.append(str(info.value.code))
        vault.add_policy("demoapp", "")
        with pytest.raises(SystemExit) as info:
            demo_app.create_app(env)
        texts.append(str(info.value.code))
    texts += [caplog.text, repr(demo_app.VaultSettings.from_env(env)), repr(app.flags),
              repr(demo_app.FliptSettings("http://f", FLIPT_TOKEN))]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3
    for text in texts:
        assert_no_secrets(text)


# ---- error text from answers --------------------------------------------------------

@pytest.mark.parametrize("status, body, expected", [
    (400, b'{"errors":["invalid username or password"]}', "invalid username or password"),
    (403, b'{"errors":["1 error occurred:\\n\\t* permission denied\\n\\n"]}', "permission denied"),
    (404, b'{"errors":[]}', "not found"),
    (503, b'{"errors":["Vault is sealed"]}', "Vault is sealed"),
    (404, b'{"code":5,"message":"flag \\"default/x\\" not found","details":[]}', 'flag "default/x" not found'),
    (502, b"<html>Bad Gateway</html>", "bad gateway"),
    (599, b"", "error"),
])
def test_error_text(status, body, expected):
    assert demo_app.error_text(status, body) == expected


# ---- setup and flag commands ---------------------------------------------------------

def run_setup(vault, flipt, tmp_path, *extra):
    env_file = tmp_path / "vault.env"
    argv = ["setup", "--vault-addr", vault.url, "--vault-token", ROOT_TOKEN, "--flipt-addr", flipt.url,
            "--env-file", str(env_file), "--wait", "2", *extra]
    return demo_app.main(argv), env_file


def read_env_file(path):
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_setup_from_scratch_then_again(tmp_path, capsys):
    with VaultDouble(root_token=ROOT_TOKEN) as vault, FliptDouble() as flipt:
        for _ in range(2):  # idempotent: the second run succeeds too
            status, env_file = run_setup(vault, flipt, tmp_path)
            assert status == 0
            values = read_env_file(env_file)
            assert stat.S_IMODE(os.stat(env_file).st_mode) == 0o600
            assert set(values) == {"VAULT_HOST", "VAULT_USER", "VAULT_PASS"}
            assert (values["VAULT_HOST"], values["VAULT_USER"]) == (vault.url, "demoapp")
            assert flipt.flag_enabled(FLAG) is False
            app = demo_app.create_app(values)
            assert app.handle(None).body == b"Hello, world!"
            token = vault.kv["demoapp"]["data"]["flipt_api_token"]
            assert token in flipt.tokens
            output = capsys.readouterr()
            assert "python -m minirr serve --dotenv" in output.out
            assert values["VAULT_PASS"] not in output.out + output.err and token not in output.out + output.err
        assert "already exists" in output.out and "already enabled" in output.out


def test_setup_with_given_password_and_api_host(tmp_path, capsys):
    with VaultDouble(root_token=ROOT_TOKEN) as vault, FliptDouble() as flipt:
        status, env_file = run_setup(vault, flipt, tmp_path, "--app-password", PASSWORD,
                                     "--flipt-api-host", "http://flipt:8080")
        assert status == 0
        assert read_env_file(env_file)["VAULT_PASS"] == PASSWORD
        assert vault.kv["demoapp"]["data"]["flipt_api_host"] == "http://flipt:8080"
        assert_no_secrets(capsys.readouterr().out)


def test_setup_against_flipt_that_requires_a_token(tmp_path, capsys):
    with VaultDouble(root_token=ROOT_TOKEN) as vault, \
            FliptDouble(auth_required=True, bootstrap_token="boot-tok") as flipt:
        status, _ = run_setup(vault, flipt, tmp_path)
        assert status == 1
        assert "request was not authenticated (HTTP 401)" in capsys.readouterr().err
        status, env_file = run_setup(vault, flipt, tmp_path, "--flipt-token", "boot-tok")
        assert status == 0
        assert demo_app.create_app(read_env_file(env_file)).handle(None).body == b"Hello, world!"


def test_setup_with_a_wrong_root_token_fails_with_one_line(tmp_path, capsys):
    with VaultDouble(root_token="other") as vault, FliptDouble() as flipt:
        status, _ = run_setup(vault, flipt, tmp_path)
    err = capsys.readouterr().err
    assert status == 1
    assert err == f"demo_app.py setup: Vault at {vault.url}: cannot enable userpass: permission denied (HTTP 403)\n"


def test_flag_command_flips_the_flag(flipt, capsys):
    assert demo_app.main(["flag", "on", "--flipt-addr", flipt.url]) == 0
    assert flipt.flag_enabled(FLAG) is True
    assert flipt.flags[FLAG]["name"] == FLAG
    assert demo_app.main(["flag", "off", "--flipt-addr", flipt.url + "/"]) == 0
    assert flipt.flag_enabled(FLAG) is False
    assert "is now off" in capsys.readouterr().out


def test_flag_command_without_the_flag(flipt, capsys):
    flipt.flags.clear()
    assert demo_app.main(["flag", "on", "--flipt-addr", flipt.url]) == 1
    assert 'flag "default/show_reverse_greeting" not found (HTTP 404)' in capsys.readouterr().err


def test_command_line_runs_as_a_script(tmp_path):
    with VaultDouble(root_token=ROOT_TOKEN) as vault, FliptDouble() as flipt:
        result = subprocess.run(
            [sys.executable, str(ROOT / "demo_app.py"), "setup", "--vault-addr", vault.url, "--vault-token", ROOT_TOKEN,
             "--flipt-addr", flipt.url, "--env-file", "vault.env"],
            cwd=str(tmp_path), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "vault.env").exists()


def test_importing_has_no_side_effects():
    code = "import demo_app; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


# ---- the doubles keep to the contract (reference §4) ---------------------------------

def test_vault_double_error_shapes(vault):
    def call(method, path, body=None, token=""):
        try:
            demo_app.call_json(method, vault.url + path, body, {"X-Vault-Token": token} if token else {})
        except demo_app.CallFailed as err:
            return err.status, err.cause
        return 200, ""
    assert call("GET", "/v1/auth/userpass/login/demoapp") == (405, "unsupported operation")
    assert call("POST", "/v1/auth/userpass/login/demoapp", {}) == (500, "missing password")
    assert call("GET", "/v1/secret/data/demoapp") == (403, "permission denied")
    assert call("GET", "/v1/secret/data/nothing", token=ROOT_TOKEN) == (404, "not found")
    assert call("GET", "/v1/sys/health") == (200, "")
    vault.sealed = True
    assert call("GET", "/v1/sys/health")[0] == 503


def test_flipt_double_accepts_snake_case_and_answers_grpc_shaped_errors(flipt):
    flipt.set_flag(FLAG, True)
    answer = demo_app.call_json("POST", flipt.url + "/evaluate/v1/boolean", {"flag_key": FLAG, "entity_id": "e1"})
    assert answer["enabled"] is True and answer["reason"] == "DEFAULT_EVALUATION_REASON"
    assert {"requestId", "requestDurationMillis", "timestamp", "flagKey", "segmentKeys"} <= set(answer)
    flipt.auth_required = True
    request = demo_app.urllib.request.Request(flipt.url + "/evaluate/v1/boolean", data=b"{}", method="POST")
    with pytest.raises(demo_app.urllib.error.HTTPError) as info:
        demo_app.urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 401
    assert info.value.headers["WWW-Authenticate"] == "request was not authenticated"
    assert json.loads(info.value.read()) == {"code": 16, "message": "request was not authenticated", "details": []}
