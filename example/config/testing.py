"""Helpers shared by the example's tests."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import User
from django.test import AsyncClient, Client


def session_headers(client: Client | AsyncClient, user: User) -> list[tuple[bytes, bytes]]:
    """Log `user` in and return the cookie header a browser would send on the websocket.

    Call it from setUp (it touches the database, which async tests may not do directly).
    """
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return [(b"cookie", f"{name}={client.cookies[name].value}".encode())]
