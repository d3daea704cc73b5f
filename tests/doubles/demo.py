"""The Vault and Flipt doubles set up the way demo_app expects them, as pytest fixtures.

    flipt, vault, vault_env = demo_fixtures(root_token=ROOT_TOKEN, password=PASSWORD,
                                            flipt_token=FLIPT_TOKEN)

at the top level of a test module gives it three fixtures, named after the names they
are bound to: a FliptDouble with the demo flag off; a VaultDouble seeded as
`demo_app.py setup` leaves it, pointing at that Flipt; and the VAULT_* variables that
log in as the demo user. Each test module keeps its own secrets, so that a leak check
in one module looks for that module's secrets.
"""

from __future__ import annotations

import socket
from typing import Callable, Tuple

import pytest

from doubles.flipt_double import FliptDouble
from doubles.vault_double import VaultDouble

DEMO_FLAG = "show_reverse_greeting"
DEMO_USER = "demoapp"


def demo_fixtures(*, root_token: str, password: str, flipt_token: str) -> Tuple[Callable, Callable, Callable]:
    """The fixtures (flipt, vault, vault_env); `vault` needs the one bound to `flipt`."""

    @pytest.fixture
    def flipt():
        """A FliptDouble with the demo flag, off."""
        with FliptDouble() as double:
            double.set_flag(DEMO_FLAG, False)
            yield double

    @pytest.fixture
    def vault(flipt):
        """A VaultDouble seeded as `demo_app.py setup` leaves it, pointing at `flipt`."""
        with VaultDouble(root_token=root_token) as double:
            double.seed_demo(password=password, flipt_host=flipt.url, flipt_token=flipt_token)
            yield double

    @pytest.fixture
    def vault_env(vault):
        """The VAULT_* variables that log in to `vault` as the demo user."""
        return {"VAULT_HOST": vault.url, "VAULT_USER": DEMO_USER, "VAULT_PASS": password}

    return flipt, vault, vault_env


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
