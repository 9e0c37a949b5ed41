from __future__ import annotations

from django.conf import settings
from django.db import models


class Room(models.Model):
    name = models.CharField(max_length=100, unique=True)
    # The owner may remove any member (so may staff); other members may only leave.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="owned_rooms",
    )

    def __str__(self) -> str:
        return self.name

    @property
    def group_name(self) -> str:
        """The channel group every websocket connected to this room joins."""
        return f"room_{self.pk}"


class Membership(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    joined = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["room", "user"], name="unique_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.room}"


class Message(models.Model):
    """A chat message, stored so that a page (re)load shows the room's recent history."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        related_name="chat_messages",
    )
    text = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "id"]
        indexes = [models.Index(fields=["room", "-id"], name="chat_message_room_recent")]

    def __str__(self) -> str:
        return f"{self.author_name}: {self.text[:40]}"

    @property
    def author_name(self) -> str:
        return self.author.get_username() if self.author else "[deleted user]"
