"""[static] mounts against a live server: the master answers files itself (sendfile), with
validators, 304, ranges and precompressed files; never a byte from outside the folder;
bounded memory for a 1 GiB file and for readers that stop; each answer logged and counted.
The decisions themselves are tests/test_files.py's; the sendfile path is test_connection's."""

from __future__ import annotations

import gzip
import http.client
import os
import re
import signal
import socket

import pytest

from serverproc import ServerProcess, run_cli, wait_until
from wire import stop_module_server

CSS = b"body { color: #123456; }\n" * 40
BIG_BYTES = 3 * 1024 * 1024
CONFIG = """[server]
app = minirr_testapp:create_app
factory = true
[pool]
num_workers = 1
[static]
url = /static/
dir = staticfiles
cache_control = public, max-age=600
[static.media]
url = /media
dir = uploads
[metrics]
address = 127.0.0.1:0
"""


def make_tree(folder) -> None:
    static = folder / "staticfiles"
    (static / "css").mkdir(parents=True)
    (static / "css" / "app.css").write_bytes(CSS)
    (static / "css" / "app.css.gz").write_bytes(gzip.compress(CSS))
    (static / "css" / "plain.css").write_bytes(CSS)            # no precompressed files beside it
    (static / "js").mkdir()
    (static / "js" / "app.js").write_bytes(b"console.log(1);\n")
    (static / "js" / "app.js.br").write_bytes(b"BROTLI")      # (not real brotli: the bytes are what counts)
    (static / "js" / "app.js.gz").write_bytes(gzip.compress(b"console.log(1);\n"))
    (static / "big.bin").write_bytes(bytes(range(256)) * (BIG_BYTES // 256))
    (static / "empty.txt").write_bytes(b"")
    (static / "archive.tar.gz").write_bytes(gzip.compress(b"tar"))
    (static / ".env").write_text("SECRET=1\n")
    (static / ".git").mkdir()
    (static / ".git" / "config").write_text("[core]\n")
    (static / "link_in.css").symlink_to("css/app.css")
    (static / "link_out").symlink_to(folder / "rr.ini")
    (static / "link_dir_out").symlink_to(folder)
    (static / "link_to_hidden").symlink_to(".env")
    (static / "css" / "app.css.br").symlink_to(folder / "rr.ini")   # a variant that is a link: never sent
    os.mkfifo(str(static / "fifo"))
    (folder / "secret.txt").write_text("outside the folder\n")
    (folder / "uploads").mkdir()
    (folder / "uploads" / "photo.jpg").write_bytes(b"\xff\xd8JPEG")


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("static")
    (folder / "rr.ini").write_text(CONFIG)
    make_tree(folder)
    server = ServerProcess.start(folder, CONFIG)
    yield server
    stop_module_server(server)


def get(srv, path, headers=None, method="GET"):
    return srv.request(method, path, headers=headers or {})


def raw(srv, path: str) -> bytes:
    """A request line sent as typed: http.client would not send every path we want to try."""
    return srv.raw(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode("latin-1"))


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# ---- a file, whole -----------------------------------------------------------------------------------

def test_get_answers_the_file_with_its_type_length_validators_and_cache_control(srv):
    status, headers, body = get(srv, "/static/css/app.css")
    assert (status, body) == (200, CSS)
    assert headers["content-type"] == "text/css; charset=utf-8" and headers["content-length"] == str(len(CSS))
    assert headers["etag"].startswith('"') and headers["last-modified"].endswith(" GMT")
    assert headers["cache-control"] == "public, max-age=600" and headers["accept-ranges"] == "bytes"
    assert headers["vary"] == "Accept-Encoding" and "content-encoding" not in headers


def test_head_answers_the_head_only(srv):
    status, headers, body = get(srv, "/static/css/app.css", method="HEAD")
    assert (status, body) == (200, b"") and headers["content-length"] == str(len(CSS))


def test_other_methods_are_405(srv):
    status, headers, _ = srv.request("POST", "/static/css/app.css", body=b"x")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_types_of_other_files(srv):
    assert get(srv, "/static/js/app.js")[1]["content-type"] == "text/javascript; charset=utf-8"
    assert get(srv, "/static/big.bin")[1]["content-type"] == "application/octet-stream"
    assert get(srv, "/static/archive.tar.gz")[1]["content-type"] == "application/gzip"   # as it is, not decoded
    assert get(srv, "/static/empty.txt")[::2] == (200, b"")


def test_a_large_file_arrives_whole(srv):
    status, headers, body = get(srv, "/static/big.bin")
    assert status == 200 and body == bytes(range(256)) * (BIG_BYTES // 256)


def test_a_second_mount_and_keep_alive_between_files_and_the_app(srv):
    conn = srv.connection()
    try:
        for path, expected in (("/media/photo.jpg", b"\xff\xd8JPEG"), ("/pid", None), ("/static/js/app.js", None)):
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200
            if expected is not None:
                assert body == expected and response.getheader("Content-Type") == "image/jpeg"
                assert response.getheader("Cache-Control") == "no-cache"      # [static.media]'s default
    finally:
        conn.close()


# ---- conditional requests and ranges ------------------------------------------------------------------------

def test_if_none_match_and_if_modified_since_give_304(srv):
    _, headers, _ = get(srv, "/static/css/app.css")
    status, h304, body = get(srv, "/static/css/app.css", {"If-None-Match": headers["etag"]})
    assert (status, body) == (304, b"") and h304["etag"] == headers["etag"] and "content-length" not in h304
    assert h304["cache-control"] == "public, max-age=600" and h304["vary"] == "Accept-Encoding"
    assert get(srv, "/static/css/app.css", {"If-Modified-Since": headers["last-modified"]})[0] == 304
    assert get(srv, "/static/css/app.css", {"If-None-Match": '"other"',
                                            "If-Modified-Since": headers["last-modified"]})[0] == 200
    assert get(srv, "/static/css/app.css", {"If-Match": '"other"'})[0] == 412


def test_a_range_is_206_and_an_unsatisfiable_one_416(srv):
    status, headers, body = get(srv, "/static/big.bin", {"Range": "bytes=1000-1999"})
    assert (status, body) == (206, (bytes(range(256)) * 8)[1000:2000])
    assert headers["content-range"] == f"bytes 1000-1999/{BIG_BYTES}" and headers["content-length"] == "1000"
    status, headers, body = get(srv, "/static/big.bin", {"Range": "bytes=-10"})
    assert status == 206 and body == bytes(range(246, 256))
    status, headers, body = get(srv, "/static/big.bin", {"Range": f"bytes={BIG_BYTES}-"})
    assert (status, body) == (416, b"") and headers["content-range"] == f"bytes */{BIG_BYTES}"


def test_if_range_sends_the_range_only_to_a_current_copy(srv):
    etag = get(srv, "/static/css/app.css", method="HEAD")[1]["etag"]
    assert get(srv, "/static/css/app.css", {"Range": "bytes=0-3", "If-Range": etag})[::2] == (206, CSS[:4])
    assert get(srv, "/static/css/app.css", {"Range": "bytes=0-3", "If-Range": '"old"'})[::2] == (200, CSS)


# ---- precompressed files ---------------------------------------------------------------------------------------

def test_gzip_beside_a_file_is_sent_to_a_client_that_takes_it(srv):
    status, headers, body = get(srv, "/static/css/app.css", {"Accept-Encoding": "gzip, deflate, br"})
    # app.css.br is a symlink (to outside the folder): never a candidate, so gzip it is
    assert status == 200 and headers["content-encoding"] == "gzip" and gzip.decompress(body) == CSS
    assert headers["vary"] == "Accept-Encoding" and headers["content-type"] == "text/css; charset=utf-8"
    plain_etag = get(srv, "/static/css/app.css")[1]["etag"]
    assert headers["etag"] != plain_etag


def test_br_is_preferred_and_q_values_are_honoured(srv):
    assert get(srv, "/static/js/app.js", {"Accept-Encoding": "gzip, br"})[2] == b"BROTLI"
    status, headers, body = get(srv, "/static/js/app.js", {"Accept-Encoding": "br;q=0.1, gzip"})
    assert headers["content-encoding"] == "gzip"
    assert get(srv, "/static/js/app.js", {"Accept-Encoding": "identity"})[2] == b"console.log(1);\n"
    assert get(srv, "/static/css/plain.css", {"Accept-Encoding": "gzip"})[2] == CSS    # none beside it


# ---- never a byte from outside the folder -----------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/static/../rr.ini", "/static/css/../../secret.txt", "/static/%2e%2e/secret.txt", "/static/%2E%2e/rr.ini",
    "/static/..%2fsecret.txt", "/static/css%2f..%2f..%2fsecret.txt", "/static/..\\secret.txt",
    "/static/%5c..%5csecret.txt", "/static/css/app.css%00.png", "/static/./css/app.css", "/static/%zz",
])
def test_paths_that_leave_the_folder_are_400_and_leak_nothing(srv, path):
    answer = raw(srv, path)
    assert status_of(answer) == 400, answer[:200]
    assert b"outside the folder" not in answer and b"[server]" not in answer


@pytest.mark.parametrize("path", [
    "/static/link_out", "/static/link_dir_out/secret.txt", "/static/link_to_hidden",   # links out, or to a dot-file
    "/static/.env", "/static/.git/config", "/static/%2eenv",                            # dot-files
    "/static/", "/static/css/", "/static/css",                                          # folders: no listings
    "/static/fifo",                                                                     # not a regular file
    "/static/missing.css", "/media/missing.jpg",
])
def test_what_is_not_a_file_we_serve_is_404_from_the_master(srv, path):
    answer = raw(srv, path)
    assert status_of(answer) == 404, answer[:200]
    assert b"outside the folder" not in answer and b"SECRET" not in answer and b"Hello, world!" not in answer


def test_a_link_inside_the_folder_is_followed(srv):
    assert get(srv, "/static/link_in.css")[::2] == (200, CSS)


def test_a_missing_file_never_reaches_the_app_and_every_answer_is_logged_and_counted(srv):
    get(srv, "/static/no-such-file.css")
    line = srv.wait_for_log(r'"GET /static/no-such-file.css HTTP/1.1" 404')[0]
    assert line.endswith("pid=-")                     # the master's answer, not a worker's
    metrics_port = int(re.search(r"minirr metrics on http://127\.0\.0\.1:(\d+)", "\n".join(srv.stdout_lines))
                       .group(1))
    conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    assert re.search(r'^minirr_requests_total\{status="404"\} [1-9]', text, re.M), text
    assert re.search(r'^minirr_requests_total\{status="304"\} [1-9]|^minirr_requests_total\{status="200"\} [1-9]',
                     text, re.M)


def test_paths_beside_a_mount_go_to_the_app(srv):
    assert get(srv, "/staticky")[::2] == (200, b"Hello, world!")       # /static/ is the prefix, not /static
    assert get(srv, "/mediafile")[::2] == (200, b"Hello, world!")


# ---- memory and slow readers ----------------------------------------------------------------------------------

def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


def folders(tmp_path):
    """The folders of the first server the `serve` fixture starts (it starts in srv0)."""
    (tmp_path / "srv0" / "uploads").mkdir(parents=True)
    (tmp_path / "srv0" / "staticfiles").mkdir()
    return tmp_path / "srv0" / "staticfiles"


def test_a_1_gib_file_and_readers_that_stop_keep_the_master_small(serve, tmp_path):
    """A sparse 1 GiB file, asked for by 20 clients that read a little and stop: the
    master holds none of it (the kernel copies it; `out` stays empty), and body_timeout
    closes them all."""
    static = folders(tmp_path)
    with open(static / "huge.bin", "wb") as f:
        f.truncate(1 << 30)
    srv = serve(CONFIG.replace("[metrics]\naddress = 127.0.0.1:0\n", "[http]\nbody_timeout = 1s\n"))
    before = rss_kb(srv.proc.pid)
    clients = []
    for _ in range(20):
        sock = socket.create_connection((srv.host, srv.port), timeout=10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /static/huge.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        clients.append(sock)
    grown = rss_kb(srv.proc.pid) - before
    assert grown < 20 * 1024, f"the master grew by {grown} kB for 20 readers of a 1 GiB file"
    srv.wait_for_log(r"response not read for 1s; closed", count=20, timeout=20)
    for sock in clients:
        sock.close()


def test_a_stop_lets_a_file_being_sent_finish(serve, tmp_path):
    """SIGTERM while a client reads a large file: the server waits for the rest to go out
    (up to destroy_timeout), then exits 0."""
    data = os.urandom(1 << 16) * 160                   # 10 MiB
    (folders(tmp_path) / "ten.bin").write_bytes(data)
    srv = serve(CONFIG.replace("[metrics]\naddress = 127.0.0.1:0\n", ""))
    sock = socket.create_connection((srv.host, srv.port), timeout=10)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /static/ten.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        got = sock.recv(65536)
        srv.send_signal(signal.SIGTERM)
        srv.wait_for_log(r"stopping: finishing")
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        head, _, body = got.partition(b"\r\n\r\n")
        assert body == data and b"Connection: close" not in head
    finally:
        sock.close()
    assert srv.wait_exit() == 0


# ---- start-up -------------------------------------------------------------------------------------------------

def test_a_mount_whose_folder_is_missing_stops_minirr_naming_it(tmp_path):
    (tmp_path / "rr.ini").write_text("[server]\napp = minirr_testapp:create_app\n[static]\ndir = staticfiles\n")
    proc = run_cli("serve", "-c", str(tmp_path / "rr.ini"), "-o", "http.address=127.0.0.1:0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"minirr: {tmp_path / 'rr.ini'} [static] dir = staticfiles: "
                                   f"{tmp_path / 'staticfiles'} is not a folder (for Django: python manage.py "
                                   f"collectstatic)")


def test_a_mount_without_dir_is_a_config_error(tmp_path):
    (tmp_path / "rr.ini").write_text("[server]\napp = minirr_testapp:create_app\n[static.media]\nurl = /media/\n")
    proc = run_cli("serve", "-c", str(tmp_path / "rr.ini"), "-o", "http.address=127.0.0.1:0")
    assert proc.returncode == 2
    assert "[static.media]: set dir, the folder whose files are served under url (/media/)" in proc.stderr
