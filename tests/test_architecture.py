"""The architecture as tests: the folders are the layers, the allowed import graph is a
list a reader can check the code against, and the modules that decide do no I/O.

    minirr/            the edges: cli, config, errors, logs, remote (the cli's client)
    minirr/http/       HTTP/1.1 as bytes (no I/O)
    minirr/wire/       frames and messages between master and workers (no I/O)
    minirr/master/     the loop and its parts
    minirr/worker/     inside a worker: the request loop, streams, WSGI, ASGI and its event loop

Modules are named by their path in the package: `master.backend` is minirr/master/backend.py.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minirr"

# What each layer may import of minirr. A module may always import its own layer's
# modules (as its entry in ALLOWED lists them) and the layers named here.
LAYERS = {
    "": {"", "http", "wire", "master", "worker"},     # the edges (cli starts the master)
    "http": {"", "http", "wire"},  # errors; the parser makes wire.messages.Request objects
    "wire": {"", "wire"},          # errors only
    "master": {"", "http", "wire", "master", "worker"},   # worker: only launch, to run its entry point
    "worker": {"", "wire", "worker"},
}

# Every module of minirr and what it may import of minirr. Read from the bottom up.
ALLOWED = {
    # the edges
    "errors": set(), "logs": set(),
    "config": {"errors"},
    "__init__": {"wire.messages"},
    "__main__": {"cli"},
    "remote": {"errors", "master.control", "wire.frame"},
    "cli": {"__init__", "config", "errors", "logs", "master.command", "master.control", "master.launch",
            "master.server", "master.static", "remote"},
    # HTTP as bytes
    "http.__init__": set(),
    "http.grammar": {"errors"},
    "http.sections": {"errors"},
    "http.forwarded": set(),
    "http.chunked": {"errors", "http.grammar"},
    "http.parser": {"errors", "http.chunked", "http.grammar", "http.sections", "wire.messages"},
    "http.responses": {"http.grammar"},
    "http.files": {"http.responses"},
    "http.websocket": {"errors", "http.responses"},
    # the wire
    "wire.__init__": set(),
    "wire.frame": {"errors"},
    "wire.messages": set(),
    "wire.heads": {"wire.messages"},
    "wire.multiplex": {"errors", "wire.frame"},
    "wire.websocket": {"errors", "wire.frame"},
    # the master: pure decisions first, then the parts that own descriptors
    "master.__init__": set(),
    "master.lifecycle": {"errors"},
    "master.pool": {"errors"},
    "master.supervisor": {"master.pool"},
    "master.metrics": set(),
    "master.reply": {"http.responses", "wire.frame", "wire.heads"},
    "master.jobs": {"errors", "logs", "master.metrics", "master.pool", "master.reply"},
    "master.control": {"errors", "http.parser", "wire.frame"},
    "master.loop": set(),
    "master.notify": set(),
    "master.procfs": set(),
    "master.listener": {"errors", "master.lifecycle", "master.loop"},
    "master.connection": {"errors", "http.parser", "master.lifecycle", "master.loop"},
    "master.channel": {"errors", "master.loop", "wire.frame"},
    "master.answer": {"http.responses"},
    "master.backend": {"errors", "master.channel", "master.jobs", "master.pool", "master.reply", "wire.frame",
                       "wire.heads", "wire.multiplex", "wire.websocket"},
    "master.websocket": {"errors", "http.responses", "http.websocket", "master.jobs", "master.lifecycle",
                         "master.metrics", "wire.frame", "wire.multiplex", "wire.websocket"},
    "master.frontend": {"config", "http.forwarded", "http.grammar", "http.parser", "http.responses",
                        "http.websocket", "master.connection", "master.jobs", "master.lifecycle", "master.listener", "master.loop"},
    "master.operations": {"config", "http.parser", "http.responses", "master.connection", "master.control",
                          "master.lifecycle", "master.listener", "master.loop", "master.metrics", "master.notify",
                          "master.pool", "master.procfs", "master.supervisor"},
    "master.launch": {"errors", "worker.load", "worker.loop"},
    "master.command": {"errors", "master.launch"},
    "master.static": {"config", "errors", "http.files", "http.responses"},
    "master.reload": {"config", "master.launch", "master.loop"},
    "master.server": {"config", "errors", "http.responses", "logs", "master.answer", "master.backend",
                      "master.frontend", "master.jobs", "master.loop", "master.metrics", "master.operations",
                      "master.lifecycle", "master.pool", "master.reload", "master.static", "master.websocket"},
    # the worker side: frames and Request objects, never HTTP
    "worker.__init__": set(),
    "worker.__main__": {"worker.loop"},
    "worker.wsgi": {"wire.messages"},
    "worker.stream": {"errors", "wire.frame", "wire.messages"},
    "worker.load": {"wire.messages", "worker.wsgi"},
    "worker.loop": {"wire.frame", "wire.heads", "wire.messages", "worker.asyncloop", "worker.load", "worker.stream"},
    "worker.asgi": {"wire.messages", "worker.load", "worker.stream", "worker.wsgi"},
    "worker.asyncloop": {"errors", "wire.frame", "wire.heads", "wire.messages", "wire.multiplex", "wire.websocket",
                         "worker.asgi", "worker.loop", "worker.websocket"},
    "worker.websocket": {"errors", "wire.frame", "wire.messages", "wire.multiplex", "wire.websocket", "worker.asgi",
                         "worker.load", "worker.wsgi"},
}

# Modules that work on bytes, str and numbers only: no sockets, processes, signals or clocks.
PURE = sorted(name for name in ALLOWED if name.split(".")[0] in ("http", "wire")) + [
    "config", "errors", "master.lifecycle", "master.pool", "master.supervisor", "master.jobs", "master.metrics",
    "master.reply", "master.control"]
IO_MODULES = {"socket", "selectors", "select", "subprocess", "multiprocessing", "signal", "threading", "ssl",
              "asyncio"}
CLOCKS = {"time", "monotonic", "perf_counter", "sleep"}   # time.gmtime (a conversion) is fine


def module_path(name: str) -> Path:
    return PACKAGE.joinpath(*name.split(".")).with_suffix(".py")


def layer_of(name: str) -> str:
    return name.split(".")[0] if "." in name else ""


def resolve(name: str, level: int, module) -> str:
    """The dotted name (inside minirr) a relative import in module `name` names."""
    parts = name.split(".")[:-1]            # the package the module is in
    base = parts[:len(parts) - (level - 1)] if level > 1 else parts
    return ".".join(base + ([module] if module else []))


def imports_of(name):
    """-> (minirr modules it imports, outside top-level modules it imports)."""
    tree = ast.parse(module_path(name).read_text())
    internal, external = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = resolve(name, node.level, node.module)
            for alias in node.names:
                candidate = f"{target}.{alias.name}" if target else alias.name
                if module_path(candidate).exists() or (PACKAGE / candidate.replace(".", "/")).is_dir():
                    internal.add(candidate if module_path(candidate).exists() else candidate + ".__init__")
                elif target in ("", "__version__"):
                    internal.add("__init__")
                else:
                    internal.add(target if module_path(target).exists() else target + ".__init__")
        elif isinstance(node, ast.ImportFrom) and node.module:
            external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(a.name.split(".")[0] for a in node.names)
    return internal, external


MODULES = sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py"))


def test_every_module_is_in_the_graph():
    assert sorted(ALLOWED) == MODULES


@pytest.mark.parametrize("name", MODULES)
def test_imports_follow_the_graph(name):
    internal, external = imports_of(name)
    assert internal <= ALLOWED[name], f"{name} imports {sorted(internal - ALLOWED[name])}, not in its list"
    assert "minirr" not in external, "inside the package, imports are relative (it is vendored as one folder)"


@pytest.mark.parametrize("name", MODULES)
def test_each_layer_imports_only_the_layers_below_it(name):
    layers = {layer_of(target) for target in ALLOWED[name]}
    assert layers <= LAYERS[layer_of(name)], f"{name} reaches into {sorted(layers - LAYERS[layer_of(name)])}"


def test_the_master_uses_the_worker_side_only_to_start_it():
    users = {name for name, allowed in ALLOWED.items()
             if name.startswith("master.") and any(target.startswith("worker.") for target in allowed)}
    assert users == {"master.launch"}


def test_nothing_imports_server_or_cli():
    importers = {name for name, allowed in ALLOWED.items() if allowed & {"master.server", "cli"}}
    assert importers == {"cli", "__main__"}


@pytest.mark.parametrize("name", PURE)
def test_protocol_and_decision_modules_do_no_io(name):
    _, external = imports_of(name)
    assert not external & IO_MODULES, f"{name} imports {sorted(external & IO_MODULES)}"
    tree = ast.parse(module_path(name).read_text())
    clock_reads = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                   and isinstance(node.value, ast.Name) and node.value.id == "time" and node.attr in CLOCKS]
    assert not clock_reads, f"{name} reads the clock ({clock_reads}): time is a parameter"
    opens = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id == "open"]
    assert not opens, f"{name} opens a file"


def test_worker_side_never_sees_http():
    for name in ALLOWED:
        if name.startswith("worker."):
            internal, external = imports_of(name)
            assert not {target for target in internal if target.startswith(("http.", "master."))}
            assert "socket" not in external


def test_no_two_classes_share_a_name():
    seen = {}
    for name in MODULES:
        for node in ast.walk(ast.parse(module_path(name).read_text())):
            if isinstance(node, ast.ClassDef):
                assert node.name not in seen, f"class {node.name} in {name} and {seen[node.name]}"
                seen[node.name] = name
