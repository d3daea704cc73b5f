"""The architecture as tests (STYLE.md §1 and §3): imports point one way, and the
protocol and decision modules do no I/O."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minirr"

# Modules that work on bytes, str and numbers only: no sockets, processes, signals or clocks.
PURE = ["frame", "messages", "http11", "grammar", "forwarded", "config", "pool", "supervisor",
        "metrics", "control", "errors"]
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


@pytest.mark.parametrize("name", MODULES)
def test_nothing_imports_server_or_cli(name):
    internal, _ = imports_of(name)
    allowed = {"__main__": {"cli"}, "cli": {"server"}}.get(name, set())
    assert not (internal & {"server", "cli"}) - allowed


@pytest.mark.parametrize("name", PURE)
def test_protocol_and_decision_modules_do_no_io(name):
    _, external = imports_of(name)
    assert not external & IO_MODULES, f"{name} imports {sorted(external & IO_MODULES)}"
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    clock_reads = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                   and isinstance(node.value, ast.Name) and node.value.id == "time" and node.attr in CLOCKS]
    assert not clock_reads, f"{name} reads the clock ({clock_reads}): time is a parameter"


@pytest.mark.parametrize("name", ["frame", "messages", "errors", "forwarded"])
def test_leaf_modules_import_only_the_standard_library_and_errors(name):
    internal, _ = imports_of(name)
    assert internal <= {"errors"}


def test_worker_side_never_sees_http():
    for name in ("worker", "stream", "wsgi"):
        internal, external = imports_of(name)
        assert not internal & {"http11", "grammar", "frontend", "server"}
        assert "socket" not in external
