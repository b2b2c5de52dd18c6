"""Alembic environment: `Store.open` passes its connection in `config.attributes["connection"]`.

Developers can also run the alembic CLI against a database, e.g.
`alembic -c storage/migrations/alembic.ini -x url=sqlite:///store.db revision -m "..." --autogenerate`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from storage.db import WRITE_OPTION, make_engine, migration_lock, normalize_url
from storage.models import Base


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode copies the table
        compare_type=True,
        transactional_ddl=True,  # SQLite and PostgreSQL both roll DDL back: a failed migration leaves no trace
    )
    with context.begin_transaction():
        migration_lock(connection)
        context.run_migrations()


def main() -> None:
    config = context.config
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("pass the database URL: alembic -c storage/migrations/alembic.ini -x url=URL ...")
    engine = make_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            _migrate(conn)
            conn.commit()
    finally:
        engine.dispose()


main()
