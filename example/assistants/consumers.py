from __future__ import annotations

from typing import Any

from rest_framework.permissions import IsAuthenticated

from assistants.messages import (
    AssistantErrorMessage,
    AssistantEvent,
    AssistantIncomingMessage,
    CompleteStreamingEvent,
    CompleteStreamingMessage,
    ErrorEvent,
    MessagePayload,
    NewAssistantMessage,
    NewAssistantMessageEvent,
    NewMessage,
    ReplyMessage,
    StreamingEvent,
    StreamingMessage,
)
from assistants.models import Conversation
from assistants.permissions import ConversationOwner
from chanx import (
    AsyncJsonWebsocketConsumer,
    BaseMessage,
    DjangoAuthenticator,
    PingMessage,
    PongMessage,
    channel,
    event_handler,
    ws_handler,
)


@channel(
    name="echo_assistant",
    description="Echo assistant: answers each new_message with a reply quoting it.",
    tags=["assistants"],
)
class AssistantConsumer(AsyncJsonWebsocketConsumer):
    """Echo assistant: answers each new_message with a reply quoting it.

    Logged-in users only. Written in the early style: one INCOMING_MESSAGE_SCHEMA
    and a receive_message that matches on the message type.
    """

    INCOMING_MESSAGE_SCHEMA = AssistantIncomingMessage
    permission_classes = [IsAuthenticated]

    async def receive_message(self, message: BaseMessage, **kwargs: Any) -> None:
        match message:
            case PingMessage():
                # Reply with a PONG message
                await self.send_message(PongMessage())
            case NewMessage(payload=new_message_payload):
                # Echo back with a reply message
                await self.send_message(
                    ReplyMessage(
                        payload=MessagePayload(content=f"Reply: {new_message_payload.content}")
                    )
                )
            case _:
                pass


class AssistantAuthenticator(DjangoAuthenticator):
    permission_classes = [ConversationOwner]
    queryset = Conversation.objects.all()
    obj: Conversation


@channel(
    name="streaming_assistant",
    description="Streaming assistant: the replies to one conversation, word by word.",
    tags=["assistants"],
)
class ConversationAssistantConsumer(AsyncJsonWebsocketConsumer[AssistantEvent]):
    """Streaming assistant: the replies to one conversation, word by word.

    Messages are POSTed over HTTP; the view streams the reply as events, which
    this consumer forwards. Open to the conversation's owner (anyone, for an
    anonymous conversation).
    """

    authenticator_class = AssistantAuthenticator
    authenticator: AssistantAuthenticator
    # One log record per token would flood the log (replaces the setting's list).
    log_ignored_actions = ["ping", "pong", "streaming", "event_complete"]

    async def post_authentication(self) -> None:
        # Owned conversations use "user_<pk>_conversation_<id>", anonymous ones
        # "anonymous_<id>" (see Conversation.group_name): the views send there.
        assert self.channel_layer is not None
        group_name = self.authenticator.obj.group_name
        await self.channel_layer.group_add(group_name, self.channel_name)
        self.groups.append(group_name)

    @ws_handler(
        summary="Ping", description="Connectivity check: answered with pong.", tags=["util"]
    )
    async def handle_ping(self, message: PingMessage) -> PongMessage:
        return PongMessage()

    @event_handler
    async def handle_new_assistant_message(
        self, event: NewAssistantMessageEvent
    ) -> NewAssistantMessage:
        return NewAssistantMessage(payload=event.payload)

    @event_handler
    async def handle_streaming(self, event: StreamingEvent) -> StreamingMessage:
        return StreamingMessage(payload=event.payload)

    @event_handler
    async def handle_complete_streaming(
        self, event: CompleteStreamingEvent
    ) -> CompleteStreamingMessage:
        return CompleteStreamingMessage(payload=event.payload)

    @event_handler
    async def handle_error(self, event: ErrorEvent) -> AssistantErrorMessage:
        return AssistantErrorMessage(payload=event.payload)
