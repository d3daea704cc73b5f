"""A real browser: headless Chromium (Debian's `chromium`, installed by .ci/run) opens a page
served by minirr; its script echoes text (one message larger than a worker's 64 KiB pieces,
so it comes back in fragments) and bytes through a WebSocket with a subprotocol, checks what
came back, and reports the result in a request back to the server, which the test reads in
the log. Skipped, saying why, without chromium."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest

from serverproc import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-sync", "--disable-component-update"]


def group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    return True
            except ProcessLookupError:
                pass
    return False


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed: `apt-get install chromium` to run the "
                                             "browser test (.ci/run installs it)")
def test_headless_chromium_echoes_through_a_websocket(serve, tmp_path):
    srv = serve("[server]\napp = websocket_testapp:app\n[pool]\nnum_workers = 1\n")
    srv.wait_workers(1)
    browser = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"{srv.url}/"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        [line] = srv.wait_for_log(r"browser reported ", timeout=60)
    finally:
        os.killpg(browser.pid, signal.SIGKILL)          # chromium and every process it started (its group)
        browser.wait(10)
        wait_until(lambda: not group_alive(browser.pid), message="chromium's processes to exit")
    assert line.endswith("browser reported echo ok 4 protocol=chat"), srv.log
    srv.wait_for_log(r'"GET /echo-log/browser HTTP/1\.1" 101 \d+ [\d.]+ms pid=\d+ websocket in=4 out=4 close=1000 '
                     r'by=client')
    srv.wait_for_log("browser disconnect 1000")
