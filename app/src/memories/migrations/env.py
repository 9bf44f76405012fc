"""Alembic's environment: runs the revisions on the connection `memories.migrate` opened (in
its transaction, under its advisory lock), or writes their SQL (offline mode, `--sql`)."""

from alembic import context

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    # One transaction for every revision of the run: PostgreSQL's DDL is transactional, so a
    # revision that fails leaves the schema and the recorded revision as they were.
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
