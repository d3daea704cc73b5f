"""rr.ini text -> a frozen Config: defaults, parsing of durations and sizes, ${ENV}.

Owns: the list of every section and key minirr knows, their defaults and parsers.
Never: reads files or sockets (the cli reads the file and hands the text in),
       starts anything, or is consulted by re-reading strings later — the rest of
       minirr only ever sees the frozen dataclasses below.

    text ──configparser──> {section: {key: raw}} ──-o overrides──>
         ──${VAR} expansion──> ──parse each key──> Config (frozen)

Every raw value remembers where it was written (`rr.ini [pool] num_workers = -1` or
`-o pool.num_workers=-1`). Anything unknown or unparsable raises ConfigError naming that
origin; the cli prints it as one line and exits with status 2. An empty value means the
key's default, and a `${VAR}` that is not set is an error naming VAR (an unset variable
must not quietly turn into an empty value, which would mean the default); only
`[server.env]`, which hands the environment on to workers, passes it on empty.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

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


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected true/false, yes/no, on/off or 1/0, got {text!r}")


def parse_whole_number(minimum: int) -> Callable[[str], int]:
    """A parser of whole numbers >= `minimum`; one message for every value it refuses."""
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise ValueError(f"expected a whole number >= {minimum}, got {text.strip()!r}")
        return value
    return parse


parse_int = parse_whole_number(0)     # limits where 0 means "none"
parse_count = parse_whole_number(1)   # things there must be at least one of (0 would serve nothing)


def parse_count_size(text: str) -> int:
    """A size that must be at least one byte."""
    value = parse_size(text)
    if value < 1:
        raise ValueError(f"expected a size of at least 1 byte, got {text.strip()!r}")
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


def parse_paths(text: str) -> Tuple[str, ...]:
    """`templates, config/*.yaml`? No globs: `templates, settings.yaml` -> ("templates", "settings.yaml")."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_url_prefix(text: str) -> str:
    """`/static/` or `/static` -> `/static/`: a path that starts a request's path, ending in `/`
    (so `/static` does not also take `/staticky`)."""
    prefix = text.strip()
    if not prefix.startswith("/") or any(c in prefix for c in "?#%\\ \t") or "/." in prefix:
        raise ValueError(f"expected a URL path such as /static/ (no ?, #, %, spaces or dot segments), got {text!r}")
    return prefix.rstrip("/") + "/"


def parse_header_value(text: str) -> str:
    value = text.strip()
    if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7f for c in value) or not value.isascii():
        raise ValueError(f"expected a header value (printable ASCII), got {text!r}")
    return value


def _cpu_count() -> int:
    return os.cpu_count() or 1


# ---- the frozen configuration ----------------------------------------------------------

@dataclass(frozen=True)
class ServerConfig:
    app: str = ""                      # module:attribute imported in each worker
    factory: bool = False              # call the attribute once per worker to get the handler
    interface: str = "auto"            # auto (told from the app's signature) | asgi | wsgi | minirr
    command: Tuple[str, ...] = ()      # external worker program (instead of app)
    env: Tuple[Tuple[str, str], ...] = ()   # [server.env] for external workers
    reload: bool = False               # development: replace the workers when the app's files change
    reload_paths: Tuple[str, ...] = ()  # more files or folders to watch (relative to the config's folder)


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
    max_concurrency: int = 1000         # requests one ASGI worker holds at once (sync workers: one)


@dataclass(frozen=True)
class WebSocketConfig:
    max_message_size: int = 1024 ** 2   # a client's message beyond it closes 1009
    ping_interval: float = 20.0         # silence from a peer before the server pings it; 0 = never
    ping_timeout: float = 20.0          # the pong (and the answer to a close) must come within it


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
    address: Tuple[str, int] = ("127.0.0.1", 2114)      # [status]


@dataclass(frozen=True)
class MetricsConfig(EndpointConfig):
    address: Tuple[str, int] = ("127.0.0.1", 2112)      # [metrics]: its own default port


@dataclass(frozen=True)
class LogsConfig:
    level: str = "info"
    format: str = "text"
    access_log: bool = True
    trace_frames: bool = False          # log every frame between master and workers, and each worker's moves


@dataclass(frozen=True)
class StaticConfig:
    """One mount: `[static]`, or `[static.NAME]` for another (media, docs)."""
    url: str = "/static/"              # the request paths under it are files of `dir`
    dir: str = ""                      # required; relative paths start at the config's folder
    cache_control: str = "no-cache"    # sent with every file: revalidate (a 304) before reuse
    section: str = "static"            # where it was written, for messages


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
    websocket: WebSocketConfig = WebSocketConfig()
    static: Tuple[StaticConfig, ...] = ()   # [static] and [static.NAME] mounts, longest url first
    # (section, key) -> where its value was written, for messages (see origin())
    origins: Mapping[Tuple[str, str], str] = field(default_factory=dict, compare=False, repr=False)

    def origin(self, section: str, key: str) -> str:
        """Where `[section] key` was set, as a message names it: `rr.ini [server] app =
        x:y` or `-o server.app=x:y`; a key set nowhere is named `rr.ini [server] app`."""
        return self.origins.get((section, key)) or f"{self.path} [{section}] {key}"


# section -> (dataclass, {key: parser}); one table, so docs and validation agree.
SCHEMA: Dict[str, Tuple[type, Dict[str, Callable[[str], object]]]] = {
    "server": (ServerConfig, {
        "app": parse_app, "factory": parse_bool,
        "interface": parse_choice("auto", "asgi", "wsgi", "minirr"), "command": parse_command,
        "reload": parse_bool, "reload_paths": parse_paths,
    }),
    "http": (HTTPConfig, {
        "address": parse_address, "max_request_size": parse_size,
        "limit_request_line": parse_count, "limit_request_fields": parse_count,
        "limit_request_field_size": parse_count, "limit_request_headers": parse_size,
        "header_timeout": parse_duration, "body_timeout": parse_duration,
        "keepalive_timeout": parse_duration, "min_body_rate": parse_size, "min_send_rate": parse_size,
        "max_connections": parse_count,
        "trusted_proxies": parse_networks,
    }),
    "pool": (PoolConfig, {
        "num_workers": parse_count, "max_jobs": parse_int, "max_queue_size": parse_int,
        "allocate_timeout": parse_duration, "destroy_timeout": parse_duration,
        "reset_timeout": parse_duration, "max_frame_size": parse_size, "max_concurrency": parse_count,
    }),
    "supervisor": (SupervisorConfig, {
        "exec_ttl": parse_duration, "watch_tick": parse_duration, "ttl": parse_duration,
        "idle_ttl": parse_duration, "max_worker_memory": parse_int,
    }),
    "rpc": (RPCConfig, {"listen": parse_listen}),
    "websocket": (WebSocketConfig, {"max_message_size": parse_count_size, "ping_interval": parse_duration,
                                    "ping_timeout": parse_duration}),
    "status": (EndpointConfig, {"address": parse_address}),
    "metrics": (MetricsConfig, {"address": parse_address}),
    "logs": (LogsConfig, {
        "level": parse_choice("debug", "info", "warning", "error"),
        "format": parse_choice("text", "json"), "access_log": parse_bool, "trace_frames": parse_bool,
    }),
    "static": (StaticConfig, {"url": parse_url_prefix, "dir": str.strip, "cache_control": parse_header_value}),
}
FREE_SECTIONS = {"server.env"}          # any key allowed: environment for external workers
# [static.media], [static.docs]: more mounts, with the keys of [static]
REPEATED_SECTIONS = {"static"}


def expand_env(value: str, environ: Mapping[str, str]) -> str:
    """Replace `${VAR}` and `${VAR:-default}` (the default when VAR is unset or empty)."""
    def substitute(m: "re.Match[str]") -> str:
        found = environ.get(m.group(1), "")
        return found if found or m.group(2) is None else m.group(2)
    return _ENV_RE.sub(substitute, value)


def unset_variables(value: str, environ: Mapping[str, str]) -> List[str]:
    """The `${VAR}`s in `value` that have no `:-default` and are not in `environ`."""
    return [m.group(1) for m in _ENV_RE.finditer(value) if m.group(2) is None and m.group(1) not in environ]


# ---- reading the text --------------------------------------------------------------------

def _read_ini(text: str, path: str) -> Dict[str, Dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"),
                                       default_section="\x00unused")
    parser.optionxform = str   # keep key case: [server.env] names are environment variables
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise _syntax_error(exc, text, path) from None
    return {name: dict(parser[name]) for name in parser.sections()}


def _syntax_error(exc: configparser.Error, text: str, path: str) -> ConfigError:
    """One line with the file, the line number and what is wrong. configparser's own
    messages span lines and name the file themselves; the line is read from `text`
    because configparser quotes it differently from one Python version to the next."""
    if isinstance(exc, configparser.DuplicateOptionError):
        lineno, what = exc.lineno, f"[{exc.section}] {exc.option} is set twice"
    elif isinstance(exc, configparser.DuplicateSectionError):
        lineno, what = exc.lineno, f"section [{exc.section}] appears twice"
    elif isinstance(exc, configparser.MissingSectionHeaderError):
        lineno = exc.lineno
        what = f"expected a [section] header before any key, got {_line(text, lineno)!r}"
    elif isinstance(exc, configparser.ParsingError) and exc.errors:
        lineno = exc.errors[0][0]
        what = f"expected [section], key = value or a ; comment, got {_line(text, lineno)!r}"
    else:
        return ConfigError("", "", str(exc).replace("\n", " "), origin=path)
    return ConfigError("", "", what, origin=f"{path}:{lineno}")


def _line(text: str, lineno: int) -> str:
    lines = text.splitlines()
    return lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""


def _apply_overrides(raw: Dict[str, Dict[str, str]], overrides: Sequence[str],
                     origins: Dict[Tuple[str, str], str], section_origins: Dict[str, str]) -> None:
    """`-o section.key=value` (RoadRunner's -o). The key is after the last dot."""
    for item in overrides:
        dotted, sep, value = item.partition("=")
        section, dot, key = dotted.strip().rpartition(".")
        if not sep or not dot or not section or not key:
            raise ConfigError("", "", "expected SECTION.KEY=VALUE", origin=f"-o {item}")
        raw.setdefault(section, {})[key] = value
        origins[(section, key)] = f"-o {item}"
        section_origins.setdefault(section, f"-o {item}")


# ---- parsing the values ------------------------------------------------------------------

def parse(text: str, path: str = "rr.ini", base_dir: str = ".", overrides: Sequence[str] = (),
          environ: Optional[Mapping[str, str]] = None, require_app: bool = True,
          app: str = "") -> Config:
    """Parse rr.ini `text` into a Config. Raises ConfigError naming where the bad value was
    written. `require_app`: false for the commands that talk to a running server (they
    need its control socket, not its app). `app`: `minirr serve APP`, which sets
    `[server] app` over the file's (and is named as typed in messages)."""
    environ = os.environ if environ is None else environ
    raw = _read_ini(text, path)
    origins = {(section, key): f"{path} [{section}] {key} = {value}"
               for section, values in raw.items() for key, value in values.items()}
    section_origins = {section: f"{path} [{section}]" for section in raw}
    if app:
        raw.setdefault("server", {})["app"] = app
        origins[("server", "app")] = f"minirr serve {app}"
        section_origins.setdefault("server", f"minirr serve {app}")
    _apply_overrides(raw, overrides, origins, section_origins)
    built: Dict[str, object] = {}
    for section, values in raw.items():
        if section in FREE_SECTIONS:
            continue
        kind = _section_kind(section)
        if kind not in SCHEMA:
            known = sorted(SCHEMA) + sorted(FREE_SECTIONS)
            raise ConfigError(section, "", _unknown("section", section, known),
                              origin=section_origins[section])
        cls, parsers = SCHEMA[kind]
        kwargs = {}
        for key, value in values.items():
            origin = origins[(section, key)]
            if key not in parsers:
                raise ConfigError(section, key, _unknown("key", key, list(parsers)), origin=origin)
            text_value = _expand(section, key, value, environ, origin)
            if not text_value.strip():
                continue                 # an empty value asks for the default
            try:
                kwargs[key] = parsers[key](text_value)
            except ValueError as exc:
                raise ConfigError(section, key, str(exc), origin=origin) from None
        if kind in REPEATED_SECTIONS:
            kwargs["section"] = section
        built[section] = cls(**kwargs)
    # [server.env] hands the environment on: there an unset ${VAR} is simply empty.
    env = tuple((k, expand_env(v, environ)) for k, v in raw.get("server.env", {}).items())
    server = dataclasses.replace(built.get("server", ServerConfig()), env=env)
    if require_app:
        _validate(server, origins, path)
    built["server"] = server
    mounts = tuple(built.pop(name) for name in list(built) if _section_kind(name) == "static")
    return Config(path=path, base_dir=base_dir, origins=origins, static=_check_mounts(mounts, origins, path),
                  **built)


def _section_kind(section: str) -> str:
    """`static.media` -> `static` (a repeated section); any other name is its own kind."""
    kind, dot, name = section.partition(".")
    return kind if dot and name and kind in REPEATED_SECTIONS else section


def _check_mounts(mounts: Sequence[StaticConfig], origins: Mapping[Tuple[str, str], str],
                  path: str) -> Tuple[StaticConfig, ...]:
    """Each mount names its folder, and no two share a url. Longest url first: a request
    goes to the most specific mount (`/static/admin/` before `/static/`)."""
    seen: Dict[str, StaticConfig] = {}
    for mount in mounts:
        if not mount.dir:
            raise ConfigError(mount.section, "dir", "set dir, the folder whose files are served under url "
                                                    f"({mount.url})", origin=f"{path} [{mount.section}]")
        other = seen.get(mount.url)
        if other is not None:
            raise ConfigError(mount.section, "url", f"[{other.section}] serves {mount.url} already",
                              origin=origins.get((mount.section, "url")) or f"{path} [{mount.section}]")
        seen[mount.url] = mount
    return tuple(sorted(mounts, key=lambda m: len(m.url), reverse=True))


def _expand(section: str, key: str, value: str, environ: Mapping[str, str], origin: str) -> str:
    unset = unset_variables(value, environ)
    if unset:
        name = unset[0]
        raise ConfigError(section, key, f"environment variable {name} is not set "
                                        f"(${{{name}:-VALUE}} gives a default)", origin=origin)
    return expand_env(value, environ)


def _unknown(what: str, name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown {what}{hint} (known: {', '.join(known)})"


def _validate(server: ServerConfig, origins: Mapping[Tuple[str, str], str], path: str) -> None:
    if server.app and server.command:
        also = origins[("server", "command")]
        raise ConfigError("server", "app", f"command is set too ({also}); set only one of them",
                          origin=origins[("server", "app")])
    if not server.app and not server.command:
        raise ConfigError("server", "app", "set app (module:attribute) or command (an external worker)",
                          origin=f"{path} [server]")
