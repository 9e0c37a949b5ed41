"""Pages, the playground, the AsyncAPI document, route discovery and the demo command."""

from __future__ import annotations

from io import StringIO

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import TestCase, override_settings

from assistants.consumers import AssistantConsumer, ConversationAssistantConsumer
from assistants.models import Conversation
from chanx import discover_routes
from chat.consumers import RoomConsumer
from chat.models import Membership, Room

User = get_user_model()


class PageTests(TestCase):
    def setUp(self) -> None:
        self.alice = User.objects.create_user("alice")
        self.room = Room.objects.create(name="Lobby")
        Membership.objects.create(room=self.room, user=self.alice)

    def test_pages_render(self) -> None:
        for url in ["/", "/login/", "/assistants/"]:
            assert self.client.get(url).status_code == 200, url
        assert self.client.get(f"/chat/{self.room.pk}/").status_code == 302  # log in first

        self.client.force_login(self.alice)
        index = self.client.get("/")
        self.assertContains(index, f'href="/chat/{self.room.pk}/"')
        self.assertContains(self.client.get(f"/chat/{self.room.pk}/"), 'id="messages"')

    def test_favicon_is_served_and_linked(self) -> None:
        response = self.client.get("/favicon.ico")
        assert response.status_code == 200
        assert response["Content-Type"] == "image/svg+xml"
        assert response.content.startswith(b"<svg ") and b"</svg>" in response.content
        assert "max-age=" in response["Cache-Control"]
        self.assertContains(
            self.client.get("/"), '<link rel="icon" href="/favicon.ico" type="image/svg+xml">'
        )
        assert self.client.post("/favicon.ico").status_code == 405

    def test_assistants_page_reopens_only_accessible_conversations(self) -> None:
        owned = Conversation.objects.create(user=self.alice, title="Owned")
        owned.messages.create(role="user", content="earlier question")
        url = f"/assistants/?conversation={owned.pk}"
        self.assertNotContains(self.client.get(url), "earlier question")  # anonymous visitor
        self.client.force_login(self.alice)
        self.assertContains(self.client.get(url), "earlier question")
        assert self.client.get("/assistants/?conversation=not-a-uuid").status_code == 200


# Each endpoint's @channel name, and the label its description starts with: the
# playground, `python -m chanx routes`, the AsyncAPI document and the pages use them.
ENDPOINTS = {
    "/ws/assistants/": ("echo_assistant", "Echo assistant"),
    "/ws/assistants/<pk>/": ("streaming_assistant", "Streaming assistant"),
    "/ws/chat/<pk>/": ("chat_room", "Chat room"),
}


class DocumentationTests(TestCase):
    def setUp(self) -> None:
        alice = User.objects.create_user("alice")
        Membership.objects.create(room=Room.objects.create(name="Lobby"), user=alice)

    def test_endpoint_names_descriptions_docstrings_and_pages_agree(self) -> None:
        routes = discover_routes()
        assert {r.path: r.name for r in routes} == {p: n for p, (n, _) in ENDPOINTS.items()}
        index = self.client.get("/").content.decode()
        for route in routes:
            name, label = ENDPOINTS[route.path]
            description = route.consumer.__chanx_channel__["description"]
            assert route.description == description
            assert description.startswith(f"{label}: ") and description.endswith(".")
            # The docstring opens with the same sentence.
            assert (route.consumer.__doc__ or "").strip().splitlines()[0] == description
            # The index lists the endpoint with the same label and text.
            assert f'data-name="{name}"' in index and f">{label}</" in index
            assert description.partition(": ")[2] in index
            # Every handler has a summary in the same style.
            for handler in route.consumer._chanx_meta.ws_handlers.values():
                assert handler.spec.summary and handler.spec.summary[0].isupper(), handler
        # The pages use the same labels.
        self.client.force_login(User.objects.get(username="alice"))
        room = Room.objects.get(name="Lobby")
        self.assertContains(
            self.client.get(f"/chat/{room.pk}/"), "<title>Lobby · Chat room</title>"
        )
        assistants = self.client.get("/assistants/")
        self.assertContains(assistants, "<title>Streaming assistant</title>")
        self.assertContains(assistants, "<h1>Streaming assistant</h1>")

    def test_routes_are_discovered_through_the_middleware(self) -> None:
        assert [(r.path, r.consumer) for r in discover_routes()] == [
            ("/ws/assistants/", AssistantConsumer),
            ("/ws/assistants/<pk>/", ConversationAssistantConsumer),
            ("/ws/chat/<pk>/", RoomConsumer),
        ]

    def test_playground_and_asyncapi_for_staff_only_when_not_debugging(self) -> None:
        urls = ["/playground/websocket/", "/playground/routes.json", "/asyncapi.json"]
        for url in urls:
            assert self.client.get(url).status_code == 404, url
        self.client.force_login(User.objects.create_user("admin", is_staff=True))
        for url in urls:
            assert self.client.get(url).status_code == 200, url

    @override_settings(DEBUG=True)
    def test_asyncapi_document(self) -> None:
        document = self.client.get("/asyncapi.json").json()
        assert document["asyncapi"].startswith("3.")
        assert document["info"]["title"] == "chanx example"
        addresses = {channel["address"] for channel in document["channels"].values()}
        assert addresses == {"/ws/assistants/", "/ws/assistants/{pk}/", "/ws/chat/{pk}/"}
        messages = set(document["components"]["messages"])
        assert {"NewMessage", "SendChatMessage", "ChatMessage", "StreamingMessage"} <= messages


class DemoCommandTests(TestCase):
    def test_demo_is_idempotent(self) -> None:
        out = StringIO()
        call_command("demo", stdout=out)
        call_command("demo", stdout=StringIO())
        lobby = Room.objects.get(name="Lobby")
        assert sorted(lobby.memberships.values_list("user__username", flat=True)) == [
            "alice",
            "bob",
        ]
        assert User.objects.count() == 3
        assert User.objects.get(username="admin").is_staff
        assert User.objects.get(username="alice").check_password("alice-password")
        assert Conversation.objects.filter(user__username="alice").count() == 1
        assert lobby.owner == User.objects.get(username="alice")
        for text in [
            "http://127.0.0.1:8000/",
            f"/chat/{lobby.pk}/",
            "/assistants/",
            "/playground/websocket/",
            "alice / alice-password",
        ]:
            assert text in out.getvalue(), text
        # `python3 dev.py example` runs the command and then the server: no "run runserver".
        assert "runserver" not in out.getvalue()
        assert "python3 dev.py example" in out.getvalue()
