from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

import chanx
from assistants.views import assistants_page
from chat.views import room_page
from config.views import favicon, index

urlpatterns = [
    path("", index, name="index"),
    path("favicon.ico", favicon, name="favicon"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("assistants/", assistants_page, name="assistants"),
    path("chat/<int:pk>/", room_page, name="room"),
    path("api/assistants/", include("assistants.urls")),
    path("api/chat/", include("chat.urls")),
    # chanx's websocket playground (/playground/websocket/, with routes.json and
    # asyncapi.json beside it) and the AsyncAPI document at the top level too.
    # Both follow CHANX["PLAYGROUND_ACCESS"] (default: DEBUG or staff users).
    path("playground/", include("chanx")),
    path("asyncapi.json", chanx.asyncapi_view, name="asyncapi"),
    path("admin/", admin.site.urls),
]
