"""A one-file Django site for tests/test_asgi_frameworks.py, served through
`get_asgi_application()` (django_asgi.py): settings, URLs and views in one module.

Django is a test tool, never a dependency of minirr.
"""

import os

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path

SECRET_KEY = "minirr-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = __name__
INSTALLED_APPS = []
MIDDLEWARE = []
DATABASES = {}
USE_TZ = True


def hello(request):
    return HttpResponse(f"hello from a sync view in {os.getpid()}")


async def async_hello(request):
    return HttpResponse("hello from an async view")


def echo(request, name):
    return JsonResponse({"method": request.method, "body": request.body.decode(), "path": request.path, "name": name,
                         "query": request.GET.get("q"), "header": request.headers.get("X-Test")})


async def stream(request):
    async def pieces():
        for number in range(3):
            yield f"piece {number}\n"
    return StreamingHttpResponse(pieces(), content_type="text/plain")


urlpatterns = [path("hello", hello), path("async", async_hello), path("echo/<slug:name>", echo),
               path("stream", stream)]
