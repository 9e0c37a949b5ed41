"""Minimal Django settings shared by every peer of the benchmark.

Each peer runs in its own process with ``DJANGO_SETTINGS_MODULE=djsettings``;
``BENCH_PEER`` selects the peer module under ``bench/peers/`` and
``BENCH_TMP`` the temp dir that holds its SQLite database.
Nothing here is tuned for any one peer: DRF, chanx and dcrf all run on their
defaults (DRF's default authentication classes and ``AllowAny``).
"""

import os
import tempfile

PEER = os.environ.get("BENCH_PEER", "raw")
_TMP = os.environ.get("BENCH_TMP") or tempfile.mkdtemp(prefix="chanx-bench-")

SECRET_KEY = "bench-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
ROOT_URLCONF = "djsettings"
urlpatterns: list = []

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "rest_framework",
    "channels",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(_TMP, f"db-{PEER}.sqlite3"),
    }
}

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
ASGI_APPLICATION = f"peers.{PEER}.application"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# The peer module may contribute settings (apps, CHANX, ...): see peers/*.py.
if PEER == "chanx213":
    INSTALLED_APPS.append("chanx.channels")
