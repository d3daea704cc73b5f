"""rr.ini parsing: durations, sizes, ${VAR}, overrides, unknown keys, the shipped rr.ini."""

from pathlib import Path

import pytest

from minirr import config
from minirr.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = "[server]\napp = myapp:create_app\n"


@pytest.mark.parametrize("text,seconds", [
    ("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("12", 12), ("0", 0), ("1.5s", 1.5),
])
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "-1s", "s", "1 day"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        config.parse_duration(text)


@pytest.mark.parametrize("text,size", [
    ("512KB", 512 * 1024), ("10MB", 10 * 1024 ** 2), ("1GB", 1024 ** 3), ("100", 100), ("7mb", 7 * 1024 ** 2),
])
def test_sizes(text, size):
    assert config.parse_size(text) == size


def test_defaults():
    cfg = config.parse(MINIMAL)
    assert cfg.server.app == "myapp:create_app"
    assert cfg.server.factory is False and cfg.server.interface == "minirr"
    assert cfg.http.address == ("127.0.0.1", 8080)
    assert cfg.http.max_request_size == 10 * 1024 ** 2
    assert cfg.pool.num_workers >= 1 and cfg.pool.max_jobs == 0 and cfg.pool.allocate_timeout == 60
    assert cfg.supervisor.exec_ttl == 0
    assert cfg.status is None and cfg.metrics is None


def test_env_expansion():
    env = {"PORT": "9000", "EMPTY": ""}
    cfg = config.parse(MINIMAL + "[http]\naddress = 127.0.0.1:${PORT}\n"
                       "max_request_size = ${NOPE:-1MB}\nheader_timeout = ${EMPTY:-3s}\n", environ=env)
    assert cfg.http.address == ("127.0.0.1", 9000)
    assert cfg.http.max_request_size == 1024 ** 2
    assert cfg.http.header_timeout == 3


def test_overrides_win_and_add_sections():
    cfg = config.parse(MINIMAL + "[pool]\nnum_workers = 4\n",
                       overrides=["pool.num_workers=2", "status.address=127.0.0.1:0", "server.env.FOO=bar"])
    assert cfg.pool.num_workers == 2
    assert cfg.status.address == ("127.0.0.1", 0)
    assert cfg.server.env == (("FOO", "bar"),)


@pytest.mark.parametrize("text,section,key", [
    (MINIMAL + "[pool]\nnum_wrokers = 2\n", "pool", "num_wrokers"),
    (MINIMAL + "[poll]\nnum_workers = 2\n", "poll", ""),
    (MINIMAL + "[pool]\nnum_workers = two\n", "pool", "num_workers"),
    (MINIMAL + "[http]\nheader_timeout = soon\n", "http", "header_timeout"),
    (MINIMAL + "[http]\nmax_request_size = big\n", "http", "max_request_size"),
    (MINIMAL + "[http]\naddress = nowhere\n", "http", "address"),
    ("[server]\napp = a:b\ninterface = asgi\n", "server", "interface"),
    ("[server]\nfactory = true\n", "server", "app"),
    ("[server]\napp = a:b\ncommand = php w.php\n", "server", "app"),
    (MINIMAL + "[rpc]\nlisten = tcp://10.0.0.1:6001\n", "rpc", "listen"),
    (MINIMAL + "[http]\ntrusted_proxies = 10.0.0.0/8, nonsense\n", "http", "trusted_proxies"),
])
def test_errors_name_section_and_key(text, section, key):
    with pytest.raises(ConfigError) as info:
        config.parse(text)
    assert info.value.section == section and info.value.key == key
    assert f"[{section}]" in str(info.value)


def test_shipped_rr_ini_parses_and_serves_the_demo():
    cfg = config.parse((ROOT / "rr.ini").read_text(), environ={})
    assert cfg.server.app == "demo_app:create_app" and cfg.server.factory is True


def test_shipped_rr_ini_lists_every_key():
    text = (ROOT / "rr.ini").read_text()
    for section, (_, parsers) in config.SCHEMA.items():
        for key in parsers:
            assert f"{key} =" in text, f"rr.ini does not list [{section}] {key}"
