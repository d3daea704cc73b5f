"""Metrics: counters, gauges and a histogram, rendered in the Prometheus text format 0.0.4.

Owns: minirr's metric names, help texts, label names and buckets (`ServerMetrics`), the
      three metric kinds, and the exposition text.
Never: reads a clock, /proc or a socket. The master pushes events in (a request answered,
       a worker gone) and sets the gauges from its state just before rendering.

The text format (https://prometheus.io/docs/instrumenting/exposition_formats/):

    # HELP minirr_requests_total Requests answered, by HTTP status.
    # TYPE minirr_requests_total counter
    minirr_requests_total{status="200"} 1027
    minirr_request_duration_seconds_bucket{le="0.005"} 1001      (cumulative counts)
    minirr_request_duration_seconds_bucket{le="+Inf"} 1027
    minirr_request_duration_seconds_sum 2.75
    minirr_request_duration_seconds_count 1027

Label values escape \\, " and newline; HELP text escapes \\ and newline. Every metric
family appears once, HELP and TYPE first, then its samples.
"""

from __future__ import annotations

import bisect

import math
from typing import Dict, List, Sequence, Tuple

LabelValues = Tuple[str, ...]

DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RESTART_REASONS = ("crash", "max_jobs", "ttl", "idle_ttl", "memory", "exec_ttl", "reset", "worker_request")
WORKER_STATES = ("starting", "ready", "working", "stopping")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def format_value(value: float) -> str:
    """Go's strconv style that Prometheus parses: integers plainly, +Inf, -Inf, NaN."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{name}="{_escape_label(value)}"' for name, value in zip(names, values))
    return "{" + pairs + "}"


class Metric:
    """A metric family: name, help, type, label names; samples keyed by label values."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self.values: Dict[LabelValues, float] = {}

    def _key(self, labels: Sequence[str]) -> LabelValues:
        key = tuple(map(str, labels))
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {key}")
        return key

    def header(self) -> List[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> List[str]:
        return [f"{self.name}{_labels(self.labelnames, key)} {format_value(value)}"
                for key, value in sorted(self.values.items())]


class Counter(Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        if not self.labelnames:
            self.values[()] = 0.0       # an unlabelled counter is 0 before its first event

    def inc(self, labels: Sequence[str] = (), amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        if type(labels) is tuple and labels in self.values:   # seen before, so valid: skip the checks
            self.values[labels] += amount
            return
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, labels: Sequence[str] = ()) -> float:
        return self.values.get(self._key(labels), 0.0)


class Gauge(Metric):
    kind = "gauge"

    def set(self, value: float, labels: Sequence[str] = ()) -> None:
        self.values[self._key(labels)] = float(value)

    def replace(self, values: Dict[LabelValues, float]) -> None:
        """Set every sample at once; label sets not given disappear (a gone worker's pid)."""
        self.values = {self._key(key): float(value) for key, value in values.items()}


class Histogram(Metric):
    """Unlabelled histogram: per-bucket counts, sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text)
        self.buckets = tuple(sorted(buckets))
        self.bucket_counts = [0] * (len(self.buckets) + 1)   # the last one: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.bucket_counts[bisect.bisect_left(self.buckets, value)] += 1   # the first bound >= value
        self.sum += value
        self.count += 1

    def samples(self) -> List[str]:
        lines = []
        cumulative = 0
        for bound, count in zip(self.buckets, self.bucket_counts):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{format_value(bound)}"}} {cumulative}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {format_value(self.sum)}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


def render(metrics: Sequence[Metric]) -> str:
    """The exposition text of `metrics`, in the order given, ending with a newline."""
    lines: List[str] = []
    for metric in metrics:
        lines += metric.header()
        lines += metric.samples()
    return "\n".join(lines) + "\n"


class ServerMetrics:
    """Every metric minirr exports, with the events that move them."""

    def __init__(self) -> None:
        self._status_labels: Dict[int, Tuple[str]] = {}     # 200 -> ("200",), made once
        self.requests = Counter("minirr_requests_total", "Requests answered, by HTTP status.", ("status",))
        self.duration = Histogram("minirr_request_duration_seconds",
                                  "Time from a complete request to its answer, queue wait included.",
                                  DURATION_BUCKETS_S)
        self.workers = Gauge("minirr_workers", "Worker processes, by state.", ("state",))
        self.memory = Gauge("minirr_worker_memory_bytes", "Resident memory (RSS) of each worker process.", ("pid",))
        self.restarts = Counter("minirr_worker_restarts_total", "Workers replaced, by reason.", ("reason",))
        self.queue = Gauge("minirr_queue_length", "Requests waiting for a free worker.")
        self.in_flight = Gauge("minirr_requests_in_flight", "Requests at a worker now (an async worker holds many).")
        self.no_free_workers = Counter("minirr_no_free_workers_total",
                                       "Requests answered 503 because no worker was free "
                                       "(allocate_timeout, queue full, workers failing to start).")
        self.uptime = Gauge("minirr_uptime_seconds", "Seconds since the master started.")
        self.websockets_open = Gauge("minirr_websockets_open", "WebSockets open now (accepted, not closed).")
        self.websockets_open.set(0)
        self.websocket_messages = Counter("minirr_websocket_messages_total",
                                          "WebSocket messages, by direction: in from clients, out to them.",
                                          ("direction",))
        for direction in ("in", "out"):
            self.websocket_messages.inc((direction,), 0)
        for reason in RESTART_REASONS:          # present from the start: rate() needs a zero
            self.restarts.inc((reason,), 0)

    def request_answered(self, status: int, duration_s: float) -> None:
        """Once per request: Counter.inc and Histogram.observe, written out for speed."""
        labels = self._status_labels.get(status)
        if labels is None:
            labels = self._status_labels[status] = (str(status),)
            self.requests.inc(labels, 0)
        self.requests.values[labels] += 1
        duration = self.duration
        duration.bucket_counts[bisect.bisect_left(duration.buckets, duration_s)] += 1
        duration.sum += duration_s
        duration.count += 1

    def websocket_message(self, direction: str) -> None:
        self.websocket_messages.values[(direction,)] += 1

    def worker_restarted(self, reason: str) -> None:
        self.restarts.inc((reason,))

    def no_free_worker(self) -> None:
        self.no_free_workers.inc()

    def render(self, counts: Dict[str, int], queue_length: int, in_flight: int, memory_by_pid: Dict[int, int],
               uptime_s: float) -> str:
        """Set the gauges from the master's state now, then render everything."""
        self.workers.replace({(state,): counts.get(state, 0) for state in WORKER_STATES})
        self.memory.replace({(str(pid),): rss for pid, rss in memory_by_pid.items()})
        self.queue.set(queue_length)
        self.in_flight.set(in_flight)
        self.uptime.set(uptime_s)
        return render([self.requests, self.duration, self.workers, self.memory, self.restarts,
                       self.queue, self.in_flight, self.no_free_workers, self.uptime, self.websockets_open,
                       self.websocket_messages])
