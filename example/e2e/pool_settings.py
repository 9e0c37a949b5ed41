"""Settings of ``e2e.pool_app``: the example's, with Django's psycopg pool (test-only).

The example's own settings on the database of ``DATABASE_URL`` (PostgreSQL:
``OPTIONS["pool"]`` is a PostgreSQL feature, Django >= 5.1, ``psycopg_pool``),
``CONN_MAX_AGE=0`` (Django refuses the pool with persistent connections), and:

  POOL_ORM_THREADS       settings.CHANX["ORM_THREADS"]: a number, or "none"
  POOL_MIN_SIZE          the psycopg pool's min_size
  POOL_MAX_SIZE          its max_size
  POOL_TIMEOUT           seconds a checkout waits for a free connection (then PoolTimeout)
  POOL_APPLICATION_NAME  the connections' application_name, for pg_stat_activity
"""

from __future__ import annotations

import os

from config.settings import *  # noqa: F403
from config.settings import CHANX, DATABASES

_threads = os.environ.get("POOL_ORM_THREADS", "4")
CHANX = {**CHANX, "ORM_THREADS": None if _threads.lower() == "none" else int(_threads)}

DATABASES = {
    "default": {
        **DATABASES["default"],
        "CONN_MAX_AGE": 0,
        "OPTIONS": {
            **DATABASES["default"].get("OPTIONS", {}),
            # Not pool options: libpq's, given to every connection the pool opens.
            "application_name": os.environ.get("POOL_APPLICATION_NAME", "chanx-pool"),
            "pool": {
                "min_size": int(os.environ.get("POOL_MIN_SIZE", "1")),
                "max_size": int(os.environ.get("POOL_MAX_SIZE", "8")),
                "timeout": float(os.environ.get("POOL_TIMEOUT", "5")),
            },
        },
    }
}
