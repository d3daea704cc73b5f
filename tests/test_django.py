"""A real Django project behind minirr: made by `django-admin startproject` in a temporary
folder, its static files gathered by `collectstatic`, served with a `[static]` mount. The
admin's login page loads, and so does its CSS, from the master (no worker).

Django is a test tool, never a dependency of minirr: without it this file skips.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("django", reason="Django is not installed: `pip install django` to run the Django test "
                                      "(.ci/run installs it)")

from serverproc import ServerProcess  # noqa: E402
from wire import stop_module_server  # noqa: E402

CONFIG = """[server]
app = mysite.wsgi:application
interface = wsgi
[pool]
num_workers = 1
[static]
url = /static/
dir = staticfiles
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("django")
    run = dict(cwd=str(folder), check=True, capture_output=True, text=True, timeout=120)
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", "."], **run)
    with open(folder / "mysite" / "settings.py", "a") as f:
        f.write('\nSTATIC_ROOT = BASE_DIR / "staticfiles"\n')
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput"], **run)
    srv = ServerProcess.start(folder, CONFIG, timeout=60)
    yield srv, folder
    stop_module_server(srv)


def test_the_admin_redirects_to_its_login_page(site):
    srv, _ = site
    status, headers, _ = srv.request("GET", "/admin/")
    assert status == 302 and headers["location"] == "/admin/login/?next=/admin/"


def test_the_admin_login_page_and_its_css_load(site):
    srv, folder = site
    status, headers, page = srv.request("GET", "/admin/login/")
    assert status == 200 and headers["content-type"].startswith("text/html"), page[:500]
    stylesheets = [link for link in (b"/static/admin/css/base.css", b"/static/admin/css/login.css") if link in page]
    assert stylesheets, page[:2000]
    for link in stylesheets:
        status, headers, css = srv.request("GET", link.decode())
        assert status == 200 and headers["content-type"] == "text/css; charset=utf-8"
        assert css == (folder / "staticfiles" / link.decode()[len("/static/"):]).read_bytes()
        # the browser's second visit: revalidated, not sent again
        again = srv.request("GET", link.decode(), headers={"If-None-Match": headers["etag"]})
        assert again[0] == 304 and again[2] == b""
    srv.wait_for_log(r'"GET /static/admin/css/base.css HTTP/1.1" 200 \d+ .* pid=-')   # the master's answer


def test_a_static_file_django_does_not_have_is_a_404_from_the_master(site):
    srv, _ = site
    status, _, body = srv.request("GET", "/static/admin/css/no-such.css")
    assert (status, body) == (404, b"not found\n")
