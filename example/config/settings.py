"""Settings for the chanx example project.

Environment variables:
  DJANGO_DEBUG            "0"/"false" turns DEBUG off (default: on).
  DJANGO_SECRET_KEY       secret key (default: an insecure development key).
  DATABASE_URL            postgres://user:password@host:port/name or sqlite:////absolute/path
                          (see database_from_url; default: the SQLite file below).
  SQLITE_PATH             SQLite database file when DATABASE_URL is unset
                          (default: example/db.sqlite3).
  REDIS_URL               use channels_redis instead of the in-memory channel layer.
  ASSISTANT_TOKEN_DELAY   seconds the fake assistant waits between tokens (default 0.05).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool_value(value: str) -> bool:
    return value.strip().lower() not in {"0", "false", "no", "off", ""}


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else env_bool_value(value)


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-chanx-example-do-not-use-in-production"
)
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "daphne",  # first, so `manage.py runserver` serves the ASGI application
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "assistants",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_from_url(url: str) -> dict[str, Any]:
    """``DATABASES["default"]`` from a URL, without a third-party parser.

    ``postgres://user:password@host:port/name`` (``postgresql://`` too; a socket
    directory as the host is percent-encoded: ``postgres://user@%2Frun%2Fpg/name``),
    or ``sqlite:///relative/path``, ``sqlite:////absolute/path``, ``sqlite:///:memory:``.
    Django's other defaults stay (``CONN_MAX_AGE=0``, no health checks);
    ``?conn_max_age=60&conn_health_checks=1`` sets those two (``conn_max_age=none``:
    unlimited), and other query parameters of a PostgreSQL URL go to ``OPTIONS``
    (libpq's, such as ``sslmode=require``).

    A SQLite file gets a test database that is a file too (``test_<name>`` beside
    it): on Django's default in-memory test database ``close()`` does nothing,
    which hides connection-handling bugs that a real server shows.
    """
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    config: dict[str, Any] = {}
    if "conn_max_age" in options:
        value = options.pop("conn_max_age")
        config["CONN_MAX_AGE"] = None if value.lower() == "none" else int(value)
    if "conn_health_checks" in options:
        config["CONN_HEALTH_CHECKS"] = env_bool_value(options.pop("conn_health_checks"))
    if parts.scheme == "sqlite":
        if parts.netloc:
            raise ValueError(
                "DATABASE_URL: sqlite URLs have no host: sqlite:///relative or sqlite:////absolute"
            )
        if options:
            raise ValueError(
                f"DATABASE_URL: unknown sqlite parameters {sorted(options)} "
                "(conn_max_age, conn_health_checks)"
            )
        name = unquote(parts.path[1:])
        config["ENGINE"] = "django.db.backends.sqlite3"
        if name in ("", ":memory:"):
            config["NAME"] = ":memory:"
        else:
            path = Path(name).resolve()
            config["NAME"] = str(path)
            config["TEST"] = {"NAME": str(path.with_name(f"test_{path.name}"))}
    elif parts.scheme in ("postgres", "postgresql"):
        name = unquote(parts.path[1:])
        if not name:
            raise ValueError("DATABASE_URL: no database name (postgres://user@host:port/name)")
        host = parts.netloc.rpartition("@")[2]
        if parts.port is not None:
            host = host.rpartition(":")[0]
        config.update(
            ENGINE="django.db.backends.postgresql",
            NAME=name,
            USER=unquote(parts.username or ""),
            PASSWORD=unquote(parts.password or ""),
            HOST=unquote(host.strip("[]")),
            PORT=str(parts.port or ""),
        )
        if options:
            config["OPTIONS"] = options
    else:
        raise ValueError(
            f"DATABASE_URL: unsupported scheme {parts.scheme!r} (postgres://... or sqlite:///...)"
        )
    return config


DATABASES = {
    "default": database_from_url(os.environ["DATABASE_URL"])
    if os.environ.get("DATABASE_URL")
    else {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SQLITE_PATH") or BASE_DIR / "db.sqlite3",
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL")
CHANNEL_LAYERS: dict[str, Any] = (
    {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 defaults socket_timeout to 5 s, which races channels_redis's
            # 5 s blocking read on idle connections (channels_redis#422): give it room.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 10}]},
        }
    }
    if REDIS_URL
    else {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
)

REST_FRAMEWORK = {
    # Token first: DRF takes the WWW-Authenticate header from the first class,
    # so anonymous clients get 401 (log in) rather than 403 (not allowed).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
}

CHANX = {
    # Follow each client frame with {"action": "complete"} (relayed group
    # messages with "group_complete", events with "event_complete"): clients,
    # the playground and the tests know when the server is done with something.
    "SEND_COMPLETION": True,
    # {"action": "authentication", ...} is the first frame of every connection.
    "SEND_AUTHENTICATION_MESSAGE": True,
    # Keep chatty actions out of the log.
    "LOG_IGNORED_ACTIONS": ["ping", "pong", "complete", "group_complete", "event_complete"],
    "ASYNCAPI_TITLE": "chanx example",
    "ASYNCAPI_DESCRIPTION": "Echo assistant, streaming assistant and chat rooms.",
}

# The fake assistant streams its reply one word at a time, this long apart.
ASSISTANT_TOKEN_DELAY = float(os.environ.get("ASSISTANT_TOKEN_DELAY", "0.05"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "chanx.JsonFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "loggers": {"chanx": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []  # demo passwords are simple
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "index"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
