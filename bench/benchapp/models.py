from django.db import models


class Row(models.Model):
    """One row per load-client connection; the DB scenario's handler reads and bumps it."""

    hits = models.IntegerField(default=0)
    text = models.CharField(max_length=100, default="")

    class Meta:
        app_label = "benchapp"
