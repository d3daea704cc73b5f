"""systemd notifications: NOTIFY_SOCKET datagrams received by a socket the test owns."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from minirr.master import notify
from serverproc import run_cli

CONFIG = """[server]
app = minirr_testapp:create_app
factory = true
[pool]
num_workers = 2
"""


def test_socket_address():
    assert notify.socket_address("@minirr/notify") == "\0minirr/notify"
    assert notify.socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify.socket_address("") is None and notify.socket_address("vsock:2:1") is None
    assert notify.reloading_message(12.5) == b"RELOADING=1\nMONOTONIC_USEC=12500000"


def test_no_notify_socket_no_notifier():
    assert notify.Notifier.from_environ({}) is None


class Listener:
    """A datagram socket standing in for systemd; `expect` polls it with a deadline."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list = []

    def expect(self, assignment: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages if assignment in m.split("\n")]
            if found:
                self.messages.remove(found[0])
                return found[0]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {assignment} within {timeout}s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    if request.param == "path":
        address = value = str(tmp_path / "notify.sock")
    else:
        value = f"@minirr-test-{os.getpid()}-{id(request)}"
        address = "\0" + value[1:]
    lst = Listener(address)
    lst.env = value
    yield lst
    lst.close()


def test_ready_reloading_stopping(serve, listener):
    srv = serve(CONFIG, env={"NOTIFY_SOCKET": listener.env})
    assert listener.expect("READY=1").startswith("READY=1")
    srv.send_signal(signal.SIGHUP)
    message = listener.expect("RELOADING=1")
    assert "MONOTONIC_USEC=" in message
    listener.expect("READY=1")                     # after the reload completes
    srv.send_signal(signal.SIGTERM)
    listener.expect("STOPPING=1")
    assert srv.wait_exit() == 0


def test_reset_and_stop_commands_notify(serve, tmp_path):
    lst = Listener(str(tmp_path / "n.sock"))
    try:
        srv = serve(CONFIG, env={"NOTIFY_SOCKET": str(tmp_path / "n.sock")})
        lst.expect("READY=1")
        assert run_cli("reset", "-c", str(srv.config_path)).returncode == 0
        lst.expect("RELOADING=1")
        lst.expect("READY=1")
        assert run_cli("stop", "-c", str(srv.config_path)).returncode == 0
        lst.expect("STOPPING=1")
        assert srv.wait_exit() == 0
        lst.sock.setblocking(False)
        try:
            while True:
                lst.messages.append(lst.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        assert lst.messages == []                  # nothing else: one datagram per state change
    finally:
        lst.close()


def test_a_missing_notify_socket_is_not_fatal(serve, tmp_path):
    srv = serve(CONFIG, env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    srv.wait_for_log(r"cannot notify systemd")
    assert srv.request("GET", "/")[0] == 200
