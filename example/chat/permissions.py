from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from chat.models import Room


class IsRoomMember(BasePermission):
    """Logged-in members of the room only (object permission on a Room)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated)

    def has_object_permission(self, request: Request, view: Any, obj: Room) -> bool:
        user_id = request.user.pk
        return user_id is not None and obj.memberships.filter(user_id=user_id).exists()
