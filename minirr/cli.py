"""The command line: `minirr serve | workers | reset | stop`.

Owns: argument parsing, reading the config file and --dotenv, exit statuses.
Never: runs the event loop itself (server does) or knows wire formats.

Exit statuses (what a supervisor such as systemd can act on):

    0  ok
    1  runtime failure (e.g. no server answers, the address is in use)
    2  bad configuration: rr.ini, -o or --dotenv (one line names the file and line, or
       the section and key, or the -o item)
    3  the app cannot be loaded: `[server] app` does not import, has a syntax error or
       names no such attribute (gunicorn's "worker failed to boot"), or what it names does
       not fit `factory` or `interface` (the line names the key to change); found before
       anything is bound. A factory that fails at run time is not this: it is retried
       with back-off.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import __version__, config as config_module, logs
from .errors import AppLoadError, ConfigError, MinirrError

EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_APP = 3
# The app check before start-up waits at most [pool] allocate_timeout; with that set to
# 0 (no limit) it still must end, so that a hanging import cannot keep minirr from starting.
PREFLIGHT_TIMEOUT_S = 60.0


def load_dotenv(text: str, environ, path: str = "--dotenv") -> None:
    """`KEY=VALUE` lines (optional `export`, quotes, # comments); existing variables win.
    A line that is none of these is a ConfigError naming `path` and the line number: a
    variable silently missing would surface later as a puzzling config value."""
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or len(key.split()) != 1:
            raise ConfigError("", "", f"expected KEY=VALUE, got {line!r}", origin=f"{path}:{lineno}")
        if value[:1] in ("'", '"'):
            value = _unquote(value, f"{path}:{lineno}")
        environ.setdefault(key, value)


def _unquote(value: str, origin: str) -> str:
    """`"two words"` -> `two words`; a # comment may follow the closing quote."""
    quote = value[0]
    end = value.find(quote, 1)
    if end < 0:
        raise ConfigError("", "", f"the {quote} quote is not closed in {value!r}", origin=origin)
    rest = value[end + 1:].strip()
    if rest and not rest.startswith("#"):
        raise ConfigError("", "", f"unexpected {rest!r} after the closing {quote} quote", origin=origin)
    return value[1:end]


class NothingToServe(MinirrError):
    """`minirr serve` with neither an app named nor an rr.ini: the message says how to start."""


DEFAULT_CONFIG = "rr.ini"
NOTHING_TO_SERVE = """no rr.ini here ({folder}) and no app named. Name the app (module:attribute):
    minirr serve myapp:app
or write an rr.ini beside it, the three lines:
    [server]
    app = myapp:app
    interface = wsgi            ; for Flask, Django and other WSGI apps"""


def load_config(path: Optional[str], overrides: List[str], dotenv: Optional[str] = None, app: str = "",
                serving: bool = True) -> config_module.Config:
    """Read --dotenv, then the config file; raises ConfigError / OSError.

    `path` None means ./rr.ini if there is one, else the defaults (the current folder is
    then the config's folder): `minirr serve myapp:app` needs no file, and `minirr reset`
    beside it finds its control socket. Serving from the defaults needs `app`."""
    if dotenv:
        with open(dotenv, encoding="utf-8") as f:
            load_dotenv(f.read(), os.environ, dotenv)
    text = ""
    if path is not None or os.path.exists(DEFAULT_CONFIG):
        path = path or DEFAULT_CONFIG
        with open(path, encoding="utf-8") as f:
            text = f.read()
    elif serving and not app:
        raise NothingToServe(NOTHING_TO_SERVE.format(folder=os.getcwd()))
    base_dir = os.path.dirname(os.path.abspath(path or DEFAULT_CONFIG))
    return config_module.parse(text, path=path or DEFAULT_CONFIG, base_dir=base_dir, overrides=overrides,
                               require_app=serving, app=app)


def _config_or_exit(args, serving: bool = False) -> config_module.Config:
    overrides = list(args.override or [])
    if getattr(args, "reload", False):
        overrides.append("server.reload=true")
    try:
        return load_config(args.config, overrides, getattr(args, "dotenv", None), getattr(args, "app", None) or "",
                           serving)
    except (ConfigError, NothingToServe) as exc:   # names its origin: the file and line, or the -o item
        print(f"minirr: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    except OSError as exc:
        print(f"minirr: {exc.filename or args.config}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)


def make_launcher(config: config_module.Config):
    from .master import command, launch
    if config.server.command:
        return command.CommandLauncher(config)
    return launch.ForkLauncher(config.server.app, config.server.factory, config.server.interface, config.base_dir,
                               config.pool.max_concurrency)


def cmd_serve(args) -> int:
    from .master.server import Server
    config = _config_or_exit(args, serving=True)
    log_writer = logs.configure(config.logs.level, config.logs.format)
    try:
        from .master import static
        static.check_folders(config)    # "[static] dir = staticfiles: /srv/app/staticfiles is not a folder"
        launcher = make_launcher(config)
        # Import the app once, in a short-lived child, before anything is bound: a wrong
        # [server] app then stops minirr with one line, instead of every worker failing
        # its bootstrap while the server says it is listening.
        launcher.preflight(config.pool.allocate_timeout or PREFLIGHT_TIMEOUT_S)
    except AppLoadError as exc:
        print(f"minirr: {config.origin('server', exc.key)}: {exc.msg}", file=sys.stderr)
        return EXIT_APP
    except ConfigError as exc:        # e.g. [server] command names a program that does not exist
        print(f"minirr: {config.origin(exc.section, exc.key)}: {exc.msg}", file=sys.stderr)
        return EXIT_CONFIG
    server = Server(config, launcher, stdout=sys.stdout, log_writer=log_writer)
    try:
        server.bind()                   # "cannot listen on 127.0.0.1:8080 ([http] address): ..."
        server.open_operations()        # e.g. "another minirr is running on PATH"
    except MinirrError as exc:
        print(f"minirr: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    return server.run()


def _control_address(config: config_module.Config):
    from .master import control
    try:
        return control.parse_listen(config.rpc.listen, config.base_dir)
    except MinirrError as exc:
        print(f"minirr: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_RUNTIME)


def cmd_workers(args) -> int:
    from . import remote
    config = _config_or_exit(args)
    return remote.run_workers(_control_address(config), interactive=args.interactive, as_json=args.json)


def cmd_reset(args) -> int:
    from . import remote
    config = _config_or_exit(args)
    return remote.run_reset(_control_address(config), config.pool.reset_timeout)


def cmd_stop(args) -> int:
    from . import remote
    config = _config_or_exit(args)
    # Graceful: the drain may take up to destroy_timeout (0 = no limit). Forced: moments.
    destroy = config.pool.destroy_timeout
    wait_s = 30.0 if args.force else (destroy + 10.0 if destroy else None)
    return remote.run_stop(_control_address(config), args.force, wait_s)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minirr", description="RoadRunner-style application server for Python.")
    parser.add_argument("--version", action="version", version=f"minirr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", default=None,
                       help="config file (default: ./rr.ini, or the defaults when there is none)")
        p.add_argument("-o", "--override", action="append", metavar="SECTION.KEY=VALUE",
                       help="override a config value (repeatable)")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("app", nargs="?", metavar="MODULE:APP",
                       help="the app to serve ([server] app), e.g. mysite.wsgi:application; with no rr.ini, "
                            "the defaults and the current folder first on sys.path")
    common(serve)
    serve.add_argument("--dotenv", metavar="FILE", help="load KEY=VALUE lines into the environment first")
    serve.add_argument("--reload", action="store_true",
                       help="for development: replace the workers when a file of the app changes ([server] reload)")
    serve.set_defaults(func=cmd_serve)

    workers = sub.add_parser("workers", help="show the workers of a running server")
    common(workers)
    workers.add_argument("-i", "--interactive", action="store_true", help="redraw every second until Ctrl-C")
    workers.add_argument("--json", action="store_true", help="print the answer as JSON")
    workers.set_defaults(func=cmd_workers)

    reset = sub.add_parser("reset", help="replace every worker of a running server, one at a time")
    common(reset)
    reset.set_defaults(func=cmd_reset)

    stop = sub.add_parser("stop", help="stop a running server (gracefully, like SIGTERM)")
    common(stop)
    stop.add_argument("-f", "--force", action="store_true", help="stop at once, killing busy workers")
    stop.set_defaults(func=cmd_stop)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)
