"""The dbslow job's 5 ms query, shared by every peer (the same code on both sides)."""

from channels.db import database_sync_to_async
from django.db import connection

SLOW_QUERY_S = 0.005  # seconds PostgreSQL sleeps per frame


@database_sync_to_async
def slow_query() -> None:
    """``SELECT pg_sleep(0.005)``: a query that holds its connection (and thread) 5 ms."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [SLOW_QUERY_S])
