"""Messages of the assistants app.

Client frames and server frames are `BaseMessage`s; events that views send to
the consumers through the channel layer are `BaseChannelEvent`s.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from chanx import BaseChannelEvent, BaseIncomingMessage, BaseMessage, PingMessage

# Echo assistant (the early, container style of seed 000) ######################


class MessagePayload(BaseModel):
    content: str


class NewMessage(BaseMessage):
    """New message for the assistant."""

    action: Literal["new_message"] = "new_message"
    payload: MessagePayload


class ReplyMessage(BaseMessage):
    """The assistant's reply."""

    action: Literal["reply"] = "reply"
    payload: MessagePayload


class AssistantIncomingMessage(BaseIncomingMessage):
    message: NewMessage | PingMessage


# Streaming conversation assistant ##############################################


class ConversationEntry(BaseModel):
    """A stored message of a conversation."""

    id: int
    role: Literal["user", "assistant"]
    content: str


class StreamingPayload(BaseModel):
    message_id: int = Field(description="Id of the user message being answered.")
    content: str = Field(description="The next token of the reply.")


class CompleteStreamingPayload(BaseModel):
    message_id: int = Field(description="Id of the user message that was answered.")
    reply: ConversationEntry


class AssistantErrorPayload(BaseModel):
    detail: str


# Events: sent by the HTTP views, handled by ConversationAssistantConsumer.


class NewAssistantMessageEvent(BaseChannelEvent):
    action: Literal["new_assistant_message_event"] = "new_assistant_message_event"
    payload: ConversationEntry


class StreamingEvent(BaseChannelEvent):
    action: Literal["streaming_event"] = "streaming_event"
    payload: StreamingPayload


class CompleteStreamingEvent(BaseChannelEvent):
    action: Literal["complete_streaming_event"] = "complete_streaming_event"
    payload: CompleteStreamingPayload


class ErrorEvent(BaseChannelEvent):
    action: Literal["error_event"] = "error_event"
    payload: AssistantErrorPayload


AssistantEvent = NewAssistantMessageEvent | StreamingEvent | CompleteStreamingEvent | ErrorEvent

# Frames the client receives.


class NewAssistantMessage(BaseMessage):
    """A message was added to the conversation (by this or another tab)."""

    action: Literal["new_assistant_message"] = "new_assistant_message"
    payload: ConversationEntry


class StreamingMessage(BaseMessage):
    """One token of the reply being written."""

    action: Literal["streaming"] = "streaming"
    payload: StreamingPayload


class CompleteStreamingMessage(BaseMessage):
    """The reply is complete and stored."""

    action: Literal["complete_streaming"] = "complete_streaming"
    payload: CompleteStreamingPayload


class AssistantErrorMessage(BaseMessage):
    """The assistant could not answer."""

    action: Literal["assistant_error"] = "assistant_error"
    payload: AssistantErrorPayload
