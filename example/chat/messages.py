from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from chanx import BaseChannelEvent, BaseGroupMessage, BaseMessage

# Client -> server.


class SendChatPayload(BaseModel):
    text: str = Field(min_length=1, max_length=2000)


class SendChatMessage(BaseMessage):
    """Say something to the room."""

    action: Literal["send_chat"] = "send_chat"
    payload: SendChatPayload


class LoadHistoryPayload(BaseModel):
    after_id: int | None = Field(
        default=None, description="Only messages newer than this one (the last one shown)."
    )


class LoadHistoryMessage(BaseMessage):
    """Ask for the room's recent messages (answered with chat_history)."""

    action: Literal["load_history"] = "load_history"
    payload: LoadHistoryPayload = Field(default_factory=LoadHistoryPayload)


# Server -> every member's socket (group message: carries is_mine / is_current).


class ChatPayload(BaseModel):
    id: int = Field(description="Id of the stored message.")
    author: str
    text: str


class ChatMessage(BaseGroupMessage):
    """Someone said something; `is_mine` tells the author's sockets apart."""

    action: Literal["chat_message"] = "chat_message"
    payload: ChatPayload


# Server -> the socket that asked (a reply to load_history).


class ChatHistoryPayload(BaseModel):
    messages: list[ChatPayload] = Field(description="Oldest first.")


class ChatHistoryMessage(BaseMessage):
    """The room's recent messages, oldest first."""

    action: Literal["chat_history"] = "chat_history"
    payload: ChatHistoryPayload


# Events the HTTP views send to the room's consumers, and what clients see.


class MemberPayload(BaseModel):
    user_id: int
    username: str


class MemberAddedEvent(BaseChannelEvent):
    action: Literal["notify_member_added"] = "notify_member_added"
    payload: MemberPayload


class MemberRemovedEvent(BaseChannelEvent):
    action: Literal["notify_member_removed"] = "notify_member_removed"
    payload: MemberPayload


RoomEvent = MemberAddedEvent | MemberRemovedEvent


class MemberAddedMessage(BaseMessage):
    """Someone joined the room."""

    action: Literal["member_added"] = "member_added"
    payload: MemberPayload


class MemberRemovedMessage(BaseMessage):
    """Someone left or was removed; their own sockets are then closed with 4403."""

    action: Literal["member_removed"] = "member_removed"
    payload: MemberPayload
