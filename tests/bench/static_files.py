"""Static files: minirr's master (a [static] mount, sendfile) against nginx and against
WhiteNoise under gunicorn's sync workers, a 4 KiB and a 10 MiB file, in the same rounds.

Owns: a folder with the two files, the three servers' configs, interleaved rounds (each
round runs every server on every file, so that the machine's mood affects them alike),
and the table: requests/s and MiB/s, and minirr's ratio to each within the round.
Never: runs in CI, talks to anything but loopback, or leaves a process behind (run.py's
Service stops each server, and its children, in a `finally`).

    python tests/bench/static_files.py                       # 5 s x 3 rounds, wrk if installed
    python tests/bench/static_files.py --duration 10 --repeat 5 --driver loadgen

Needs: nginx on PATH (`apt-get install nginx-light`; it is for this benchmark only), and
gunicorn + whitenoise in a venv (`--venv`, made and filled from PyPI on first use). A
server that cannot be had is skipped, and said so. The goals in the brief that asked for
this: at least half of nginx's rate, at least twice WhiteNoise's.

The fair reading: minirr's master is one process on one core; nginx runs with
`worker_processes 1` for the same reason, and gunicorn with as many sync workers as
minirr has (2), each of which serves one connection at a time and closes it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from run import BENCH_DIR, MIB, ROOT, DRIVERS, Load, Scenario, Service  # noqa: E402  (a sibling file)

FILES = {"4k": 4 * 1024, "10m": 10 * MIB}
CONNECTIONS = {"4k": 32, "10m": 8}
DEFAULT_VENV = Path(tempfile.gettempdir()) / "minirr-bench" / "whitenoise-venv"
WORKERS = 2

NGINX_CONF = """daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/nginx.error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {folder}/tmp-body;
    proxy_temp_path {folder}/tmp-proxy;
    fastcgi_temp_path {folder}/tmp-fastcgi;
    uwsgi_temp_path {folder}/tmp-uwsgi;
    scgi_temp_path {folder}/tmp-scgi;
    types {{ application/octet-stream bin; }}
    server {{
        listen 127.0.0.1:{port};
        location /static/ {{ alias {folder}/files/; }}
    }}
}}
"""
WHITENOISE_APP = '''from whitenoise import WhiteNoise


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!"]


app = WhiteNoise(hello, root={root!r}, prefix="static/")
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_files(folder: Path) -> None:
    files = folder / "files"
    files.mkdir()
    for name, size in FILES.items():
        (files / f"{name}.bin").write_bytes(os.urandom(size))


def start_minirr(folder: Path) -> Tuple[Service, str, int]:
    config = folder / "rr.ini"
    config.write_text("\n".join([
        "[server]", "app = apps:hello_wsgi", "interface = wsgi",
        "[http]", "address = 127.0.0.1:0",
        "[pool]", f"num_workers = {WORKERS}",
        "[logs]", "access_log = false",
        "[rpc]", f"listen = unix:{folder / 'rpc.sock'}",
        "[static]", "url = /static/", f"dir = {folder / 'files'}", ""]))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(BENCH_DIR)]))
    service = Service("minirr", [sys.executable, "-m", "minirr", "serve", "-c", str(config)], folder, env)
    match = service.wait_for_line(r"minirr listening on http://([\d.]+):(\d+)")
    return service, match.group(1), int(match.group(2))


def start_nginx(folder: Path) -> Optional[Tuple[Service, str, int]]:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        print("skipped nginx: not installed (apt-get install nginx-light)")
        return None
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(NGINX_CONF.format(folder=folder, port=port))
    service = Service("nginx", [nginx, "-c", str(conf), "-p", str(folder)], folder)
    wait_listening(service, port)
    return service, "127.0.0.1", port


def start_whitenoise(folder: Path, venv: Path) -> Optional[Tuple[Service, str, int]]:
    gunicorn = install_whitenoise(venv)
    if gunicorn is None:
        return None
    (folder / "wn_app.py").write_text(WHITENOISE_APP.format(root=str(folder / "files")))
    port = free_port()
    cmd = [str(gunicorn), "--workers", str(WORKERS), "--worker-class", "sync", "--bind", f"127.0.0.1:{port}",
           "--chdir", str(folder), "--log-level", "warning", "--graceful-timeout", "5", "wn_app:app"]
    help_text = subprocess.run([str(gunicorn), "--help"], capture_output=True, text=True, timeout=60).stdout
    if "--no-control-socket" in help_text:
        cmd.insert(1, "--no-control-socket")
    service = Service("whitenoise", cmd, folder)
    wait_listening(service, port)
    return service, "127.0.0.1", port


def install_whitenoise(venv: Path) -> Optional[Path]:
    gunicorn = venv / "bin" / "gunicorn"
    probe = [str(venv / "bin" / "python"), "-c", "import whitenoise, gunicorn"]
    if gunicorn.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return gunicorn
    print(f"installing gunicorn and whitenoise into {venv} ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "gunicorn", "whitenoise"], check=True,
                       timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"skipped whitenoise: {exc}")
        return None
    return gunicorn


def wait_listening(service: Service, port: int, timeout_s: float = 20.0) -> None:
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.name} exited with status {service.proc.returncode}:\n{service.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)             # a poll interval
    raise RuntimeError(f"{service.name} is not listening on {port} after {timeout_s}s:\n{service.log_tail()}")


def check_answer(host: str, port: int, name: str) -> None:
    """One GET: the whole file, before any load (a server that answers 404 fast is no result)."""
    import http.client
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", f"/static/{name}.bin")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200 or len(body) != FILES[name]:
        raise RuntimeError(f"GET /static/{name}.bin answered {response.status} with {len(body)} bytes")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds")
    parser.add_argument("--driver", choices=("auto", "wrk", "loadgen"), default="auto")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="gunicorn + whitenoise's venv")
    args = parser.parse_args(argv)
    driver_name = args.driver if args.driver != "auto" else ("wrk" if shutil.which("wrk") else "loadgen")
    drive = DRIVERS[driver_name]
    folder = Path(tempfile.mkdtemp(prefix="minirr-bench-static-"))
    folder.chmod(0o755)                  # nginx's worker reads it as another user
    make_files(folder)
    services: Dict[str, Tuple[Service, str, int]] = {}
    results: Dict[Tuple[str, str], List[Load]] = {}
    try:
        services["minirr"] = start_minirr(folder)
        for name, starter in (("nginx", lambda: start_nginx(folder)),
                              ("whitenoise", lambda: start_whitenoise(folder, args.venv))):
            started = starter()
            if started is not None:
                services[name] = started
        for _, host, port in services.values():
            for name in FILES:
                check_answer(host, port, name)
        print(f"driver {driver_name}, {args.duration:g} s a run, {args.repeat} rounds, servers: {', '.join(services)}")
        for round_no in range(1, args.repeat + 1):
            for name in FILES:
                for server, (_, host, port) in services.items():
                    scenario = Scenario(f"static-{name}", "", path=f"/static/{name}.bin",
                                        connections=CONNECTIONS[name], response_bytes=FILES[name])
                    load = drive(scenario, host, port, args.duration, folder)
                    results.setdefault((server, name), []).append(load)
                    print(f"  round {round_no} {name:>4} {server:<10} {load.requests_per_s:10.0f} req/s "
                          f"{load.requests_per_s * FILES[name] / MIB:9.1f} MiB/s  p50 {load.p50_ms:.2f} ms  "
                          f"p99 {load.p99_ms:.2f} ms  non-2xx {load.non_2xx}  errors {load.errors}")
    finally:
        for service, _, _ in services.values():
            service.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print_summary(results, args.repeat)
    return 0


def print_summary(results: Dict[Tuple[str, str], List[Load]], rounds: int) -> None:
    print("\nmedian of the rounds; ratios are minirr's, taken within each round, then the median")
    for name in FILES:
        line = []
        for server in ("minirr", "nginx", "whitenoise"):
            runs = results.get((server, name))
            if runs:
                rate = statistics.median(load.requests_per_s for load in runs)
                line.append(f"{server} {rate:.0f} req/s ({rate * FILES[name] / MIB:.1f} MiB/s)")
        for other, goal in (("nginx", 0.5), ("whitenoise", 2.0)):
            if (other, name) in results:
                ratios = [mine.requests_per_s / theirs.requests_per_s
                          for mine, theirs in zip(results[("minirr", name)], results[(other, name)])
                          if theirs.requests_per_s]
                if ratios:
                    line.append(f"minirr/{other} {statistics.median(ratios):.2f}x (goal >= {goal:g}x)")
        print(f"  {name:>4}: " + "; ".join(line))


if __name__ == "__main__":
    sys.exit(main())
