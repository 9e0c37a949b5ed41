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


# Server -> every member's socket (group message: carries is_mine / is_current).


class ChatPayload(BaseModel):
    author: str
    text: str


class ChatMessage(BaseGroupMessage):
    """Someone said something; `is_mine` tells the author's sockets apart."""

    action: Literal["chat_message"] = "chat_message"
    payload: ChatPayload


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
    action: Literal["member_added"] = "member_added"
    payload: MemberPayload


class MemberRemovedMessage(BaseMessage):
    action: Literal["member_removed"] = "member_removed"
    payload: MemberPayload
