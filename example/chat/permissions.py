from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from chat.models import Membership, Room


def is_room_member(user: Any, room: Room) -> bool:
    return bool(user.pk is not None and room.memberships.filter(user_id=user.pk).exists())


def may_remove_others(user: Any, room: Room) -> bool:
    """Staff and the room's owner may remove any member; the others only themselves."""
    return bool(user.is_authenticated and (user.is_staff or room.owner_id == user.pk))


class IsRoomMember(BasePermission):
    """Logged-in members of the room only (object permission on a Room)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated)

    def has_object_permission(self, request: Request, view: Any, obj: Room) -> bool:
        return is_room_member(request.user, obj)


class IsRoomOwner(BasePermission):
    """The room's owner (object permission on a Room)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated)

    def has_object_permission(self, request: Request, view: Any, obj: Room) -> bool:
        return bool(obj.owner_id is not None and obj.owner_id == request.user.pk)


class MayRemoveMember(BasePermission):
    """Object permission on a Membership: staff and the room's owner may remove
    anyone; a member may remove only themself (leave the room)."""

    message = "Only staff or the room's owner may remove other members; you may only leave."

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated)

    def has_object_permission(self, request: Request, view: Any, obj: Membership) -> bool:
        user = request.user
        return obj.user_id == user.pk or may_remove_others(user, obj.room)
