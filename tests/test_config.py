"""rr.ini parsing: durations, sizes, ${VAR}, overrides, unknown keys, the shipped rr.ini."""

import os
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
    assert cfg.server.factory is False and cfg.server.interface == "auto"
    assert cfg.pool.max_concurrency == 1000
    assert cfg.http.address == ("127.0.0.1", 8080)
    assert cfg.http.max_request_size == 10 * 1024 ** 2
    assert cfg.pool.num_workers >= 1 and cfg.pool.max_jobs == 0 and cfg.pool.allocate_timeout == 60
    assert cfg.supervisor.exec_ttl == 0
    assert cfg.status is None and cfg.metrics is None


@pytest.mark.parametrize("interface", ["auto", "asgi", "wsgi", "minirr", "ASGI "])
def test_each_interface_is_a_value(interface):
    assert config.parse(MINIMAL + f"interface = {interface}\n").server.interface == interface.strip().lower()


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
    ("[server]\napp = a:b\ninterface = rsgi\n", "server", "interface"),
    (MINIMAL + "[pool]\nmax_concurrency = 0\n", "pool", "max_concurrency"),
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


# ---- every message points at where the value was written --------------------------------

def error_of(text, overrides=(), environ=None, path="rr.ini"):
    with pytest.raises(ConfigError) as info:
        config.parse(text, path=path, overrides=overrides, environ={} if environ is None else environ)
    return str(info.value)


def test_a_bad_value_from_the_file_names_the_file_section_and_key():
    assert error_of(MINIMAL + "[pool]\nmax_jobs = lots\n", path="/srv/shop/rr.ini") == (
        "/srv/shop/rr.ini [pool] max_jobs = lots: expected a whole number >= 0, got 'lots'")


@pytest.mark.parametrize("override,message", [
    ("pool.num_wokers=3", "-o pool.num_wokers=3: unknown key; did you mean num_workers? (known: num_workers, "),
    ("pool.num_workers=-1", "-o pool.num_workers=-1: expected a whole number >= 1, got '-1'"),
    ("poll.num_workers=3", "-o poll.num_workers=3: unknown section; did you mean pool? (known: "),
    ("num_workers=3", "-o num_workers=3: expected SECTION.KEY=VALUE"),
    ("http.address=${NO_SUCH_VAR_MINIRR}", "-o http.address=${NO_SUCH_VAR_MINIRR}: environment variable "
                                           "NO_SUCH_VAR_MINIRR is not set"),
])
def test_a_bad_value_from_the_command_line_names_the_override_not_the_file(override, message):
    text = MINIMAL + "[pool]\nnum_workers = 2\n"
    assert error_of(text, overrides=[override]).startswith(message)


def test_an_override_of_a_good_file_value_is_blamed_on_the_override():
    assert error_of(MINIMAL + "[logs]\nlevel = info\n", overrides=["logs.level=loud"]).startswith(
        "-o logs.level=loud: expected one of debug, info, warning, error")


@pytest.mark.parametrize("text,message", [
    (MINIMAL + "garbage here\n", "rr.ini:3: expected [section], key = value or a ; comment, got 'garbage here'"),
    ("app = a:b\n[server]\n", "rr.ini:1: expected a [section] header before any key, got 'app = a:b'"),
    ("[server\napp = a:b\n", "rr.ini:1: expected a [section] header before any key, got '[server'"),
    (MINIMAL + "[pool]\nmax_jobs = 1\n\nmax_jobs = 2\n", "rr.ini:6: [pool] max_jobs is set twice"),
    (MINIMAL + "[pool]\n[server]\n", "rr.ini:4: section [server] appears twice"),
])
def test_an_ini_syntax_error_is_one_line_with_the_file_and_line_number(text, message):
    assert error_of(text) == message


def test_an_unset_variable_is_named_not_reported_as_an_empty_value():
    message = error_of(MINIMAL + "[http]\naddress = ${MINIRR_UNSET_ADDRESS}\n")
    assert message == ("rr.ini [http] address = ${MINIRR_UNSET_ADDRESS}: environment variable "
                       "MINIRR_UNSET_ADDRESS is not set (${MINIRR_UNSET_ADDRESS:-VALUE} gives a default)")
    message = error_of(MINIMAL + "[http]\naddress = 127.0.0.1:${MINIRR_UNSET_PORT}\n")
    assert "MINIRR_UNSET_PORT is not set" in message


def test_set_empty_and_defaulted_variables_are_not_errors():
    cfg = config.parse(MINIMAL + "[http]\naddress = ${EMPTY}\nheader_timeout = ${UNSET:-3s}\n"
                       "trusted_proxies = ${UNSET:-}\n[server.env]\nPASSED_ON = ${UNSET}\n",
                       environ={"EMPTY": ""})
    assert cfg.http.address == ("127.0.0.1", 8080) and cfg.http.header_timeout == 3
    assert cfg.server.env == (("PASSED_ON", ""),)     # [server.env] hands the environment on


@pytest.mark.parametrize("value", ["-1", "0", "two", "1.5"])
def test_num_workers_has_one_message_for_every_refused_value(value):
    assert error_of(MINIMAL + f"[pool]\nnum_workers = {value}\n") == (
        f"rr.ini [pool] num_workers = {value}: expected a whole number >= 1, got {value!r}")


@pytest.mark.parametrize("key", ["max_connections", "limit_request_line", "limit_request_fields",
                                 "limit_request_field_size"])
def test_counts_that_would_refuse_every_request_must_be_at_least_1(key):
    assert error_of(MINIMAL + f"[http]\n{key} = 0\n").endswith("expected a whole number >= 1, got '0'")


def test_an_empty_value_means_the_documented_default_for_every_key():
    every_section = MINIMAL + "[status]\n[metrics]\n[static]\ndir = public\n"
    defaults = config.parse(every_section, environ={})
    required = {"server": {"app"}, "static": {"dir"}}

    def section_of(cfg, section):
        return cfg.static[0] if section == "static" else getattr(cfg, section)
    for section, (_, parsers) in config.SCHEMA.items():
        for key in set(parsers) - required.get(section, set()):
            cfg = config.parse(every_section, overrides=[f"{section}.{key}="], environ={})
            assert getattr(section_of(cfg, section), key) == getattr(section_of(defaults, section), key), (section, key)
    cpus = os.cpu_count() or 1
    assert config.parse(MINIMAL + "[pool]\nnum_workers =\n", environ={}).pool.num_workers == cpus
    assert config.parse(MINIMAL + "[pool]\nnum_workers = 2\n", overrides=["pool.num_workers="],
                        environ={}).pool.num_workers == cpus


def test_status_and_metrics_have_their_documented_default_ports():
    cfg = config.parse(MINIMAL + "[status]\n[metrics]\n", environ={})
    assert cfg.status.address == ("127.0.0.1", 2114) and cfg.metrics.address == ("127.0.0.1", 2112)


def test_booleans_name_every_spelling_they_accept():
    for word in ("yes", "on", "1", "true", "TRUE"):
        assert config.parse(MINIMAL + f"factory = {word}\n", environ={}).server.factory is True
    assert error_of(MINIMAL + "factory = maybe\n").endswith(
        "expected true/false, yes/no, on/off or 1/0, got 'maybe'")


def test_both_app_and_command_names_both_origins():
    message = error_of(MINIMAL, overrides=["server.command=php w.php"])
    assert message == ("rr.ini [server] app = myapp:create_app: command is set too "
                       "(-o server.command=php w.php); set only one of them")


def test_config_remembers_where_each_value_came_from():
    cfg = config.parse(MINIMAL + "[pool]\nnum_workers = 2\n", path="conf/rr.ini", environ={},
                       overrides=["pool.num_workers=3"])
    assert cfg.origin("server", "app") == "conf/rr.ini [server] app = myapp:create_app"
    assert cfg.origin("pool", "num_workers") == "-o pool.num_workers=3"
    assert cfg.origin("http", "address") == "conf/rr.ini [http] address"


def test_shipped_rr_ini_says_where_it_differs_from_the_defaults():
    """Its header says every key is at its default unless the comment above says `default:`."""
    lines = (ROOT / "rr.ini").read_text().splitlines()
    defaults = config.parse(MINIMAL, environ={})
    section = ""
    for number, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith(";") and not line.startswith("app ="):
            key = line.partition("=")[0].strip()
            shipped = config.parse(MINIMAL, overrides=[f"{section}.{line.replace(' = ', '=', 1)}"], environ={})
            if getattr(getattr(shipped, section), key) != getattr(getattr(defaults, section), key):
                assert "default:" in lines[number - 1], f"rr.ini [{section}] {line!r} is not the default"


# ---- [static] mounts and [server] reload ----------------------------------------------------------

def test_static_mounts_longest_url_first_with_their_defaults():
    cfg = config.parse(MINIMAL + "[static]\ndir = staticfiles\n[static.media]\nurl = /media\ndir = uploads\n"
                       "cache_control = public, max-age=60\n[static.admin]\nurl = /static/admin/\ndir = admin\n",
                       environ={})
    assert [(m.section, m.url, m.dir, m.cache_control) for m in cfg.static] == [
        ("static.admin", "/static/admin/", "admin", "no-cache"),
        ("static", "/static/", "staticfiles", "no-cache"),
        ("static.media", "/media/", "uploads", "public, max-age=60")]
    assert config.parse(MINIMAL, environ={}).static == ()


@pytest.mark.parametrize("text, message", [
    ("[static]\nurl = /s/\n", "rr.ini [static]: set dir, the folder whose files are served under url (/s/)"),
    ("[static]\ndir = a\n[static.b]\nurl = /static\ndir = b\n",
     "rr.ini [static.b] url = /static: [static] serves /static/ already"),
    ("[static]\nurl = static/\ndir = a\n", "rr.ini [static] url = static/: expected a URL path such as /static/"),
    ("[static]\nurl = /a/../b/\ndir = a\n", "rr.ini [static] url = /a/../b/: expected a URL path such as /static/"),
    ("[static]\nurl = /a%20b/\ndir = a\n", "rr.ini [static] url = /a%20b/: expected a URL path such as /static/"),
    ("[static]\ndir = a\ncache_control = caf\u00e9\n", "rr.ini [static] cache_control = caf\u00e9: expected a header value"),
    ("[statics]\ndir = a\n", "rr.ini [statics]: unknown section; did you mean static?"),
    ("[static.media]\ndir = a\nroot = b\n", "rr.ini [static.media] root = b: unknown key"),
])
def test_static_mistakes_name_where_they_were_written(text, message):
    assert error_of(MINIMAL + text).startswith(message), error_of(MINIMAL + text)


def test_reload_and_its_paths():
    cfg = config.parse(MINIMAL + "reload = yes\nreload_paths = templates, settings.yaml ,\n", environ={})
    assert cfg.server.reload is True and cfg.server.reload_paths == ("templates", "settings.yaml")
    assert config.parse(MINIMAL, environ={}).server.reload is False


def test_an_app_from_the_command_line_sets_server_app_and_is_named_as_typed():
    cfg = config.parse("", app="hello:app", environ={})
    assert cfg.server.app == "hello:app" and cfg.origin("server", "app") == "minirr serve hello:app"
    cfg = config.parse(MINIMAL, app="other:app", environ={})
    assert cfg.server.app == "other:app"
    assert config.parse("", require_app=False, environ={}).rpc.listen == "unix:minirr.sock"
    with pytest.raises(ConfigError, match="set app"):
        config.parse("", environ={})
