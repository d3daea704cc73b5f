"""The cli's side of the control socket (minirr.remote): the pure presentation of the
workers table (human units, relative times). The commands against a live server are
tests/test_control.py's."""

from __future__ import annotations

import pytest

from minirr import remote


def test_table_formatting():
    rows = [{"pid": 4121, "status": "ready", "execs": 12, "in_flight": 0, "memory_bytes": 22 * 1024 * 1024 + 300 * 1024,
             "cpu_percent": 1.25, "created_at": 1000.0},
            {"pid": 77, "status": "working", "execs": 3, "in_flight": 40, "memory_bytes": 900, "cpu_percent": 0,
             "created_at": 1000.0 - 7200}]
    lines = remote.format_table(rows, now_epoch=1000.0 + 130).splitlines()
    assert lines[0].split() == ["PID", "Status", "Execs", "In-flight", "Memory", "CPU%", "Created"]
    assert lines[1].split() == ["4121", "ready", "12", "0", "22.3", "MB", "1.2", "2", "minutes", "ago"]
    assert lines[2].split() == ["77", "working", "3", "40", "900", "B", "0.0", "2", "hours", "ago"]
    assert remote.relative_time(0.5) == "just now" and remote.relative_time(61) == "1 minute ago"
    assert remote.human_bytes(1536) == "1.5 KB" and remote.human_bytes(3 * 1024 ** 3) == "3.0 GB"


@pytest.mark.parametrize("count,shown", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KB"), (1536, "1.5 KB"), (1024 ** 2 - 1, "1024.0 KB"),
    (5 * 1024 ** 2, "5.0 MB"), (1024 ** 3, "1.0 GB"), (3 * 1024 ** 4, "3072.0 GB"),
])
def test_human_bytes(count, shown):
    assert remote.human_bytes(count) == shown


@pytest.mark.parametrize("seconds,shown", [
    (-5, "just now"), (0, "just now"), (1.9, "just now"), (2, "2 seconds ago"), (59, "59 seconds ago"),
    (60, "1 minute ago"), (119, "1 minute ago"), (120, "2 minutes ago"), (3600, "1 hour ago"),
    (86399, "23 hours ago"), (86400, "1 day ago"), (10 * 86400, "10 days ago"),
])
def test_relative_time(seconds, shown):
    assert remote.relative_time(seconds) == shown


def test_an_empty_table_is_its_header():
    assert remote.format_table([], 0.0) == "PID  Status  Execs  In-flight  Memory  CPU%  Created\n"


def test_columns_are_as_wide_as_their_widest_cell():
    rows = [{"pid": 1, "status": "stopping", "execs": 123456, "memory_bytes": 0, "cpu_percent": 100.0,
             "created_at": 0.0}]
    header, row = remote.format_table(rows, 0.0).splitlines()
    assert header.index("Status") == row.index("stopping") and header.index("Execs") == row.index("123456")
