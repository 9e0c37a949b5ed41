from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_safe
from rest_framework.authtoken.models import Token

from assistants.models import Conversation
from chanx import discover_routes
from chat.models import Room

# A speech bubble: every page links it, and browsers ask for /favicon.ico anyway.
FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="7" fill="#1d4ed8"/>'
    '<path d="M7 9h18v11H15l-6 5v-5H7z" fill="#fff"/>'
    '<circle cx="11.5" cy="14.5" r="1.6" fill="#1d4ed8"/>'
    '<circle cx="16" cy="14.5" r="1.6" fill="#1d4ed8"/>'
    '<circle cx="20.5" cy="14.5" r="1.6" fill="#1d4ed8"/>'
    "</svg>"
)


def websocket_token(request: HttpRequest) -> str | None:
    """The logged-in user's DRF token key, for pages that open a websocket.

    Browsers cannot set ``Authorization`` on a websocket; base.html's
    ``openSocket()`` offers it as the ``chanx.auth.<base64url>`` subprotocol
    instead (never in the URL, so never in access logs). The session cookie
    is sent as well and works on its own.
    """
    if not request.user.is_authenticated:
        return None
    token, _ = Token.objects.get_or_create(user=request.user)
    return str(token.key)


@require_safe
@cache_control(public=True, max_age=86400)
def favicon(request: HttpRequest) -> HttpResponse:
    return HttpResponse(FAVICON_SVG, content_type="image/svg+xml")


# Where each endpoint (by its @channel name) can be tried.
ENDPOINT_PAGES = {
    "echo_assistant": "/playground/websocket/",
    "streaming_assistant": "assistants",
    "chat_room": None,  # one page per room: see "Your rooms"
}


def endpoints() -> list[dict[str, str | None]]:
    """The websocket endpoints as `python -m chanx routes` and the playground list
    them: label and text from the consumer's @channel description."""
    found = []
    for route in discover_routes():
        label, _, text = route.description.partition(": ")
        page = ENDPOINT_PAGES.get(route.name)
        found.append(
            {
                "path": route.path,
                "name": route.name,
                "label": label,
                "text": text,
                "url": page if page is None or page.startswith("/") else reverse(page),
            }
        )
    return found


def index(request: HttpRequest) -> HttpResponse:
    user = request.user
    return render(
        request,
        "index.html",
        {
            "endpoints": endpoints(),
            "rooms": Room.objects.filter(memberships__user_id=user.pk).order_by("name")
            if user.is_authenticated
            else Room.objects.none(),
            "conversations": Conversation.objects.filter(user_id=user.pk)[:10]
            if user.is_authenticated
            else Conversation.objects.none(),
        },
    )
