from django.contrib import admin

from assistants.models import Conversation, ConversationMessage

admin.site.register(Conversation)
admin.site.register(ConversationMessage)
