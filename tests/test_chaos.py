"""Twenty seconds of everything at once, on loopback: reloads, killed workers, workers that
break the protocol, clients that stall, never read, vanish or send bodies of 1-byte chunks,
operator peers that pipeline probes and never read — while honest clients check that every
answer they get is their own, and a probe that /health always answers. The master must
come out alive, serving, and no bigger than it went in.

Not in the mix: a worker that sends an unasked-for answer *after* it has been given the
next request. The wire protocol carries no request id, so nothing can tell that frame from
a real answer (RoadRunner cannot either); test_containment.py covers the cases that can be
told apart: a second answer in the same write, and an answer while no request is in flight.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading

from serverproc import ROOT, wait_until

CHAOS_S = 20.0
ROGUE = f"{sys.executable} {ROOT / 'tests' / 'workers' / 'rogue_worker.py'}"
CONFIG = (f"[server]\ncommand = {ROGUE}\n[pool]\nnum_workers = 3\nallocate_timeout = 5s\ndestroy_timeout = 2s\n"
          "[http]\nheader_timeout = 1s\nbody_timeout = 1s\n[logs]\naccess_log = false\n"
          "[status]\naddress = 127.0.0.1:0\n")
TINY_CHUNKS = b"POST /id?t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nX\r\n" * 20_000
PROBE = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
BAD = ["/double", "/headers-list", "/headers-str", "/header-number", "/header-null",
       "/deep-head", "/status-103"]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


class Chaos:
    def __init__(self, srv) -> None:
        self.srv = srv
        self.stop = threading.Event()
        self.rng = random.Random(1234)
        self.answered = 0
        self.wrong = []                   # answers that belonged to another request
        self.unprobed = []                # /health probes that got no answer
        self.errors = []
        line = next(line for line in srv.stdout_lines if "minirr status on" in line)
        host, port = line.rsplit("/", 1)[-1].split(":")
        self.status = (host, int(port))

    def run(self, target, *args) -> threading.Thread:
        def guarded():
            try:
                while not self.stop.is_set():
                    target(*args)
            except Exception as exc:      # a bug in the test itself must not pass silently
                self.errors.append(repr(exc))
        thread = threading.Thread(target=guarded)
        thread.start()
        return thread

    # ---- honest clients: every 200 must carry the client's own id -----------------------
    def honest(self, name: str) -> None:
        token = f"{name}-{self.rng.random()}"
        try:
            status, _, body = self.srv.request("GET", f"/id?{token}", timeout=15)
        except OSError:
            return                        # a reset during a kill: allowed; a wrong answer is not
        if status == 200:
            self.answered += 1
            if body != token.encode():
                self.wrong.append((token, body[:80]))

    # ---- a liveness probe, as a kubelet sends it: one request, a new connection, 5 s ---------
    def probe(self) -> None:
        try:
            with socket.create_connection(self.status, timeout=5) as sock:
                sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if not sock.recv(4096).startswith(b"HTTP/1.1 "):
                    self.unprobed.append("closed without an answer")
        except OSError as exc:
            self.unprobed.append(repr(exc))
        self.stop.wait(0.2)

    # ---- workers that break the protocol ---------------------------------------------------
    def rogue(self) -> None:
        try:
            self.srv.request("GET", self.rng.choice(BAD), timeout=15)
        except OSError:
            pass

    # ---- the operator and the kernel ---------------------------------------------------------
    def reloads(self) -> None:
        self.srv.send_signal(signal.SIGHUP)
        self.stop.wait(2.0)

    def kills(self) -> None:
        workers = self.srv.workers()
        if workers:
            try:
                os.kill(self.rng.choice(workers), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stop.wait(1.5)

    # ---- clients that stall, never read, or vanish --------------------------------------------
    def stallers(self) -> None:
        try:
            with socket.create_connection((self.srv.host, self.srv.port), timeout=5) as sock:
                kind = self.rng.choice(["half-head", "no-read", "vanish", "trickle-body", "tiny-chunks",
                                        "probes-no-read"])
                if kind == "half-head":
                    sock.sendall(b"GET /id?x HTTP/1.1\r\nHo")
                elif kind == "no-read":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    sock.sendall(b"GET /id?" + b"y" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n" * 50)
                elif kind == "trickle-body":
                    sock.sendall(b"POST /id?z HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
                elif kind == "tiny-chunks":
                    sock.sendall(TINY_CHUNKS)     # refused (400) once its framing passes the allowance
                elif kind == "probes-no-read":
                    self.pile_probes()
                else:
                    sock.sendall(b"GET /id?v HTTP/1.1\r\nHost: x\r\n\r\n")
                self.stop.wait(self.rng.uniform(0.1, 1.5))
        except OSError:
            pass


    def pile_probes(self) -> None:
        """Ten status peers pipeline probes and read nothing, for the staller's wait."""
        peers = []
        try:
            for _ in range(10):
                peer = socket.create_connection(self.status, timeout=5)
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                peer.setblocking(False)
                peers.append(peer)
                try:
                    peer.send(PROBE * 500)
                except BlockingIOError:
                    pass
            self.stop.wait(self.rng.uniform(0.1, 1.5))
        finally:
            for peer in peers:
                peer.close()


def test_twenty_seconds_of_chaos(serve):
    srv = serve(CONFIG)
    srv.wait_workers(3)
    for _ in range(20):                   # warm up before the reference reading
        srv.request("GET", "/id?warm")
    start_mb = rss_mb(srv.proc.pid)
    chaos = Chaos(srv)
    threads = [chaos.run(chaos.honest, f"c{i}") for i in range(4)]
    threads += [chaos.run(chaos.rogue), chaos.run(chaos.reloads), chaos.run(chaos.kills)]
    threads += [chaos.run(chaos.stallers) for _ in range(4)] + [chaos.run(chaos.probe)]
    try:
        chaos.stop.wait(CHAOS_S)
    finally:
        chaos.stop.set()
        for thread in threads:
            thread.join(30)
    assert chaos.errors == []
    assert chaos.wrong == [], f"answers delivered to the wrong request: {chaos.wrong[:5]}"
    assert chaos.answered > 50
    assert chaos.unprobed == [], f"/health probes that got no answer: {chaos.unprobed[:5]}"
    # The storm is over: the master serves, and has let go of what the storm made it hold.
    try:
        wait_until(lambda: srv.request("GET", "/id?after")[2] == b"after", timeout=30, message="a plain answer")
        wait_until(lambda: len(srv.workers()) == 3, timeout=30, message="three workers again")
    except (AssertionError, OSError) as exc:
        raise AssertionError(f"{exc!r}; workers {srv.workers()}; master {srv.proc.poll()}\n{srv.log[-8000:]}") from None
    grown = rss_mb(srv.proc.pid) - start_mb
    assert grown < 16, f"the master is {grown:.1f} MB bigger than before the storm"
    assert "Traceback" not in srv.log, srv.log[-3000:]
    assert srv.stop() == 0
