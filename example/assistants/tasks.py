"""Answering a message.

The view calls `stream_reply` inline, so the HTTP request lasts until the reply
is complete (and holds Django's thread for sync code meanwhile). A Celery/RQ
task could call it unchanged: all it needs is the database and the channel layer.
"""

from __future__ import annotations

from assistants.consumers import ConversationAssistantConsumer
from assistants.generator import generate_tokens
from assistants.messages import (
    AssistantErrorPayload,
    CompleteStreamingEvent,
    CompleteStreamingPayload,
    ConversationEntry,
    ErrorEvent,
    NewAssistantMessageEvent,
    StreamingEvent,
    StreamingPayload,
)
from assistants.models import ConversationMessage


def entry(message: ConversationMessage) -> ConversationEntry:
    return ConversationEntry.model_validate(message, from_attributes=True)


def announce_message(message: ConversationMessage) -> None:
    """Tell every websocket watching the conversation about a stored message."""
    ConversationAssistantConsumer.broadcast_event_sync(
        NewAssistantMessageEvent(payload=entry(message)),
        [message.conversation.group_name],
    )


def stream_reply(user_message: ConversationMessage) -> ConversationMessage:
    """Stream the assistant's reply token by token, then store and announce it."""
    groups = [user_message.conversation.group_name]
    tokens: list[str] = []
    try:
        for token in generate_tokens(user_message.content):
            tokens.append(token)
            ConversationAssistantConsumer.broadcast_event_sync(
                StreamingEvent(payload=StreamingPayload(message_id=user_message.pk, content=token)),
                groups,
            )
    except Exception:
        ConversationAssistantConsumer.broadcast_event_sync(
            ErrorEvent(payload=AssistantErrorPayload(detail="The assistant failed.")),
            groups,
        )
        raise
    reply: ConversationMessage = ConversationMessage.objects.create(
        conversation=user_message.conversation,
        role=ConversationMessage.Role.ASSISTANT,
        content="".join(tokens),
    )
    ConversationAssistantConsumer.broadcast_event_sync(
        CompleteStreamingEvent(
            payload=CompleteStreamingPayload(message_id=user_message.pk, reply=entry(reply))
        ),
        groups,
    )
    return reply
