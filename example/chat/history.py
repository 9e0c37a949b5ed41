"""Storing chat messages and reading a room's recent history (sync ORM code)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from chat.messages import ChatPayload
from chat.models import Message, Room

HISTORY_LIMIT = 50  # messages shown when a page (re)loads


def entry(message: Message) -> ChatPayload:
    return ChatPayload(id=message.pk, author=message.author_name, text=message.text)


def store_message(room: Room, author: AbstractBaseUser, text: str) -> ChatPayload:
    return entry(Message.objects.create(room=room, author=author, text=text))


def recent_messages(
    room: Room | int, after_id: int | None = None, limit: int = HISTORY_LIMIT
) -> list[ChatPayload]:
    """The room's latest ``limit`` messages (newer than ``after_id``), oldest first."""
    room_id = room.pk if isinstance(room, Room) else room
    query = Message.objects.filter(room_id=room_id).select_related("author").order_by("-id")
    if after_id is not None:
        query = query.filter(id__gt=after_id)
    return [entry(message) for message in reversed(query[:limit])]
