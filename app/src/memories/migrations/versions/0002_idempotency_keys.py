"""Idempotency keys: a retried insert returns the first answer and stores one row.

A POST with an `Idempotency-Key` header records the key with a digest of its body and the id
of the row it stored, in the insert's own transaction. Keys are kept for a day.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE idempotency_keys (
            key text PRIMARY KEY,
            request_digest bytea NOT NULL,
            memory_id bigint,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at)")


def downgrade() -> None:
    op.execute("DROP TABLE idempotency_keys")
