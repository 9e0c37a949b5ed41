from channels.routing import URLRouter

from assistants.consumers import AssistantConsumer, ConversationAssistantConsumer
from chanx import path, re_path

router = URLRouter(
    [
        path("", AssistantConsumer.as_asgi()),
        re_path(r"(?P<pk>[0-9a-f-]{36})/$", ConversationAssistantConsumer.as_asgi()),
    ]
)
