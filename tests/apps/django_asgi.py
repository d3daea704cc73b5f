"""Django's ASGI entry point for django_testsite (what a project's asgi.py holds)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_testsite")

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
