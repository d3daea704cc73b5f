"""rr.ini text -> a frozen Config: defaults, parsing of durations and sizes, ${ENV}.

Owns: the list of every section and key minirr knows, their defaults and parsers.
Never: reads files or sockets (the cli reads the file and hands the text in),
       starts anything, or is consulted by re-reading strings later — the rest of
       minirr only ever sees the frozen dataclasses below.

    text ──configparser──> {section: {key: raw}}
         ──${VAR} expansion──> ──-o overrides──> ──parse each key──> Config (frozen)

Anything unknown or unparsable raises ConfigError(section, key, msg); the cli prints it
as one line naming the file, section and key, and exits with status 2.
"""

from __future__ import annotations

import configparser
import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError

# ---- value parsers: str -> value, ValueError with a readable message on failure ----

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(b|kb|mb|gb)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3, None: 1}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(text: str) -> float:
    """`500ms`, `30s`, `5m`, `1h` or bare seconds -> seconds (float). `0` disables a limit."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"expected a duration like 500ms, 30s, 5m, 1h or seconds, got {text!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(text: str) -> int:
    """`512KB`, `10MB`, `1GB` or bytes -> bytes (powers of 1024, as RoadRunner counts)."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"expected a size like 512KB, 10MB, 1GB or bytes, got {text!r}")
    unit = m.group(2).lower() if m.group(2) else None
    return int(m.group(1)) * _SIZE_UNITS[unit]


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def parse_int(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise ValueError(f"expected a number >= 0, got {value}")
    return value


def parse_address(text: str) -> Tuple[str, int]:
    """`host:port` -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def parse_networks(text: str) -> Tuple[object, ...]:
    """`10.0.0.1, 192.168.0.0/16` -> tuple of ipaddress networks."""
    nets = []
    for item in text.split(","):
        item = item.strip()
        if item:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
    return tuple(nets)


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return value
    return parse


def parse_app(text: str) -> str:
    module, sep, attr = text.strip().partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"expected module:attribute, got {text!r}")
    return text.strip()


def parse_command(text: str) -> Tuple[str, ...]:
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"cannot split {text!r}: {exc}") from None
    return argv


def parse_listen(text: str) -> str:
    """`unix:PATH` or `tcp://127.0.0.1:PORT` (loopback only)."""
    text = text.strip()
    if text.startswith("unix:") and len(text) > 5:
        return text
    if text.startswith("tcp://"):
        host, port = parse_address(text[6:])
        if not ipaddress.ip_address(host if host != "localhost" else "127.0.0.1").is_loopback:
            raise ValueError(f"the control socket listens on loopback only, not {host}")
        return text
    raise ValueError(f"expected unix:PATH or tcp://127.0.0.1:PORT, got {text!r}")


def _cpu_count() -> int:
    return os.cpu_count() or 1


# ---- the frozen configuration ----------------------------------------------------------

@dataclass(frozen=True)
class ServerConfig:
    app: str = ""                      # module:attribute imported in each worker
    factory: bool = False              # call the attribute once per worker to get the handler
    interface: str = "minirr"          # minirr | wsgi
    command: Tuple[str, ...] = ()      # external worker program (instead of app)
    env: Tuple[Tuple[str, str], ...] = ()   # [server.env] for external workers


@dataclass(frozen=True)
class HTTPConfig:
    address: Tuple[str, int] = ("127.0.0.1", 8080)
    max_request_size: int = 10 * 1024 ** 2
    limit_request_line: int = 8190
    limit_request_fields: int = 100
    limit_request_field_size: int = 8190
    limit_request_headers: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    min_body_rate: int = 4 * 1024        # bytes/s a request body must average once older than body_timeout
    min_send_rate: int = 4 * 1024        # bytes/s a client must take an answer at, once older than body_timeout
    max_connections: int = 1000
    trusted_proxies: Tuple[object, ...] = ()


@dataclass(frozen=True)
class PoolConfig:
    num_workers: int = field(default_factory=_cpu_count)
    max_jobs: int = 0
    max_queue_size: int = 0
    allocate_timeout: float = 60.0
    destroy_timeout: float = 60.0
    reset_timeout: float = 60.0
    max_frame_size: int = 256 * 1024 ** 2   # a larger response frame from a worker breaks its channel


@dataclass(frozen=True)
class SupervisorConfig:
    exec_ttl: float = 0.0
    watch_tick: float = 1.0
    ttl: float = 0.0
    idle_ttl: float = 0.0
    max_worker_memory: int = 0          # MB of RSS; 0 = no limit


@dataclass(frozen=True)
class RPCConfig:
    listen: str = "unix:minirr.sock"


@dataclass(frozen=True)
class EndpointConfig:
    address: Tuple[str, int] = ("127.0.0.1", 2114)


@dataclass(frozen=True)
class LogsConfig:
    level: str = "info"
    format: str = "text"
    access_log: bool = True


@dataclass(frozen=True)
class Config:
    path: str = "rr.ini"               # the file it came from, for messages
    base_dir: str = "."                # its folder: app imports and relative paths start here
    server: ServerConfig = ServerConfig()
    http: HTTPConfig = HTTPConfig()
    pool: PoolConfig = field(default_factory=PoolConfig)
    supervisor: SupervisorConfig = SupervisorConfig()
    rpc: RPCConfig = RPCConfig()
    status: Optional[EndpointConfig] = None     # off unless [status] is present
    metrics: Optional[EndpointConfig] = None    # off unless [metrics] is present
    logs: LogsConfig = LogsConfig()


# section -> (dataclass, {key: parser}); one table, so docs and validation agree.
SCHEMA: Dict[str, Tuple[type, Dict[str, Callable[[str], object]]]] = {
    "server": (ServerConfig, {
        "app": parse_app, "factory": parse_bool,
        "interface": parse_choice("minirr", "wsgi"), "command": parse_command,
    }),
    "http": (HTTPConfig, {
        "address": parse_address, "max_request_size": parse_size,
        "limit_request_line": parse_int, "limit_request_fields": parse_int,
        "limit_request_field_size": parse_int, "limit_request_headers": parse_size,
        "header_timeout": parse_duration, "body_timeout": parse_duration,
        "keepalive_timeout": parse_duration, "min_body_rate": parse_size, "min_send_rate": parse_size,
        "max_connections": parse_int,
        "trusted_proxies": parse_networks,
    }),
    "pool": (PoolConfig, {
        "num_workers": parse_int, "max_jobs": parse_int, "max_queue_size": parse_int,
        "allocate_timeout": parse_duration, "destroy_timeout": parse_duration,
        "reset_timeout": parse_duration, "max_frame_size": parse_size,
    }),
    "supervisor": (SupervisorConfig, {
        "exec_ttl": parse_duration, "watch_tick": parse_duration, "ttl": parse_duration,
        "idle_ttl": parse_duration, "max_worker_memory": parse_int,
    }),
    "rpc": (RPCConfig, {"listen": parse_listen}),
    "status": (EndpointConfig, {"address": parse_address}),
    "metrics": (EndpointConfig, {"address": parse_address}),
    "logs": (LogsConfig, {
        "level": parse_choice("debug", "info", "warning", "error"),
        "format": parse_choice("text", "json"), "access_log": parse_bool,
    }),
}
FREE_SECTIONS = {"server.env"}          # any key allowed: environment for external workers


def expand_env(value: str, environ: Mapping[str, str]) -> str:
    """Replace `${VAR}` and `${VAR:-default}` (the default when VAR is unset or empty)."""
    def substitute(m: "re.Match[str]") -> str:
        found = environ.get(m.group(1), "")
        return found if found or m.group(2) is None else m.group(2)
    return _ENV_RE.sub(substitute, value)


def _read_ini(text: str, path: str) -> Dict[str, Dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"),
                                       default_section="\x00unused")
    parser.optionxform = str   # keep key case: [server.env] names are environment variables
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise ConfigError("", "", str(exc).splitlines()[0]) from None
    return {name: dict(parser[name]) for name in parser.sections()}


def _apply_overrides(raw: Dict[str, Dict[str, str]], overrides: Sequence[str]) -> None:
    """`-o section.key=value` (RoadRunner's -o). The key is after the last dot."""
    for item in overrides:
        dotted, sep, value = item.partition("=")
        section, dot, key = dotted.strip().rpartition(".")
        if not sep or not dot or not section or not key:
            raise ConfigError("-o", item, "expected SECTION.KEY=VALUE")
        raw.setdefault(section, {})[key] = value


def parse(text: str, path: str = "rr.ini", base_dir: str = ".", overrides: Sequence[str] = (),
          environ: Optional[Mapping[str, str]] = None) -> Config:
    """Parse rr.ini `text` into a Config. Raises ConfigError naming section and key."""
    environ = os.environ if environ is None else environ
    raw = _read_ini(text, path)
    _apply_overrides(raw, overrides)
    built: Dict[str, object] = {}
    for section, values in raw.items():
        values = {key: expand_env(value, environ) for key, value in values.items()}
        if section in FREE_SECTIONS:
            continue
        if section not in SCHEMA:
            raise ConfigError(section, "", f"unknown section (known: {', '.join(sorted(SCHEMA) + sorted(FREE_SECTIONS))})")
        cls, parsers = SCHEMA[section]
        kwargs = {}
        for key, value in values.items():
            if key not in parsers:
                raise ConfigError(section, key, f"unknown key (known: {', '.join(parsers)})")
            try:
                kwargs[key] = parsers[key](value)
            except ValueError as exc:
                raise ConfigError(section, key, str(exc)) from None
        built[section] = cls(**kwargs)
    env = tuple((k, expand_env(v, environ)) for k, v in raw.get("server.env", {}).items())
    server = built.get("server", ServerConfig())
    server = ServerConfig(server.app, server.factory, server.interface, server.command, env)
    _validate(server, built)
    built["server"] = server
    return Config(path=path, base_dir=base_dir, **built)


def _validate(server: ServerConfig, built: Dict[str, object]) -> None:
    if bool(server.app) == bool(server.command):
        raise ConfigError("server", "app", "set exactly one of app and command")
    pool = built.get("pool")
    if pool is not None and pool.num_workers < 1:
        raise ConfigError("pool", "num_workers", "must be at least 1")
