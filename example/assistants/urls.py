from django.urls import path

from assistants import views

urlpatterns = [
    path("conversations/", views.ConversationListView.as_view(), name="conversations"),
    path(
        "conversations/<uuid:pk>/messages/",
        views.ConversationMessagesView.as_view(),
        name="conversation-messages",
    ),
]
