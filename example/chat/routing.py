from channels.routing import URLRouter

from chanx import path
from chat.consumers import RoomConsumer

router = URLRouter(
    [
        path("<int:pk>/", RoomConsumer.as_asgi()),
    ]
)
