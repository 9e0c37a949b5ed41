"""The database of the example's real processes in end-to-end tests.

The e2e tests run the example as real processes (``manage.py migrate``/``demo``,
uvicorn, ``manage.py shell``), one fresh demo database per test module, named
by a SQLite path in a temp dir. With ``DATABASE_URL`` set, that path alone is
not enough: the processes would all share the one database of the URL, and on
PostgreSQL it may not even exist (Django's test runner only makes ``test_<name>``).
``database_url_for(path)`` gives each such path its own database of the same
kind as ``DATABASE_URL``:

- unset: ``None`` (``SQLITE_PATH=path`` applies, as before);
- ``sqlite:///...``: ``sqlite:///<path>``;
- ``postgres://...``: a new database on the same server (``<name>_e2e_<hash of
  path>``, created empty once per process, dropped when the process exits),
  with the URL's query (``conn_max_age=...``) kept.

    env["DATABASE_URL"] = database_url_for(sqlite_path) or ""

Standard library only, plus psycopg when the URL is PostgreSQL.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgres", "postgresql")
#: Databases this process created: (server URL, name), dropped at exit.
_created: dict[str, tuple[str, str]] = {}
_lock = threading.Lock()


def postgres_url(url: str | None = None) -> str | None:
    """``url`` (default: ``DATABASE_URL``) when it names a PostgreSQL database, else None."""
    url = os.environ.get("DATABASE_URL", "") if url is None else url
    return url if urlsplit(url).scheme in POSTGRES_SCHEMES else None


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead (credentials, host and query kept)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def quote_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def admin(url: str, *statements: str) -> None:
    """Run ``statements`` in autocommit on the server of ``url``, in its ``postgres`` database."""
    import psycopg

    from config.settings import database_from_url

    config = database_from_url(url)
    with psycopg.connect(
        dbname="postgres",
        user=config["USER"] or None,
        password=config["PASSWORD"] or None,
        host=config["HOST"] or None,
        port=config["PORT"] or None,
        autocommit=True,
    ) as connection:
        for statement in statements:
            connection.execute(statement.encode())


def create_database(url: str, name: str) -> str:
    """A new empty database ``name`` on the server of ``url`` (dropped first if it exists)."""
    admin(
        url,
        f"DROP DATABASE IF EXISTS {quote_name(name)} WITH (FORCE)",
        f"CREATE DATABASE {quote_name(name)}",
    )
    return with_database(url, name)


def drop_database(url: str, name: str) -> None:
    """Drop ``name`` on the server of ``url``, closing its connections."""
    admin(url, f"DROP DATABASE IF EXISTS {quote_name(name)} WITH (FORCE)")


def database_url_for(path: Path | str, url: str | None = None) -> str | None:
    """The ``DATABASE_URL`` for the example processes of the demo database at ``path``.

    ``url`` defaults to ``DATABASE_URL``; see the module docstring. The same
    ``path`` gives the same database for the life of the process.
    """
    url = os.environ.get("DATABASE_URL", "") if url is None else url
    if not url:
        return None
    path = Path(path).resolve()
    if urlsplit(url).scheme == "sqlite":
        return "sqlite:///" + str(path)
    if postgres_url(url) is None:
        return url  # settings.py names the scheme it does not know
    key = str(path)
    with _lock:
        if key not in _created:
            base = urlsplit(url).path.lstrip("/") or "chanx"
            digest = hashlib.sha256(key.encode()).hexdigest()[:12]
            name = f"{base[:40]}_e2e_{digest}"  # PostgreSQL names: at most 63 bytes
            create_database(url, name)
            _created[key] = (url, name)
        server, name = _created[key]
    return with_database(server, name)


@atexit.register
def drop_created_databases() -> None:
    with _lock:
        created = list(_created.values())
        _created.clear()
    for server, name in created:
        try:
            drop_database(server, name)
        except Exception as exc:  # the server may be gone already; never fail the exit
            print(f"e2e.postgres: could not drop {name}: {exc}")
