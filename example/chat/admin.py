from django.contrib import admin

from chat.models import Membership, Room

admin.site.register(Room)
admin.site.register(Membership)
