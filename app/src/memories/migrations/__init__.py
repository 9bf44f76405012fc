"""The schema's history as Alembic revisions (`versions/`), run by `memories.migrate`."""
