"""Websocket routes: every endpoint lives under ws/, one nested router per app."""

from channels.routing import URLRouter

from chanx import include, path

ws_router = URLRouter(
    [
        path("assistants/", include("assistants.routing")),
        path("chat/", include("chat.routing")),
    ]
)

router = URLRouter(
    [
        path("ws/", include(ws_router)),
    ]
)
