"""The benchmark's one model (DB scenario). No migrations: ``migrate --run-syncdb``."""
