"""Loading the application in a worker, and saying in one line why it did not load.

Owns: `module:attr` -> the object it names (`import_app`, which the master's start-up
      check runs too), the factory call and the interface adapter (`load_handler`), and
      the one-line description of a failure: the exception and the app's own file:line.
Never: reads or writes a frame (loop.py does), or sees HTTP.
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
import traceback
from typing import Callable, Optional

from ..wire.messages import Request, Response

AppHandler = Callable[[Request], Response]

# ---- loading the application ------------------------------------------------------------

def load_handler(app: str, factory: bool = False, interface: str = "minirr",
                 base_dir: Optional[str] = None) -> AppHandler:
    """`module:attr` -> a handler(request) -> Response. Runs once per worker: the bootstrap."""
    obj = import_app(app, base_dir)
    if factory:
        obj = obj()
    return _as_handler(obj, interface, app)


def import_app(app: str, base_dir: Optional[str] = None) -> object:
    """`module:attr.path` -> the object it names: imports the module and follows the
    attributes, calls nothing. The master's start-up check runs exactly this part."""
    if base_dir is not None and base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    module_name, _, attr_path = app.partition(":")
    obj = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        obj = getattr(obj, attr)
    return obj


def _as_handler(obj: object, interface: str, app: str) -> AppHandler:
    if interface == "wsgi":
        from .wsgi import WSGIHandler   # only workers that serve WSGI pay for the import
        return WSGIHandler(obj)
    handle = getattr(obj, "handle", None)
    if callable(handle):
        return handle
    if callable(obj):
        return obj
    raise TypeError(f"{app} is not callable and has no handle(request) method")


# ---- saying why it failed ---------------------------------------------------------------

def _folders(*names: str) -> tuple:
    paths = sysconfig.get_paths()
    return tuple(sorted({os.path.join(os.path.realpath(paths[name]), "") for name in names}))


# Frames in these folders are not the application's own code. Installed libraries
# (site-packages) are the app's only when nothing of the app lies outside them.
_STDLIB_DIRS = _folders("stdlib", "platstdlib")
_LIBRARY_DIRS = _folders("purelib", "platlib")
_MINIRR_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "")


def describe_failure(exc: BaseException) -> str:
    """One line: the exception and where in the application it was raised,
    `ConnectionRefusedError: [Errno 111] Connection refused (at demo_app.py:123 in create_app)`.
    A SyntaxError names the file and line that do not parse."""
    headline = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{type(exc).__name__}: {exc.msg} ({short_path(exc.filename)}, line {exc.lineno})"
    where = app_frame(traceback.extract_tb(exc.__traceback__))
    if where is None:
        return headline
    return f"{headline} (at {short_path(where.filename)}:{where.lineno} in {where.name})"


def app_frame(frames: traceback.StackSummary) -> Optional[traceback.FrameSummary]:
    """The innermost frame of the application's own code: not the standard library's or
    minirr's, and not an installed library's unless the app is installed too (nothing
    outside site-packages). None when the failure never reached the app (no such module)."""
    ours = [fs for fs in frames if not _is_minirr_or_stdlib(fs.filename)]
    own = [fs for fs in ours if not os.path.realpath(fs.filename).startswith(_LIBRARY_DIRS)]
    if own:
        return own[-1]
    return ours[-1] if ours else None


def _is_minirr_or_stdlib(filename: str) -> bool:
    if filename.startswith("<"):          # <frozen importlib._bootstrap>, <string>
        return True
    real = os.path.realpath(filename)
    # site-packages may lie inside the standard library's folder (lib/python3.X/site-packages)
    in_stdlib = real.startswith(_STDLIB_DIRS) and not real.startswith(_LIBRARY_DIRS)
    return in_stdlib or real.startswith(_MINIRR_DIR)


def short_path(filename: str) -> str:
    """`/srv/app/shop/views.py` -> `shop/views.py`: the path from the sys.path folder it
    was imported from (as the module is named), else the path as it is."""
    real = os.path.realpath(filename)
    best = filename
    for folder in sys.path:
        folder = os.path.join(os.path.realpath(folder or os.getcwd()), "")
        if real.startswith(folder) and len(real) - len(folder) < len(best):
            best = real[len(folder):]
    return best
