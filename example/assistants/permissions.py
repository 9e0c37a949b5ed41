from __future__ import annotations

from typing import Any

from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from assistants.models import Conversation


class ConversationOwner(BasePermission):
    """Anonymous conversations are open to whoever knows their id; the others
    only to their owner."""

    def has_object_permission(self, request: Request, view: Any, obj: Conversation) -> bool:
        if obj.user_id is not None and request.user.pk != obj.user_id:
            raise PermissionDenied()
        return True
