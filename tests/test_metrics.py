"""Metrics (minirr.master.metrics): the three kinds, the exposition text, ServerMetrics' events.

The text is checked line by line against the text exposition format 0.0.4 by
`parse_exposition` (test_status_metrics.py uses it on a live server's /metrics):
https://prometheus.io/docs/instrumenting/exposition_formats/#text-format-details
"""

from __future__ import annotations

import math
import re

import pytest

from minirr.master import metrics
from minirr.master.metrics import DURATION_BUCKETS_S, Counter, Gauge, Histogram, ServerMetrics, format_value

# ---- the exposition grammar ---------------------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"(?:[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)"
HELP_RE = re.compile(rf"^# HELP ({NAME}) ((?:[^\\\n]|\\[\\n])*)$")
TYPE_RE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")
SAMPLE_RE = re.compile(rf"^({NAME})(\{{{LABEL}(?:,{LABEL})*,?\}})? ({VALUE})(?: -?\d+)?$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_exposition(text: str) -> dict:
    """Check every line against the grammar and the family rules; return
    {family: {"type": t, "help": h, "samples": [(name, {label: value}, float)]}}."""
    assert text.endswith("\n"), "the text ends with a line feed"
    families: dict = {}
    current = None
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if m := HELP_RE.match(line):
            assert m.group(1) not in families or "help" not in families[m.group(1)], f"second HELP, {where}"
            current = families.setdefault(m.group(1), {"samples": []})
            current["help"] = m.group(2)
            current["name"] = m.group(1)
        elif m := TYPE_RE.match(line):
            family = families.setdefault(m.group(1), {"samples": [], "name": m.group(1)})
            assert "type" not in family and not family["samples"], f"TYPE after samples or twice, {where}"
            family["type"] = m.group(2)
            current = family
        elif m := SAMPLE_RE.match(line):
            assert current is not None, f"sample before any HELP/TYPE, {where}"
            name, base = m.group(1), current["name"]
            allowed = {base} | ({base + s for s in ("_bucket", "_sum", "_count")}
                               if current.get("type") == "histogram" else set())
            assert name in allowed, f"sample {name} outside its family {base}, {where}"
            labels = dict(LABEL_RE.findall(m.group(2) or ""))
            current["samples"].append((name, labels, float(m.group(3))))
        else:
            raise AssertionError(f"not in the exposition grammar, {where}")
    for name, family in families.items():
        keys = [(s[0], tuple(sorted(s[1].items()))) for s in family["samples"]]
        assert len(keys) == len(set(keys)), f"{name}: a label set appears twice"
        assert "help" in family and "type" in family, f"{name}: HELP and TYPE both present"
    return families


def check_histogram(family: dict) -> None:
    buckets = [(s[1]["le"], s[2]) for s in family["samples"] if s[0].endswith("_bucket")]
    bounds = [float(le) for le, _ in buckets]
    counts = [count for _, count in buckets]
    assert bounds == sorted(bounds) and math.isinf(bounds[-1]), "le ascending, ending with +Inf"
    assert counts == sorted(counts), "bucket counts are cumulative"
    (count,) = [s[2] for s in family["samples"] if s[0].endswith("_count")]
    assert counts[-1] == count


# ---- the registry and the text ----------------------------------------------------------------------

def test_format_value():
    assert [format_value(v) for v in (3, 0.25, float("inf"), float("-inf"), 1e20)] == \
        ["3", "0.25", "+Inf", "-Inf", "1e+20"]
    assert format_value(float("nan")) == "NaN"


def test_escaping_and_families_parse():
    c = Counter("x_total", 'help with \\ and\nnewline', ("path",))
    c.inc(('a"b\\c\nd',), 2)
    g = Gauge("y", "a gauge")
    g.set(1.5)
    h = Histogram("z_seconds", "a histogram", (0.1, 1))
    for v in (0.05, 0.5, 5):
        h.observe(v)
    text = metrics.render([c, g, h])
    families = parse_exposition(text)
    assert families["x_total"]["help"] == "help with \\\\ and\\nnewline"
    assert families["x_total"]["samples"] == [("x_total", {"path": 'a\\"b\\\\c\\nd'}, 2.0)]
    check_histogram(families["z_seconds"])
    assert 'z_seconds_bucket{le="1"} 2' in text and "z_seconds_sum 5.55" in text


def test_server_metrics_render():
    m = ServerMetrics()
    m.request_answered(200, 0.003)
    m.request_answered(503, 20.0)
    m.worker_restarted("ttl")
    m.no_free_worker()
    text = m.render({"ready": 2, "working": 1}, 4, 3, {4121: 2048}, 12.5)
    families = parse_exposition(text)
    samples = {(s[0], tuple(s[1].items())): s[2] for f in families.values() for s in f["samples"]}
    assert samples[("minirr_requests_total", (("status", "503"),))] == 1
    assert samples[("minirr_workers", (("state", "working"),))] == 1
    assert samples[("minirr_workers", (("state", "stopping"),))] == 0
    assert samples[("minirr_worker_memory_bytes", (("pid", "4121"),))] == 2048
    assert samples[("minirr_worker_restarts_total", (("reason", "ttl"),))] == 1
    assert samples[("minirr_worker_restarts_total", (("reason", "crash"),))] == 0
    assert samples[("minirr_queue_length", ())] == 4
    assert samples[("minirr_requests_in_flight", ())] == 3
    assert samples[("minirr_no_free_workers_total", ())] == 1
    assert samples[("minirr_uptime_seconds", ())] == 12.5
    check_histogram(families["minirr_request_duration_seconds"])
    with pytest.raises(ValueError):
        m.requests.inc(())                       # a label is required


# ---- ServerMetrics.request_answered: the inlined counter and histogram ------------------------------

DURATIONS = [0.0, 0.005, 0.0050001, 0.02, 0.1, 2.5, 9.99, 10.0, 10.5, 1e6]


def test_request_answered_agrees_with_counter_inc_and_histogram_observe():
    fast = ServerMetrics()
    plain_requests = Counter("minirr_requests_total", "x", ("status",))
    plain_duration = Histogram("minirr_request_duration_seconds", "x", DURATION_BUCKETS_S)
    for i, duration in enumerate(DURATIONS):
        status = (200, 404, 503)[i % 3]
        fast.request_answered(status, duration)
        plain_requests.inc((str(status),))
        plain_duration.observe(duration)
    assert fast.requests.values == plain_requests.values
    assert fast.duration.bucket_counts == plain_duration.bucket_counts
    assert (fast.duration.sum, fast.duration.count) == (plain_duration.sum, plain_duration.count)
    assert fast.duration.samples() == plain_duration.samples()


def test_request_answered_counts_bucket_bounds_as_inclusive():
    m = ServerMetrics()
    m.request_answered(200, 0.005)                       # le="0.005" includes 0.005
    m.request_answered(200, 0.0051)
    text = m.render({}, 0, 0, {}, 0.0)
    assert 'minirr_request_duration_seconds_bucket{le="0.005"} 1\n' in text
    assert 'minirr_request_duration_seconds_bucket{le="0.01"} 2\n' in text


def test_a_status_seen_first_is_rendered_with_its_count():
    m = ServerMetrics()
    assert "minirr_requests_total{" not in m.render({}, 0, 0, {}, 0.0)
    m.request_answered(418, 0.1)
    m.request_answered(418, 0.1)
    families = parse_exposition(m.render({}, 0, 0, {}, 0.0))
    assert families["minirr_requests_total"]["samples"] == [("minirr_requests_total", {"status": "418"}, 2.0)]


def test_counters_only_go_up_and_take_their_labels():
    c = Counter("c_total", "a counter", ("a",))
    with pytest.raises(ValueError, match="only goes up"):
        c.inc(("x",), -1)
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(("x", "y"))
    c.inc(["x"])                                         # a list is checked and keyed as a tuple
    c.inc(("x",))
    assert c.get(("x",)) == 2 and c.get(("never",)) == 0


def test_gauge_replace_drops_label_sets_not_given():
    g = Gauge("g", "a gauge", ("pid",))
    g.replace({("1",): 5, ("2",): 6})
    g.replace({("2",): 7})
    assert g.values == {("2",): 7.0}
