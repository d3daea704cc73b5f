"""The architecture as tests (STYLE.md §1 and §3): the allowed import graph, written out
as a list a reader can check the code against; the protocol and decision modules do no
I/O; the worker side never sees HTTP."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minirr"

# Every module of minirr and what it may import of minirr (relative imports). Read from
# the bottom up: the leaves first, then the pure layer, the master's parts, the top.
ALLOWED = {
    # leaves: the standard library only
    "errors": set(), "messages": set(), "forwarded": set(), "loop": set(), "logs": set(),
    "metrics": set(), "notify": set(), "procfs": set(),
    # the pure layer: bytes and str in, bytes, str and decisions out
    "frame": {"errors"},
    "grammar": {"errors"},
    "sections": {"errors"},
    "chunked": {"errors", "grammar"},
    "http11": {"chunked", "errors", "grammar", "messages", "sections"},
    "responses": {"grammar", "messages"},
    "config": {"errors"},
    "control": {"errors", "frame", "http11"},
    "lifecycle": {"errors"},
    "pool": {"errors"},
    "supervisor": {"pool"},
    "jobs": {"logs", "metrics", "pool"},
    # the master's parts (server.py wires them)
    "listener": {"errors", "lifecycle", "loop"},
    "connection": {"errors", "http11", "lifecycle", "loop"},
    "channel": {"errors", "frame", "loop"},
    "replies": {"channel", "frame", "jobs", "pool", "responses"},
    "backend": {"channel", "frame", "jobs", "messages", "pool", "replies"},
    "frontend": {"config", "connection", "forwarded", "grammar", "http11", "jobs", "lifecycle", "listener",
                 "loop", "responses"},
    "operations": {"config", "connection", "control", "http11", "lifecycle", "listener", "loop", "metrics",
                   "notify", "pool", "procfs", "responses", "supervisor"},
    "server": {"backend", "config", "errors", "frontend", "jobs", "logs", "loop", "metrics", "operations", "pool",
               "responses"},
    # the worker side: frames and Request objects, never HTTP
    "wsgi": {"errors", "messages"},
    "stream": {"errors", "frame", "messages"},
    "worker": {"frame", "messages", "stream", "wsgi"},
    "launch": {"errors", "worker"},
    "command": {"errors", "launch"},
    # the top
    "remote": {"control", "errors", "frame"},
    "cli": {"__version__", "command", "config", "control", "errors", "launch", "logs", "remote", "server"},
    "__init__": {"messages"},
    "__main__": {"cli"},
}

# Modules that work on bytes, str and numbers only: no sockets, processes, signals or clocks.
PURE = ["frame", "messages", "http11", "grammar", "sections", "forwarded", "responses", "config", "control",
        "lifecycle", "pool", "supervisor", "jobs", "metrics", "errors"]
IO_MODULES = {"socket", "selectors", "select", "subprocess", "multiprocessing", "signal", "threading"}
CLOCKS = {"time", "monotonic", "perf_counter", "sleep"}   # time.gmtime (a conversion) is fine


def imports_of(name):
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    internal, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            internal.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and node.module:
            external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(a.name.split(".")[0] for a in node.names)
    return internal, external


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


def test_every_module_is_in_the_graph():
    assert sorted(ALLOWED) == MODULES


@pytest.mark.parametrize("name", MODULES)
def test_imports_follow_the_graph(name):
    internal, external = imports_of(name)
    assert internal <= ALLOWED[name], f"{name} imports {sorted(internal - ALLOWED[name])}, not in its list"
    assert "minirr" not in external, "inside the package, imports are relative (it is vendored as one folder)"


def test_nothing_imports_server_or_cli():
    importers = {name for name, allowed in ALLOWED.items() if allowed & {"server", "cli"}}
    assert importers == {"cli", "__main__"}


@pytest.mark.parametrize("name", PURE)
def test_protocol_and_decision_modules_do_no_io(name):
    _, external = imports_of(name)
    assert not external & IO_MODULES, f"{name} imports {sorted(external & IO_MODULES)}"
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    clock_reads = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                   and isinstance(node.value, ast.Name) and node.value.id == "time" and node.attr in CLOCKS]
    assert not clock_reads, f"{name} reads the clock ({clock_reads}): time is a parameter"


def test_worker_side_never_sees_http():
    for name in ("worker", "stream", "wsgi"):
        internal, external = imports_of(name)
        assert not internal & {"http11", "grammar", "responses", "frontend", "server"}
        assert "socket" not in external


@pytest.mark.parametrize("name", MODULES)
def test_no_module_is_longer_than_a_reader_can_hold(name):
    """STYLE.md §2: split a module past ~400 lines along an ownership line."""
    lines = len((PACKAGE / f"{name}.py").read_text().splitlines())
    assert lines <= 410, f"{name}.py has {lines} lines"


def test_no_two_classes_share_a_name():
    seen = {}
    for name in MODULES:
        for node in ast.walk(ast.parse((PACKAGE / f"{name}.py").read_text())):
            if isinstance(node, ast.ClassDef):
                assert node.name not in seen, f"class {node.name} in {name}.py and {seen[node.name]}.py"
                seen[node.name] = name
