"""The minirr benchmark suite: start servers on loopback, load them, print one table.

Owns: the scenarios, starting and stopping the servers under test (minirr, and gunicorn
from a throwaway venv), driving them with wrk or loadgen.py, reading CPU and memory from
/proc, and the summary with medians and same-round ratios.
Never: runs from CI or asserts a target (it reports them); sends anything off loopback;
leaves a process behind — everything it starts is stopped by pid in a `finally`, on
Ctrl-C and on SIGTERM too.

    python tests/bench/run.py                                  # minirr alone, 10 s x 3
    python tests/bench/run.py --duration 5 --repeat 3 --against gunicorn
    python tests/bench/run.py --scenarios hello-keepalive,body-5m --driver loadgen

One round runs every scenario once against each server, one after the other
(minirr, gunicorn, minirr, gunicorn, ...), each on a freshly started server:

    for round in 1..repeat:
      for scenario in scenarios:
        for server in (minirr, gunicorn):
          start -> probe one request -> warm up 1 s -> snapshot /proc
          -> load for --duration -> snapshot /proc, read RSS -> stop

A ratio is taken between two runs of the same round, so slow drifts of the machine
(other people's tests share these 2 cores) hit both servers alike; the summary quotes
the median of each figure over the rounds and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent.parent
sys.path.insert(0, str(BENCH_DIR))

import loadgen  # noqa: E402  (a sibling file, found through the line above)

CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
WARMUP_S = 1
DEFAULT_VENV = Path(tempfile.gettempdir()) / "minirr-bench" / "venv"
DEMO_BODY = "!dlrow ,olleH"  # the doubles' flag is on, so a working demo reverses the greeting


# ---- scenarios ------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    """One kind of load: which app, which request, how many connections."""

    name: str
    app: str  # module:attribute
    interface: str = "wsgi"
    factory: bool = False
    method: str = "GET"
    path: str = "/"
    body_bytes: int = 0
    close: bool = False  # `Connection: close` on every request
    connections: int = 32
    servers: Tuple[str, ...] = ("minirr", "gunicorn")  # who can run this app
    expect_body: Optional[str] = None  # the probe checks the response body contains this
    access_log: bool = False  # minirr's [logs] access_log (off everywhere else, so runs compare the path)
    response_bytes: int = 0  # a large answer: MiB/s is counted from it

    @property
    def reports_throughput(self) -> bool:
        return self.body_bytes >= MIB or self.response_bytes >= MIB


SCENARIOS: Dict[str, Scenario] = {s.name: s for s in [
    Scenario("hello-keepalive", "apps:hello_wsgi", expect_body="Hello, world!"),
    Scenario("hello-close", "apps:hello_wsgi", close=True),
    Scenario("hello-native", "apps:hello_minirr", interface="minirr", servers=("minirr",)),
    # hello-keepalive with the access log on (stderr to a file): what users get by default
    Scenario("hello-accesslog", "apps:hello_wsgi", servers=("minirr",), access_log=True),
    Scenario("echo-64k", "apps:echo_wsgi", method="POST", body_bytes=64 * 1024),
    # 4 connections, not 32: 32 five-megabyte uploads in flight measure buffering, not the path.
    Scenario("body-5m", "apps:sink_wsgi", method="POST", body_bytes=5 * MIB, connections=4),
    # a 200 MiB download from a WSGI generator, streamed (chunked), 1 connection at a time
    Scenario("stream-200m", "apps:stream_wsgi", path="/?mb=200", response_bytes=200 * MIB, connections=1),
    Scenario("demo", "demo_app:create_app", interface="minirr", factory=True, servers=("minirr",),
             expect_body=DEMO_BODY),
]}
DEFAULT_SCENARIOS = "hello-keepalive,hello-close,hello-native,hello-accesslog,echo-64k,body-5m,demo"


# ---- /proc: CPU, memory, children ---------------------------------------------------------

def _stat_fields(pid: int) -> List[bytes]:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2:].split()


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` in clock ticks (proc(5): fields 14 and 15); 0 if it is gone."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12])


def rss_mb(pid: int, field_name: str = "VmRSS:") -> float:
    """VmRSS (or another field, e.g. VmHWM: the peak) of `pid` in MB (MiB), from
    /proc/PID/status; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def children_of(pid: int) -> List[int]:
    """Live direct children of `pid` (the master's workers)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat_fields(int(entry))
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid and fields[0] != b"Z":
            kids.append(int(entry))
    return sorted(kids)


def machine_busy_ticks() -> int:
    """Ticks all CPUs spent on anything but idling since boot (user nice system irq
    softirq steal).

    irq and softirq count too: with tick-based accounting (CONFIG_IRQ_TIME_ACCOUNTING
    off, as here) a tick that lands in a softirq, such as loopback packets processed
    inside a send(), is charged both to /proc/stat's softirq and to the process that was
    running, whose CPU the table subtracts; leaving it out made "others" negative.
    """
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq + steal


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def children_cpu_s() -> float:
    """CPU time of this script's reaped children (wrk, the loadgen processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- processes we start ------------------------------------------------------------------

class Service:
    """A process this script started: its log files, its pid, and how to stop it.

    Started in a new session so a Ctrl-C in the terminal reaches only this script,
    which then stops the service in order. Every child ever seen is remembered by pid
    and start time, and `stop()` kills any of them still alive, by pid, only if the
    start time still matches (a pid reused by someone else's process is left alone).
    """

    def __init__(self, name: str, cmd: List[str], folder: Path, env: Optional[Dict[str, str]] = None,
                 check_exit: bool = True) -> None:
        self.name = name
        self.folder = folder
        self.check_exit = check_exit  # report a non-zero exit status after SIGTERM
        self.stdout_path = folder / f"{name}.out"
        self.stderr_path = folder / f"{name}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=str(folder),
                                         env=env, start_new_session=True)
        self.children_seen: Dict[int, int] = {}  # pid -> start time

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> List[int]:
        kids = children_of(self.pid)
        for pid in kids:
            started = start_time(pid)
            if started is not None:
                self.children_seen.setdefault(pid, started)
        return kids

    def wait_for_line(self, pattern: str, stream: str = "stdout", timeout_s: float = READY_TIMEOUT_S) -> re.Match:
        """Poll the log file until a line matches; fail early if the process exits."""
        path = self.stdout_path if stream == "stdout" else self.stderr_path
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = rx.search(path.read_text(errors="replace"))
            if match:
                return match
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.02)  # a poll interval
        raise RuntimeError(f"{self.name} printed no /{pattern}/ within {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        text = self.stderr_path.read_text(errors="replace") + self.stdout_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Signal, wait with a deadline, then SIGKILL the master and every child seen.
        A master that exits with a non-zero status is reported with its log."""
        if self.proc.poll() is not None:
            print(f"  {self.name} (pid {self.pid}) had already exited with status {self.proc.returncode}:\n"
                  f"{self.log_tail()}", file=sys.stderr)
        else:
            self.workers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} (pid {self.pid}) ignored SIGTERM for {STOP_TIMEOUT_S} s; killing it",
                      file=sys.stderr)
                self.proc.kill()
                self.proc.wait(5)
            if self.check_exit and self.proc.returncode != 0:
                print(f"  {self.name} (pid {self.pid}) exited with status {self.proc.returncode} after SIGTERM:\n"
                      f"{self.log_tail()}", file=sys.stderr)
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        still_ours = lambda pid: start_time(pid) == self.children_seen[pid]  # noqa: E731
        deadline = time.monotonic() + 5.0
        alive = [pid for pid in self.children_seen if still_ours(pid)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)  # workers exit a moment after their master
            alive = [pid for pid in alive if still_ours(pid)]
        for pid in alive:
            print(f"  {self.name}: pid {pid} outlived its master; killing it", file=sys.stderr)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_time(pid: int) -> Optional[int]:
    """When `pid` started (proc(5) field 22, ticks since boot); None if gone or a zombie."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] == b"Z" else int(fields[19])


class Server:
    """A server under test: knows how to start itself for a scenario. `kind` is what a
    scenario's `servers` names (a minirr from another tree is still a minirr)."""

    name = ""
    kind = ""

    def start(self, scenario: Scenario, folder: Path) -> Tuple[Service, str, int]:
        raise NotImplementedError


class Minirr(Server):
    kind = "minirr"

    def __init__(self, workers: int, extra_env: Optional[Dict[str, str]] = None, root: Path = ROOT,
                 name: str = "minirr") -> None:
        self.workers = workers
        self.extra_env = extra_env or {}
        self.root = root                      # the tree whose minirr/ runs (--baseline: another one)
        self.name = name

    def config_text(self, scenario: Scenario, folder: Path) -> str:
        return "\n".join([
            "[server]",
            f"app = {scenario.app}",
            f"factory = {'true' if scenario.factory else 'false'}",
            f"interface = {scenario.interface}",
            "[http]",
            "address = 127.0.0.1:0",
            "max_request_size = 10MB",
            "[pool]",
            f"num_workers = {self.workers}",
            "[logs]",
            f"access_log = {'true' if scenario.access_log else 'false'}",
            "[rpc]",
            f"listen = unix:{folder / 'rpc.sock'}",
            "",
        ])

    def start(self, scenario: Scenario, folder: Path) -> Tuple[Service, str, int]:
        config = folder / "rr.ini"
        config.write_text(self.config_text(scenario, folder))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.root), str(BENCH_DIR), env.get("PYTHONPATH", "")])
        env.update(self.extra_env)
        service = Service(self.name, [sys.executable, "-m", "minirr", "serve", "-c", str(config)], folder, env)
        match = service.wait_for_line(r"minirr listening on http://([\d.]+):(\d+)")
        return service, match.group(1), int(match.group(2))


class Gunicorn(Server):
    name = "gunicorn"
    kind = "gunicorn"

    def __init__(self, executable: Path, workers: int) -> None:
        self.executable = executable
        self.workers = workers
        help_text = subprocess.run([str(executable), "--help"], capture_output=True, text=True, timeout=60).stdout
        # gunicorn >= 26 opens a control socket under ~/.gunicorn unless told not to.
        self.extra_args = ["--no-control-socket"] if "--no-control-socket" in help_text else []

    def start(self, scenario: Scenario, folder: Path) -> Tuple[Service, str, int]:
        cmd = [str(self.executable), "--workers", str(self.workers), "--worker-class", "sync",
               "--bind", "127.0.0.1:0", "--chdir", str(BENCH_DIR), "--graceful-timeout", "5",
               "--log-level", "info", *self.extra_args, scenario.app]
        service = Service("gunicorn", cmd, folder)
        match = service.wait_for_line(r"Listening at: http://([\d.]+):(\d+)", stream="stderr")
        return service, match.group(1), int(match.group(2))


def install_gunicorn(venv: Path) -> Optional[Path]:
    """gunicorn in a throwaway venv outside the repo; None (with a message) if that fails."""
    executable = venv / "bin" / "gunicorn"
    if executable.exists():
        return executable
    print(f"installing gunicorn into {venv} ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300, capture_output=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "gunicorn"], check=True, timeout=600,
                       capture_output=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        print(f"skipped gunicorn: cannot install it into {venv}: {exc} {detail.decode(errors='replace')[-300:]}")
        return None
    return executable


def gunicorn_version(executable: Path) -> str:
    out = subprocess.run([str(executable), "--version"], capture_output=True, text=True, timeout=60)
    return (out.stdout or out.stderr).strip()


# ---- the demo's services: the Vault and Flipt doubles ---------------------------------------

class DemoServices:
    """Both doubles as standalone processes, set up by `demo_app.py setup` like the tutorial."""

    DOUBLES = ROOT / "tests" / "doubles"

    @classmethod
    def present(cls) -> bool:
        return all((cls.DOUBLES / name).exists() for name in ("vault_double.py", "flipt_double.py")) and \
            (ROOT / "demo_app.py").exists()

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.services: List[Service] = []

    def start(self) -> Dict[str, str]:
        """-> the environment a worker needs (VAULT_HOST, VAULT_USER, VAULT_PASS)."""
        flipt_url = self._start_double("flipt", ["--port", "0", "--flag", "on"])
        vault_url = self._start_double("vault", ["--port", "0", "--root-token", "bench-root"])
        env_file = self.folder / "vault.env"
        setup = subprocess.run(
            [sys.executable, str(ROOT / "demo_app.py"), "setup", "--vault-addr", vault_url, "--vault-token",
             "bench-root", "--flipt-addr", flipt_url, "--env-file", str(env_file), "--wait", "10"],
            capture_output=True, text=True, timeout=60, cwd=str(self.folder),
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        if setup.returncode != 0:
            raise RuntimeError(f"demo_app.py setup failed:\n{setup.stdout}{setup.stderr}")
        return dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)

    def _start_double(self, name: str, args: List[str]) -> str:
        # SIGTERM ends a double at once (no handler); it keeps nothing worth a clean exit.
        service = Service(f"{name}-double", [sys.executable, str(self.DOUBLES / f"{name}_double.py"), *args],
                          self.folder, check_exit=False)
        self.services.append(service)
        return service.wait_for_line(r"listening on (http://[\d.]+:\d+)").group(1)

    def stop(self) -> None:
        for service in self.services:
            service.stop()


# ---- load drivers: wrk, or the stdlib load generator ----------------------------------------

@dataclass
class Load:
    """What a driver measured."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int
    client_cpu_s: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"status":%d,"connect":%d,' ..
    '"read":%d,"write":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\\n', summary.requests, summary.duration,
    e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(scenario: Scenario) -> str:
    """The Lua script that shapes wrk's request and prints its figures as one JSON line."""
    lines = []
    if scenario.method != "GET":
        lines.append(f'wrk.method = "{scenario.method}"')
    if scenario.body_bytes:
        lines.append(f'wrk.body = string.rep("x", {scenario.body_bytes})')
        lines.append('wrk.headers["Content-Type"] = "application/octet-stream"')
    if scenario.close:
        lines.append('wrk.headers["Connection"] = "close"')
    return "\n".join(lines) + WRK_DONE


def drive_wrk(scenario: Scenario, host: str, port: int, duration_s: float, folder: Path) -> Load:
    """`wrk -t2 -c32 -d{N}s --latency`. wrk's `status` errors are responses >= 400."""
    script = folder / f"{scenario.name}.lua"
    script.write_text(wrk_script(scenario))
    seconds = max(1, round(duration_s))
    cmd = ["wrk", f"-t{min(2, scenario.connections)}", f"-c{scenario.connections}", f"-d{seconds}s", "--latency",
           "--timeout", "10s", "-s", str(script), f"http://{host}:{port}{scenario.path}"]
    cpu_before = children_cpu_s()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    match = re.search(r"^WRKJSON (\{.*\})$", out, re.M)
    if not match:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    f = json.loads(match.group(1))
    return Load(requests=f["requests"], duration_s=f["duration_us"] / 1e6, p50_ms=f["p50_us"] / 1000,
                p99_ms=f["p99_us"] / 1000, non_2xx=f["status"],
                errors=f["connect"] + f["read"] + f["write"] + f["timeout"],
                client_cpu_s=children_cpu_s() - cpu_before)


def drive_loadgen(scenario: Scenario, host: str, port: int, duration_s: float, folder: Path) -> Load:
    spec = loadgen.LoadSpec(host=host, port=port, path=scenario.path, method=scenario.method,
                            body_bytes=scenario.body_bytes, close=scenario.close, processes=2,
                            connections=scenario.connections, duration_s=duration_s)
    result = loadgen.run_load(spec)
    return Load(requests=result.requests, duration_s=result.duration_s, p50_ms=result.latency_ms(50),
                p99_ms=result.latency_ms(99), non_2xx=result.non_2xx, errors=sum(result.errors.values()),
                client_cpu_s=result.client_cpu_s)


DRIVERS: Dict[str, Callable[..., Load]] = {"wrk": drive_wrk, "loadgen": drive_loadgen}


# ---- one measured run -------------------------------------------------------------------

@dataclass
class Run:
    """One server, one scenario, one round: the figures of a table row."""

    server: str
    scenario: str
    round: int
    req_s: float = 0.0
    mib_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    non_2xx: int = 0
    errors: int = 0
    master_us_req: float = 0.0  # CPU of the master process per request
    master_cpu_pct: float = 0.0  # of one core; ~100 means the master is the bottleneck
    server_us_req: float = 0.0  # CPU of master + workers per request
    rss_master_mb: float = 0.0
    rss_workers_mb: List[float] = field(default_factory=list)
    peak_master_mb: float = 0.0    # VmHWM: the largest RSS the process ever had
    peak_workers_mb: float = 0.0
    client_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0  # machine CPU used by neither the server nor the driver: other people's load
    load_avg: str = ""
    failed: str = ""


def probe(scenario: Scenario, host: str, port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    """One request until it answers 200 (workers may still be booting); checks the body."""
    body = b"x" * min(scenario.body_bytes, 1024) if scenario.method == "POST" else None
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request(scenario.method, scenario.path, body=body)
            response = conn.getresponse()
            data = response.read()
            if response.status == 200:
                if scenario.expect_body and scenario.expect_body.encode() not in data:
                    raise RuntimeError(f"probe: expected {scenario.expect_body!r} in the body, got {data[:200]!r}")
                return
            last = f"status {response.status}: {data[:200]!r}"
        except (ConnectionError, socket.timeout, http.client.HTTPException) as exc:
            last = repr(exc)
        finally:
            conn.close()
        time.sleep(0.1)  # a poll interval
    raise RuntimeError(f"probe: no 200 within {timeout_s} s ({last})")


def measure(server: Server, scenario: Scenario, round_no: int, duration_s: float, driver: Callable[..., Load],
            folder: Path) -> Run:
    """Start `server` for `scenario`, warm it up, load it, read /proc, stop it."""
    run = Run(server.name, scenario.name, round_no, load_avg=load_average())
    folder.mkdir(parents=True, exist_ok=True)
    service = None
    try:
        service, host, port = server.start(scenario, folder)
        probe(scenario, host, port)
        driver(scenario, host, port, WARMUP_S, folder)
        _measure_loaded(run, service, scenario, driver, host, port, duration_s, folder)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        run.failed = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"  FAILED {server.name} {scenario.name}: {exc}", file=sys.stderr)
    finally:
        if service is not None:
            service.stop()
    return run


def _measure_loaded(run: Run, service: Service, scenario: Scenario, driver: Callable[..., Load], host: str,
                    port: int, duration_s: float, folder: Path) -> None:
    """Snapshot CPU counters, run the load, snapshot again; fill `run` in."""
    workers = service.workers()
    master_before = cpu_ticks(service.pid)
    workers_before = {pid: cpu_ticks(pid) for pid in workers}
    busy_before = machine_busy_ticks()
    started_at = time.monotonic()
    load = driver(scenario, host, port, duration_s, folder)
    elapsed_s = time.monotonic() - started_at
    busy_s = (machine_busy_ticks() - busy_before) / CLK_TCK
    workers = service.workers()
    master_s = (cpu_ticks(service.pid) - master_before) / CLK_TCK
    # A worker that appeared during the run (a replacement) counts from zero.
    workers_s = sum(cpu_ticks(pid) - workers_before.get(pid, 0) for pid in workers) / CLK_TCK
    run.rss_master_mb = rss_mb(service.pid)
    run.rss_workers_mb = [rss_mb(pid) for pid in workers]
    run.peak_master_mb = rss_mb(service.pid, "VmHWM:")
    run.peak_workers_mb = max([rss_mb(pid, "VmHWM:") for pid in workers] or [0.0])
    requests = max(load.requests, 1)
    run.req_s = load.requests_per_s
    run.mib_s = run.req_s * max(scenario.body_bytes, scenario.response_bytes) / MIB if scenario.reports_throughput else 0.0
    run.p50_ms, run.p99_ms = load.p50_ms, load.p99_ms
    run.non_2xx, run.errors = load.non_2xx, load.errors
    run.master_us_req = master_s / requests * 1e6
    run.master_cpu_pct = 100 * master_s / elapsed_s
    run.server_us_req = (master_s + workers_s) / requests * 1e6
    run.client_cpu_pct = 100 * load.client_cpu_s / elapsed_s
    run.other_cpu_pct = 100 * (busy_s - master_s - workers_s - load.client_cpu_s) / elapsed_s


# ---- the yardstick for big bodies: the same bytes over a bare local socket --------------------

def socket_copy_mib_s(family: str, body_bytes: int, seconds: float = 1.0) -> float:
    """MiB/s of sending `body_bytes` messages from this process to a forked reader that
    acknowledges each one with a byte: the request path of body-5m with nothing in it."""
    if family == "unix":
        sender, reader = socket.socketpair()
        listener = None
    else:
        listener = socket.create_server(("127.0.0.1", 0))
        sender = socket.create_connection(listener.getsockname())
        reader, _ = listener.accept()
    pid = os.fork()
    if pid == 0:  # the reader: count bytes, ack each message, exit at EOF
        sender.close()
        code = _read_and_ack(reader, body_bytes)
        os._exit(code)
    reader.close()
    body = b"x" * body_bytes
    messages = 0
    started_at = time.perf_counter()
    try:
        while time.perf_counter() - started_at < seconds:
            sender.sendall(body)
            if not sender.recv(1):
                break
            messages += 1
        elapsed_s = time.perf_counter() - started_at
    finally:
        sender.close()
        if listener is not None:
            listener.close()
        _reap(pid)
    return messages * body_bytes / MIB / elapsed_s


def _read_and_ack(sock: socket.socket, body_bytes: int) -> int:
    buffer = bytearray(256 * 1024)
    left = body_bytes
    while True:
        n = sock.recv_into(buffer)
        if n == 0:
            return 0
        left -= n
        if left <= 0:
            sock.sendall(b"k")
            left = body_bytes


def _reap(pid: int) -> None:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)  # a poll interval
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


# ---- the table ------------------------------------------------------------------------------

COLUMNS = [  # header, formatter of a Run
    ("server", lambda r: r.server),
    ("scenario", lambda r: r.scenario),
    ("req/s", lambda r: f"{r.req_s:,.0f}"),
    ("MiB/s", lambda r: f"{r.mib_s:,.0f}" if r.mib_s else ""),
    ("p50 ms", lambda r: f"{r.p50_ms:.2f}"),
    ("p99 ms", lambda r: f"{r.p99_ms:.2f}"),
    ("non-2xx", lambda r: str(r.non_2xx)),
    ("sock err", lambda r: str(r.errors)),
    ("master µs/req", lambda r: f"{r.master_us_req:.0f}"),
    ("master CPU%", lambda r: f"{r.master_cpu_pct:.0f}"),
    ("server µs/req", lambda r: f"{r.server_us_req:.0f}"),
    ("RSS master MB", lambda r: f"{r.rss_master_mb:.1f}"),
    ("RSS workers MB", lambda r: " ".join(f"{mb:.1f}" for mb in r.rss_workers_mb)),
    ("peak RSS m/w MB", lambda r: f"{r.peak_master_mb:.0f}/{r.peak_workers_mb:.0f}"),
    ("client CPU%", lambda r: f"{r.client_cpu_pct:.0f}"),
    ("others CPU%", lambda r: f"{r.other_cpu_pct:.0f}"),
]


def markdown_table(headers: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def run_row(run: Run) -> List[str]:
    if run.failed:
        return [run.server, run.scenario, "FAILED: " + run.failed[:60]] + [""] * (len(COLUMNS) - 3)
    return [fmt(run) for _, fmt in COLUMNS]


def median_run(runs: List[Run]) -> Run:
    """A Run whose every figure is the median over `runs` (errors: the total)."""
    ok = [r for r in runs if not r.failed]
    if not ok:
        return runs[0]
    med = lambda attr: statistics.median(getattr(r, attr) for r in ok)  # noqa: E731
    return Run(
        ok[0].server, ok[0].scenario, 0, req_s=med("req_s"), mib_s=med("mib_s"), p50_ms=med("p50_ms"),
        p99_ms=med("p99_ms"), non_2xx=sum(r.non_2xx for r in ok), errors=sum(r.errors for r in ok),
        master_us_req=med("master_us_req"), master_cpu_pct=med("master_cpu_pct"), server_us_req=med("server_us_req"),
        rss_master_mb=med("rss_master_mb"), peak_master_mb=med("peak_master_mb"),
        peak_workers_mb=med("peak_workers_mb"),
        rss_workers_mb=[statistics.median(max(r.rss_workers_mb or [0.0]) for r in ok)],
        client_cpu_pct=med("client_cpu_pct"), other_cpu_pct=med("other_cpu_pct"))


def same_round_ratios(runs: List[Run], scenario: str, figure: Callable[[Run], float],
                      other: str = "gunicorn") -> List[float]:
    """figure(minirr) / figure(other) for each round in which both ran `scenario`."""
    by_round: Dict[int, Dict[str, float]] = {}
    for r in runs:
        if r.scenario == scenario and not r.failed and figure(r):
            by_round.setdefault(r.round, {})[r.server] = figure(r)
    return [pair["minirr"] / pair[other] for pair in by_round.values() if "minirr" in pair and other in pair]


def ratio_lines(runs: List[Run], scenarios: List[Scenario]) -> List[str]:
    """Per scenario: the req/s ratio, and the ratio of server CPU per request, which
    other people's load on the machine disturbs far less than req/s."""
    lines = []
    for scenario in scenarios:
        speed = same_round_ratios(runs, scenario.name, lambda r: r.req_s)
        cost = same_round_ratios(runs, scenario.name, lambda r: 1e6 / r.server_us_req if r.server_us_req else 0.0)
        if speed:
            lines.append(f"- {scenario.name}: minirr/gunicorn req/s = {statistics.median(speed):.2f}x "
                         f"(rounds: {', '.join(f'{x:.2f}' for x in speed)}); requests per server CPU-second "
                         f"= {statistics.median(cost):.2f}x (rounds: {', '.join(f'{x:.2f}' for x in cost)})")
        speed = same_round_ratios(runs, scenario.name, lambda r: r.req_s, "base")
        master = same_round_ratios(runs, scenario.name, lambda r: r.master_us_req, "base")
        cost = same_round_ratios(runs, scenario.name, lambda r: r.server_us_req, "base")
        if speed:
            rounds = lambda xs: ", ".join(f"{x:.3f}" for x in xs)  # noqa: E731
            lines.append(f"- {scenario.name}: minirr/base req/s = {statistics.median(speed):.3f}x "
                         f"(rounds: {rounds(speed)}); master µs/req = {statistics.median(master):.3f}x "
                         f"(rounds: {rounds(master)}); server µs/req = {statistics.median(cost):.3f}x")
    return lines


def access_log_line(runs: List[Run]) -> List[str]:
    """What the access log costs: hello-accesslog against hello-keepalive, minirr, per round."""
    by_round: Dict[int, Dict[str, float]] = {}
    for r in runs:
        if r.server == "minirr" and not r.failed and r.scenario in ("hello-keepalive", "hello-accesslog"):
            by_round.setdefault(r.round, {})[r.scenario] = r.req_s
    ratios = [pair["hello-accesslog"] / pair["hello-keepalive"] for pair in by_round.values() if len(pair) == 2]
    if not ratios:
        return []
    return [f"- access log on/off (hello-accesslog/hello-keepalive req/s): {statistics.median(ratios):.3f}x "
            f"(rounds: {', '.join(f'{x:.3f}' for x in ratios)})"]


def summary_text(runs: List[Run], scenarios: List[Scenario], copy_rates: Dict[str, float]) -> str:
    headers = ["RSS worker MB (max)" if h == "RSS workers MB" else h for h, _ in COLUMNS]
    groups: Dict[Tuple[str, str], List[Run]] = {}
    for r in runs:
        groups.setdefault((r.scenario, r.server), []).append(r)
    rows = [run_row(median_run(group)) for group in groups.values()]
    parts = ["Medians over rounds (non-2xx and sock err: totals):", "", markdown_table(headers, rows), ""]
    parts += ratio_lines(runs, scenarios)
    parts += access_log_line(runs)
    body_runs = [median_run(g) for (s, srv), g in groups.items() if srv == "minirr" and SCENARIOS[s].reports_throughput]
    for run in body_runs:
        for family, rate in copy_rates.items():
            parts.append(f"- {run.scenario}: bare {family} socket copy {rate:,.0f} MiB/s, minirr {run.mib_s:,.0f} "
                         f"MiB/s -> the copy is {rate / run.mib_s if run.mib_s else float('inf'):.1f}x faster "
                         f"(target: within 3x)")
    return "\n".join(parts)


# ---- main ---------------------------------------------------------------------------------

def machine_description() -> List[str]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_gb = int(f.readline().split()[1]) / 1024 / 1024
    return [f"machine: {os.cpu_count()} CPUs ({model}), {mem_gb:.0f} GB RAM, Linux {platform.release()}",
            f"python: {platform.python_version()} ({sys.executable})",
            f"load average at start: {load_average()}"]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="minirr benchmark suite (loopback only; run by hand)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per run (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--against", choices=["gunicorn"], help="also run gunicorn sync with the same app")
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help=f"comma list (default {DEFAULT_SCENARIOS})")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per server (default 2)")
    parser.add_argument("--driver", choices=["auto", "wrk", "loadgen"], default="auto",
                        help="load driver: wrk when on PATH (auto), or the stdlib loadgen.py")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"gunicorn's venv (default {DEFAULT_VENV})")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (configs, server logs)")
    parser.add_argument("--baseline", type=Path, metavar="TREE",
                        help="also run the minirr of another checkout (e.g. a `git worktree` of the commit before a "
                             "change) in the same rounds, as server `base`, and print new/base ratios")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios.split(",") if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    return args


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM and Ctrl-C unwind through every `finally`


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # Both explicitly: a shell starting us with `&` hands us SIGINT ignored.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    scenarios = [SCENARIOS[name] for name in args.scenarios.split(",")]
    driver_name = args.driver if args.driver != "auto" else ("wrk" if shutil.which("wrk") else "loadgen")
    print("\n".join(machine_description()))
    print(f"driver: {driver_name}" + ("" if driver_name == "wrk" else " (wrk not on PATH)"))
    servers: List[Server] = [Minirr(args.workers)]
    if args.baseline is not None:
        servers.append(Minirr(args.workers, root=args.baseline.resolve(), name="base"))
        print(f"baseline: {args.baseline.resolve()}")
    if args.against == "gunicorn":
        executable = install_gunicorn(args.venv)
        if executable is not None:
            servers.append(Gunicorn(executable, args.workers))
            print(f"gunicorn: {gunicorn_version(executable)}, sync, {args.workers} workers")
    work = Path(tempfile.mkdtemp(prefix="minirr-bench-"))
    demo: Optional[DemoServices] = None
    runs: List[Run] = []
    try:
        if any(s.name == "demo" for s in scenarios):
            scenarios, demo = _start_demo(scenarios, servers, work)
        copy_rates = _copy_rates(scenarios)
        _run_rounds(args, scenarios, servers, DRIVERS[driver_name], work, runs)
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        if demo is not None:
            demo.stop()
        if args.json:
            args.json.write_text(json.dumps([r.__dict__ for r in runs], indent=1))
        if args.keep:
            print(f"kept configs and logs in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(summary_text(runs, scenarios, copy_rates))
    print(f"load average at end: {load_average()}")
    return 0


def _start_demo(scenarios: List[Scenario], servers: List[Server], work: Path):
    if not DemoServices.present():
        print("demo: skipped: doubles not present (tests/doubles/vault_double.py, flipt_double.py, demo_app.py)")
        return [s for s in scenarios if s.name != "demo"], None
    demo = DemoServices(work / "demo-services")
    demo.folder.mkdir(parents=True)
    try:
        env = demo.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        demo.stop()
        print(f"demo: skipped: the doubles did not start: {exc}")
        return [s for s in scenarios if s.name != "demo"], None
    for server in servers:
        if isinstance(server, Minirr):
            server.extra_env = env
    print(f"demo: Vault and Flipt doubles running, VAULT_HOST={env.get('VAULT_HOST')}")
    return scenarios, demo


def _copy_rates(scenarios: List[Scenario]) -> Dict[str, float]:
    body = max((s.body_bytes for s in scenarios if s.reports_throughput), default=0)
    if not body:
        return {}
    rates = {family: statistics.median(socket_copy_mib_s(family, body) for _ in range(3)) for family in ("unix", "tcp")}
    print(f"socket copy of {body // MIB} MiB messages: " + ", ".join(f"{f} {r:,.0f} MiB/s" for f, r in rates.items()))
    return rates


def progress_line(cells: List[str]) -> str:
    """A table row padded to the header widths, printed as each run finishes."""
    widths = [max(len(header), 9) for header, _ in COLUMNS]
    return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"


def _run_rounds(args, scenarios: List[Scenario], servers: List[Server], driver, work: Path, runs: List[Run]) -> None:
    print()
    print(progress_line([header for header, _ in COLUMNS]) + " round | load avg")
    for round_no in range(1, args.repeat + 1):
        for scenario in scenarios:
            for server in servers:
                if server.kind not in scenario.servers:
                    continue
                folder = work / f"r{round_no}-{scenario.name}-{server.name}"
                run = measure(server, scenario, round_no, args.duration, driver, folder)
                runs.append(run)
                print(progress_line(run_row(run)), f"{round_no} | {run.load_avg}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
