"""Loading the application in a worker, telling which interface it speaks, and saying in
one line why it did not load.

Owns: `module:attr` -> the object it names (`import_app`, which the master's start-up
      check runs too), the factory call, which interface an object speaks (`identify`:
      ASGI, WSGI or minirr's own, from its signature) and the wiring mistakes that shape
      gives away (`check_app`, the start-up check's), the interface adapter
      (`load_handler`), and the one-line description of a failure: the exception and the
      app's own file:line.
Never: reads or writes a frame (loop.py and asyncloop.py do), calls the app, or sees HTTP.

How an object is told apart (`[server] interface = auto`, the default), by what it takes:

    async def app(scope, receive, send), or an object whose __call__ is one    -> asgi
    def app(environ, start_response), or such an object (Flask, Django's WSGIHandler) -> wsgi
    def handle(request), or an object with a handle(request) method           -> minirr
    def create_app() with factory = false       -> stop: it looks like a factory
    anything else (*args, several fits, no signature)  -> stop: set interface
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import sysconfig
import traceback
from typing import Callable, NamedTuple, Optional, Tuple

from ..wire.messages import Request, Response

AppHandler = Callable[[Request], Response]
INTERFACES = ("auto", "minirr", "wsgi", "asgi")
ASYNC_MAX_CONCURRENCY = 1000    # requests an ASGI worker takes at once: [pool] max_concurrency's default
_KINDS = {"minirr": "a minirr handler", "wsgi": "a WSGI application", "asgi": "an ASGI application"}


class ASGIApp(NamedTuple):
    """What load_handler returns for an ASGI application: the worker then runs the async
    loop (asyncloop.py) around `app`, up to `max_concurrency` requests at once, instead of
    calling a handler per request."""
    app: Callable
    max_concurrency: int = ASYNC_MAX_CONCURRENCY


class AppShapeError(TypeError):
    """`[server] app` is not what the configuration says it is, or cannot be told apart:
    `key` is the `[server]` key to change, `fix` the setting that would be right."""

    def __init__(self, key: str, what: str, fix: str) -> None:
        super().__init__(f"{what}; set [server] {fix}")
        self.key = key
        self.what = what
        self.fix = fix


# ---- loading the application ------------------------------------------------------------

def load_handler(app: str, factory: bool = False, interface: str = "auto", base_dir: Optional[str] = None,
                 max_concurrency: int = ASYNC_MAX_CONCURRENCY):
    """`module:attr` -> a handler(request) -> Response, or an ASGIApp (taking up to
    `max_concurrency` requests at once). Runs once per worker: the bootstrap (an ASGI
    app's own start-up, its lifespan, comes after)."""
    obj = import_app(app, base_dir)
    name = app
    if factory:
        check_factory(obj, app)
        obj = obj()
        name = f"{app}()"
        if inspect.isawaitable(obj):
            _close_quietly(obj)
            raise AppShapeError("factory", f"{name} returned {type(obj).__name__}: the factory is called before "
                                           f"any event loop runs", "factory = false and do async start-up in "
                                                                   "the ASGI lifespan")
    return _as_handler(obj, identify(obj, interface, name), max_concurrency)


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


def _as_handler(obj: object, interface: str, max_concurrency: int):
    if interface == "asgi":
        return ASGIApp(obj, max_concurrency)
    if interface == "wsgi":
        from .wsgi import WSGIHandler   # only workers that serve WSGI pay for the import
        return WSGIHandler(obj)
    handle = getattr(obj, "handle", None)
    return handle if callable(handle) else obj


def _close_quietly(awaitable: object) -> None:
    """A coroutine nobody will await: closed, so Python does not warn that it never ran."""
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


# ---- which interface an object speaks ---------------------------------------------------

class Shape(NamedTuple):
    """What can be read off a callable without calling it."""
    handle: bool        # it has a handle(request) method: minirr's, whatever else it has
    coroutine: bool     # it is an `async def` (or its __call__ is)
    known: bool         # its signature could be read (not a C function without one) ...
    required: int       # ... positional parameters without a default
    most: int           # ... positional parameters it takes at most (-1: any number, *args)
    params: str         # ... its parameters as written, for messages

    def takes(self, count: int) -> bool:
        return self.known and self.required <= count and (self.most < 0 or count <= self.most)


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_UNKNOWN = (False, 0, 0, "(...)")


def shape_of(obj: object) -> Shape:
    handle = _has_handle(obj)
    coroutine = inspect.iscoroutinefunction(obj)          # a function, a method, a partial of one
    if not coroutine and callable(obj) and not (inspect.isclass(obj) or inspect.isroutine(obj)):
        coroutine = inspect.iscoroutinefunction(type(obj).__call__)   # an object: its __call__ counts
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):      # not callable, or a builtin without a signature
        return Shape(handle, coroutine, *_UNKNOWN)
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty for p in params):
        # a required keyword-only parameter: nothing that passes arguments by position can call it
        return Shape(handle, coroutine, True, 99, 99, _written(params))
    positional = [p for p in params if p.kind in _POSITIONAL]
    required = len([p for p in positional if p.default is p.empty])
    most = -1 if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params) else len(positional)
    return Shape(handle, coroutine, True, required, most, _written(params))


def _has_handle(obj: object) -> bool:
    """An object with a handle(request) method: one argument, not a coroutine (Django's
    ASGIHandler has an `async def handle(scope, receive, send)`, and is ASGI)."""
    handle = getattr(obj, "handle", None)
    if inspect.isclass(obj) or not callable(handle) or inspect.iscoroutinefunction(handle):
        return False
    try:
        signature = inspect.signature(handle)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(None)
    except TypeError:
        return False
    return True


def _written(params) -> str:
    """`(environ, start_response)`, `(config=...)`, `(*args, **kwargs)`: names only (an
    annotation would make a message three times as long)."""
    marks = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    words = []
    for p in params:
        if p.kind is inspect.Parameter.KEYWORD_ONLY and not any(w.startswith("*") for w in words):
            words.append("*")
        words.append(marks.get(p.kind, "") + p.name + ("=..." if p.default is not p.empty else ""))
    return "(" + ", ".join(words) + ")"


def looks(obj: object, shape: Shape) -> str:
    """What `obj` is, in words: `a function taking (environ, start_response)`."""
    if shape.handle:
        return f"a {type(obj).__name__} object with a handle(request) method"
    if inspect.isclass(obj):
        what = f"the class {obj.__name__}, whose constructor takes"
    elif inspect.isroutine(obj):
        what = "a coroutine function taking" if shape.coroutine else "a function taking"
    else:
        what = f"a {type(obj).__name__} object whose {'coroutine ' if shape.coroutine else ''}__call__ takes"
    return f"{what} {shape.params}"


def kinds_of(shape: Shape, strict_asgi: bool = True) -> Tuple[str, ...]:
    """The interfaces an object of this shape could speak. `strict_asgi`: only an `async
    def` counts as ASGI (auto); otherwise anything that takes three arguments may (it
    may return the coroutine itself), as `interface = asgi` lets it."""
    if shape.handle:
        return ("minirr",)
    if shape.coroutine:
        return ("asgi",) if shape.takes(3) else ()
    kinds = [kind for kind, count in (("minirr", 1), ("wsgi", 2)) if shape.takes(count)]
    if shape.takes(3) and not strict_asgi:
        kinds.append("asgi")
    return tuple(kinds)


def identify(obj: object, interface: str, name: str) -> str:
    """-> "minirr", "wsgi" or "asgi": the interface `obj` (named `name` in messages)
    speaks, given `[server] interface`. Raises AppShapeError where the object gives the
    setting away as wrong, or (auto) where it cannot be told."""
    shape = shape_of(obj)
    if not callable(obj) and not shape.handle:
        raise AppShapeError("app", f"{name} is a {type(obj).__name__}, not callable, with no handle(request) "
                                   f"method", "app = module:attribute naming the application")
    if _looks_like_a_factory(obj, shape):
        raise AppShapeError("factory", f"{name} is {looks(obj, shape)}: that is a factory (the application "
                                       f"would be called with each request instead of made once)", "factory = true")
    if interface == "auto":
        kinds = kinds_of(shape)
        if len(kinds) == 1:
            return kinds[0]
        raise AppShapeError("interface", f"cannot tell which interface {name} speaks: it is {looks(obj, shape)}",
                            "interface = asgi, wsgi or minirr")
    kinds = kinds_of(shape, strict_asgi=False)
    if (shape.known or shape.handle) and interface not in kinds and len(kinds) == 1:
        other = kinds[0]
        raise AppShapeError("interface", f"{name} is {looks(obj, shape)}, which is {_KINDS[other]}, not "
                                         f"{_KINDS[interface]}", f"interface = {other} (or auto)")
    return interface


def _looks_like_a_factory(obj: object, shape: Shape) -> bool:
    """Called with no arguments, and nothing else: what a factory is (or a class)."""
    return shape.known and not shape.handle and shape.required == 0 and shape.most >= 0 and (
        inspect.isclass(obj) or not shape.coroutine)


def check_factory(obj: object, name: str) -> None:
    """`factory = true`: `obj` must be callable with no arguments. An application given
    as a factory (README's rr.ini has `factory = true`; a Flask `app` does not want it)
    is named as what it is."""
    shape = shape_of(obj)
    if not callable(obj) and not shape.handle:
        raise AppShapeError("app", f"{name} is a {type(obj).__name__}, not callable", "factory = false")
    if shape.handle or (shape.known and shape.required > 0):
        kinds = kinds_of(shape)
        what = f", {_KINDS[kinds[0]]}," if len(kinds) == 1 else ""
        raise AppShapeError("factory", f"{name} is {looks(obj, shape)}{what} not a factory (a function of no "
                                       f"arguments)", "factory = false")
    if shape.coroutine and not inspect.isclass(obj):
        raise AppShapeError("factory", f"{name} is {looks(obj, shape)}: the factory is called before any event "
                                       f"loop runs", "factory = false and do async start-up in the ASGI lifespan")


def check_app(obj: object, factory: bool, interface: str, name: str) -> None:
    """The start-up check (the master's preflight child runs it): raises AppShapeError for
    a wiring mistake visible without calling anything. With `factory`, what the
    interface is depends on the factory's result: the worker's bootstrap checks that."""
    if factory:
        check_factory(obj, name)
    else:
        identify(obj, interface, name)


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
