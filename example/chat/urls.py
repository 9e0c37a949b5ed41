from django.urls import path

from chat import views

urlpatterns = [
    path("rooms/<int:pk>/members/", views.RoomMembersView.as_view(), name="room-members"),
    path(
        "rooms/<int:pk>/members/<int:user_id>/",
        views.RoomMemberDetailView.as_view(),
        name="room-member-detail",
    ),
]
