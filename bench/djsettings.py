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
    "rest_framework.authtoken",  # DRF tokens for the token-authenticated routes
    "channels",
    "benchapp",  # the DB scenario's model
]

_DB_URL = os.environ.get("BENCH_DATABASE_URL")
if _DB_URL:
    from urllib.parse import urlsplit

    _u = urlsplit(_DB_URL)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _u.path.lstrip("/"),
            "USER": _u.username or "",
            "PASSWORD": _u.password or "",
            "HOST": _u.hostname or "",
            "PORT": str(_u.port or ""),
            # which server process a PostgreSQL backend belongs to (run.py counts them
            # per server in pg_stat_activity)
            "OPTIONS": {"application_name": os.environ.get("BENCH_PG_APPNAME", f"bench-{PEER}")},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(_TMP, f"db-{PEER}.sqlite3"),
        }
    }
DATABASES["default"]["CONN_MAX_AGE"] = int(os.environ.get("BENCH_CONN_MAX_AGE", "0"))
DATABASES["default"]["CONN_HEALTH_CHECKS"] = os.environ.get("BENCH_CONN_HEALTH_CHECKS") == "1"

# chanx's ORM thread pool (the dbslow job's control runs ORM_THREADS=None); unset:
# no CHANX setting at all, chanx's defaults. Only set for chanx.py versions that
# have the setting (an unknown CHANX key is a configuration error).
_ORM_THREADS = os.environ.get("BENCH_ORM_THREADS")
if _ORM_THREADS:
    CHANX = {"ORM_THREADS": None if _ORM_THREADS == "none" else int(_ORM_THREADS)}

_LOG_FILE = os.environ.get("BENCH_LOG_FILE")
if _LOG_FILE:
    # The README's recommended config; chanx's formatter for chanx, an
    # equivalent stdlib one (peers/logfmt.py) for the others.
    _FORMATTER = "chanx.JsonFormatter" if PEER == "chanx_repo" else "peers.logfmt.JsonFormatter"
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": _FORMATTER}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": _LOG_FILE, "formatter": "json"}
        },
        "loggers": {
            "chanx": {"handlers": ["file"], "level": "INFO"},
            "bench.raw": {"handlers": ["file"], "level": "INFO"},
        },
    }

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
ASGI_APPLICATION = f"peers.{PEER}.application"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

# The peer module may contribute settings (apps, CHANX, ...): see peers/*.py.
if PEER == "chanx213":
    INSTALLED_APPS.append("chanx.channels")
