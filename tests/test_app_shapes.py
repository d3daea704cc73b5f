"""Which interface an app speaks, told from what it is (`[server] interface = auto`), and
the wiring mistakes its shape gives away: each stops minirr at start-up with one line that
says what the object is and which `[server]` key to change, exit status 3, before the
listen line; where only the factory's result tells, the worker's bootstrap says it.

minirr.worker.load: shape_of, identify, check_factory, check_app. The preflight child runs
check_app (minirr.master.launch), the worker's bootstrap runs identify on what a factory
returns.
"""

from __future__ import annotations

import functools

import pytest

from minirr.worker import load
from minirr.worker.load import AppShapeError
from test_cli import HELLO_APP, start_up


async def asgi_app(scope, receive, send):
    pass


def wsgi_app(environ, start_response):
    pass


def handler(request):
    pass


def create_app():
    pass


def create_app_with_settings(settings=None):
    pass


def any_args(*args):
    pass


def request_or_wsgi(request, start_response=None):
    pass


async def create_async():
    pass


class Native:
    def handle(self, request):
        pass


class AsgiObject:
    async def __call__(self, scope, receive, send):
        pass


class WsgiObject:
    def __call__(self, environ, start_response):
        pass


class Factory:
    def __init__(self):
        pass


def keyword_only(*, request):
    pass


@pytest.mark.parametrize("obj,kind", [
    (asgi_app, "asgi"), (AsgiObject(), "asgi"), (functools.partial(asgi_app), "asgi"),
    (wsgi_app, "wsgi"), (WsgiObject(), "wsgi"),
    (handler, "minirr"), (Native(), "minirr"), (lambda request: None, "minirr"),
])
def test_auto_tells_an_app_by_its_signature(obj, kind):
    assert load.identify(obj, "auto", "m:a") == kind


@pytest.mark.parametrize("obj,message", [
    (any_args, "cannot tell which interface m:a speaks: it is a function taking (*args)"),
    (request_or_wsgi, "cannot tell which interface m:a speaks: it is a function taking (request, start_response=...)"),
    (functools.partial(asgi_app, 1), "cannot tell which interface m:a speaks: it is a partial object whose coroutine "
                                     "__call__ takes (receive, send)"),
    (keyword_only, "cannot tell which interface m:a speaks: it is a function taking (*, request)"),
    (print, "cannot tell which interface m:a speaks"),
    (lambda scope, receive, send: None, "cannot tell which interface m:a speaks: it is a function taking "
                                        "(scope, receive, send)"),
])
def test_auto_refuses_what_fits_no_interface_or_several(obj, message):
    with pytest.raises(AppShapeError) as info:
        load.identify(obj, "auto", "m:a")
    assert info.value.key == "interface" and info.value.what.startswith(message)
    assert str(info.value).endswith("; set [server] interface = asgi, wsgi or minirr")


def test_a_sync_callable_of_three_arguments_is_asgi_when_the_config_says_so():
    assert load.identify(lambda scope, receive, send: None, "asgi", "m:a") == "asgi"


@pytest.mark.parametrize("obj,interface,fix", [
    (wsgi_app, "minirr", "interface = wsgi (or auto)"),
    (WsgiObject(), "asgi", "interface = wsgi (or auto)"),
    (asgi_app, "wsgi", "interface = asgi (or auto)"),
    (asgi_app, "minirr", "interface = asgi (or auto)"),
    (handler, "wsgi", "interface = minirr (or auto)"),
    (Native(), "asgi", "interface = minirr (or auto)"),
])
def test_an_interface_the_object_does_not_speak_is_refused(obj, interface, fix):
    with pytest.raises(AppShapeError) as info:
        load.identify(obj, interface, "m:a")
    assert info.value.key == "interface" and info.value.fix == fix


@pytest.mark.parametrize("obj,interface", [(print, "minirr"), (any_args, "wsgi"), (request_or_wsgi, "wsgi")])
def test_an_interface_set_by_hand_wins_where_the_object_cannot_tell(obj, interface):
    assert load.identify(obj, interface, "m:a") == interface


@pytest.mark.parametrize("obj", [create_app, create_app_with_settings, Factory])
@pytest.mark.parametrize("interface", ["auto", "minirr", "wsgi", "asgi"])
def test_a_factory_without_factory_true_is_named_as_one(obj, interface):
    with pytest.raises(AppShapeError) as info:
        load.identify(obj, interface, "m:create_app")
    assert info.value.key == "factory" and info.value.fix == "factory = true"
    assert "that is a factory (the application would be called with each request instead of made once)" \
        in info.value.what


@pytest.mark.parametrize("obj,what", [
    (wsgi_app, "m:app is a function taking (environ, start_response), a WSGI application, not a factory"),
    (AsgiObject(), "m:app is a AsgiObject object whose coroutine __call__ takes (scope, receive, send), an ASGI "
                   "application, not a factory"),
    (Native(), "m:app is a Native object with a handle(request) method, a minirr handler, not a factory"),
    (handler, "m:app is a function taking (request), a minirr handler, not a factory"),
    (any_args, None),
])
def test_factory_true_on_an_application_is_named_as_one(obj, what):
    if what is None:                           # *args could be a factory: it is called
        load.check_factory(obj, "m:app")
        return
    with pytest.raises(AppShapeError) as info:
        load.check_factory(obj, "m:app")
    assert info.value.key == "factory" and info.value.fix == "factory = false"
    assert info.value.what == what + " (a function of no arguments)"


def test_an_async_factory_is_refused():
    with pytest.raises(AppShapeError) as info:
        load.check_factory(create_async, "m:create")
    assert info.value.fix == "factory = false and do async start-up in the ASGI lifespan"


def test_something_not_callable_is_named():
    with pytest.raises(AppShapeError) as info:
        load.identify(42, "auto", "m:n")
    assert info.value.key == "app" and info.value.what == "m:n is a int, not callable, with no handle(request) method"


@pytest.mark.parametrize("factory,interface,raises", [
    (True, "auto", False), (True, "minirr", False), (False, "auto", True), (False, "asgi", True)])
def test_the_start_up_check_looks_at_a_factory_only_as_a_factory(factory, interface, raises):
    if raises:
        with pytest.raises(AppShapeError):
            load.check_app(create_app, factory, interface, "m:create_app")
    else:
        load.check_app(create_app, factory, interface, "m:create_app")


def test_frameworks_are_told_apart():
    flask = pytest.importorskip("flask", reason="Flask is not installed: `pip install flask` (.ci/run installs it)")
    assert load.identify(flask.Flask("shapes"), "auto", "m:app") == "wsgi"
    with pytest.raises(AppShapeError) as info:
        load.check_factory(flask.Flask("shapes"), "m:app")
    assert info.value.what.startswith("m:app is a Flask object whose __call__ takes (environ, start_response), "
                                      "a WSGI application, not a factory")


def test_asgi_frameworks_are_told_apart():
    starlette = pytest.importorskip("starlette.applications",
                                    reason="Starlette is not installed: `pip install starlette` (.ci/run installs it)")
    assert load.identify(starlette.Starlette(), "auto", "m:app") == "asgi"


def test_django_handlers_are_told_apart():
    pytest.importorskip("django", reason="Django is not installed: `pip install django` (.ci/run installs it)")
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.wsgi import WSGIHandler
    assert load.shape_of(ASGIHandler.__call__).coroutine
    assert load.kinds_of(load.shape_of(WSGIHandler.__call__)) == ()       # unbound: self, environ, start_response
    assert load.identify(object.__new__(WSGIHandler), "auto", "m:application") == "wsgi"
    assert load.identify(object.__new__(ASGIHandler), "auto", "m:application") == "asgi"


# ---- at start-up, as the user sees it --------------------------------------------------------

WSGI_MODULE = "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'wsgi']\n"
FACTORY_MODULE = ("from minirr import Response\n\n"
                  "def create_app():\n    return lambda request: Response(200, {}, b'made')\n")
AMBIGUOUS_MODULE = "def app(*args):\n    pass\n"
WSGI_FACTORY_MODULE = "def create_app():\n" + "".join("    " + line + "\n" for line in WSGI_MODULE.splitlines()) \
    + "    return app\n"


@pytest.mark.parametrize("config,files,origin,message", [
    ("app = factory_app:create_app\n", {"factory_app.py": FACTORY_MODULE}, "[server] factory",
     "factory_app:create_app is a function taking (): that is a factory (the application would be called with "
     "each request instead of made once); set factory = true"),
    ("app = wsgi_mod:app\nfactory = true\n", {"wsgi_mod.py": WSGI_MODULE}, "[server] factory = true",
     "wsgi_mod:app is a function taking (environ, start_response), a WSGI application, not a factory (a function "
     "of no arguments); set factory = false"),
    ("app = wsgi_mod:app\ninterface = minirr\n", {"wsgi_mod.py": WSGI_MODULE}, "[server] interface = minirr",
     "wsgi_mod:app is a function taking (environ, start_response), which is a WSGI application, not a minirr "
     "handler; set interface = wsgi (or auto)"),
    ("app = vague:app\n", {"vague.py": AMBIGUOUS_MODULE}, "[server] interface",
     "cannot tell which interface vague:app speaks: it is a function taking (*args); set interface = asgi, wsgi "
     "or minirr"),
])
def test_a_wiring_mistake_stops_minirr_with_one_line_naming_the_key(tmp_path, config, files, origin, message):
    status, lines, stdout = start_up(tmp_path, "[server]\n" + config, files=files)
    assert status == 3 and stdout == ""
    assert lines == [f"minirr: {tmp_path / 'rr.ini'} {origin}: {message}"]


def test_the_line_names_an_override_where_the_key_came_from_one(tmp_path):
    status, lines, _ = start_up(tmp_path, "[server]\napp = wsgi_mod:app\n", "-o", "server.interface=minirr",
                                files={"wsgi_mod.py": WSGI_MODULE})
    assert status == 3 and lines[0].startswith("minirr: -o server.interface=minirr: wsgi_mod:app is a function")


def test_factory_true_on_a_flask_app_stops_minirr(tmp_path):
    pytest.importorskip("flask", reason="Flask is not installed: `pip install flask` (.ci/run installs it)")
    status, lines, stdout = start_up(tmp_path, "[server]\napp = flask_app:app\nfactory = true\n",
                                     files={"flask_app.py": "from flask import Flask\napp = Flask(__name__)\n"})
    assert status == 3 and stdout == ""
    assert lines == [f"minirr: {tmp_path / 'rr.ini'} [server] factory = true: flask_app:app is a Flask object "
                     "whose __call__ takes (environ, start_response), a WSGI application, not a factory (a function "
                     "of no arguments); set factory = false"]


def test_a_native_handler_still_serves_with_the_default_interface(serve):
    srv = serve("[server]\napp = hello:app\n[pool]\nnum_workers = 1\n", files={"hello.py": HELLO_APP})
    assert srv.request("GET", "/")[2] == b"hi"


def test_what_a_factory_returns_is_checked_by_the_bootstrap(serve):
    srv = serve("[server]\napp = wsgi_factory:create_app\nfactory = true\ninterface = asgi\n[pool]\nnum_workers = 1\n",
                files={"wsgi_factory.py": WSGI_FACTORY_MODULE})
    srv.wait_for_log(r"minirr\.worker: bootstrap failed: wsgi_factory:create_app\(\) is a function taking "
                     r"\(environ, start_response\), which is a WSGI application, not an ASGI application; set "
                     r"\[server\] interface = wsgi \(or auto\)")
    assert srv.request("GET", "/")[0] == 503
    assert "Traceback" not in srv.log


def test_auto_tells_what_a_factory_returns(serve):
    srv = serve("[server]\napp = wsgi_factory:create_app\nfactory = true\n[pool]\nnum_workers = 1\n",
                files={"wsgi_factory.py": WSGI_FACTORY_MODULE})
    assert srv.request("GET", "/")[2] == b"wsgi"
