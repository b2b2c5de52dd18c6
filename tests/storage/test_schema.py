"""Opening a store: migrations, connection setup, constraints, and the errors for bad URLs."""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from storage import models as m
from storage.db import SCHEMA_HEAD
from storage.errors import MigrationError, StoreUnavailableError
from storage.records import Comparison, Record
from storage.store import Store
from tests.storage.conftest import sample_records


def test_migrations_create_every_table_at_head(store: Store) -> None:
    inspector = sa.inspect(store.engine)
    assert set(inspector.get_table_names()) == {t.name for t in m.TABLES} | {"alembic_version"}
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == SCHEMA_HEAD
    indexes = {ix["name"] for ix in inspector.get_indexes("comparisons")}
    assert {"ix_comparisons_prompt_id", "ix_comparisons_source_id", "ix_comparisons_annotator_id",
            "uq_comparisons_idempotency_key"} <= indexes


def test_migrated_schema_equals_the_models(store: Store) -> None:
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, m.Base.metadata) == []


def test_open_twice_keeps_data_and_schema(db_url: str) -> None:
    with Store.open(db_url) as first:
        first.import_records(sample_records())
        counts = first.table_counts()
    with Store.open(db_url) as again:
        assert again.table_counts() == counts


def test_sqlite_connections_use_wal_and_enforce_foreign_keys(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'wal.db'}")
    try:
        assert store.dialect == "sqlite"
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 1000
        assert (tmp_path / "wal.db-wal").exists() or (tmp_path / "wal.db").exists()
        with pytest.raises(sa.exc.IntegrityError, match="FOREIGN KEY"), store.engine.begin() as conn:
            conn.execute(sa.insert(m.Prompt.__table__).values(id="0" * 64, text="x", source_id=999,
                                                              created_at=datetime.now(UTC)))
    finally:
        store.close()


def test_check_constraint_rejects_a_bad_outcome(store: Store) -> None:
    store.import_records(sample_records()[:1])
    c = m.Comparison.__table__
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(c)).mappings().one()
    bad = dict(row, id=None, key="f" * 64, outcome="C")
    bad.pop("id")
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(sa.insert(c).values(**bad))
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(sa.insert(c).values(**dict(bad, outcome="A", confidence=1.5)))
    with store.engine.begin() as conn:  # the same row with a good outcome is accepted
        conn.execute(sa.insert(c).values(**dict(bad, outcome="both_bad")))


def test_malformed_url_says_how_to_fix_it() -> None:
    with pytest.raises(StoreUnavailableError, match="sqlite:///") as err:
        Store.open("not a url")
    assert "postgresql+psycopg://" in str(err.value)
    with pytest.raises(StoreUnavailableError, match="unsupported database driver"):
        Store.open("mysql://u@localhost/db")


def test_sqlite_in_a_missing_folder_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="create the folder") as err:
        Store.open(f"sqlite:///{tmp_path / 'nope' / 'store.db'}")
    assert str(tmp_path / "nope") in str(err.value)


def test_unreachable_postgres_fails_fast_with_a_fix() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    with pytest.raises(StoreUnavailableError, match="server is running"):
        Store.open(f"postgresql://nobody@127.0.0.1:{port}/db")


def test_plain_postgresql_urls_get_the_psycopg_driver() -> None:
    from storage.db import normalize_url

    assert normalize_url("postgres://u:p@h:1/d").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


def test_in_memory_sqlite_is_one_database_for_every_thread() -> None:
    with Store.open("sqlite://") as store:
        store.import_records(sample_records())
        seen: list[int] = []
        worker = threading.Thread(target=lambda: seen.append(sum(s.comparisons for s in store.stats().values())))
        worker.start()
        worker.join()
        assert seen == [4]


def test_two_writers_at_once_both_commit(db_url: str) -> None:
    """Two stores on one database (as two processes would be) import overlapping data concurrently."""
    stores = [Store.open(db_url), Store.open(db_url)]
    try:
        batches = [sample_records("x") + [Comparison("x", f"p{i}", "a", "b", "A") for i in range(300)],
                   sample_records("y") + [Comparison("y", f"p{i}", "a", "b", "B") for i in range(300)]]
        errors: list[BaseException] = []

        def run(store: Store, records: list[Record]) -> None:
            try:
                store.import_records(records, batch_size=50)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=pair) for pair in zip(stores, batches, strict=True)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        stats = stores[0].stats()
        # 304 each, less one: both carry the idempotency key "req-1" and only the first to commit keeps it
        assert sorted([stats["x"].comparisons, stats["y"].comparisons]) == [303, 304]
        assert stores[0].table_counts()["prompts"] == 4 + 300  # shared prompts stored once
    finally:
        for s in stores:
            s.close()


def test_schema_head_constant_matches_the_migrations() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from storage.db import MIGRATIONS_DIR, SCHEMA_HEAD

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_heads() == [SCHEMA_HEAD]


def test_a_store_from_a_newer_rewardnode_is_refused(db_url: str) -> None:
    Store.open(db_url).close()
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(MigrationError, match="newer rewardnode"):
        Store.open(db_url)


@pytest.mark.parametrize("message", [
    'connection failed: connection to server at "127.0.0.1", port 5 failed: Connection refused',
    "could not connect to server: No such file or directory",
    "server closed the connection unexpectedly",
])
def test_a_database_that_cannot_be_reached_is_store_unavailable(message: str) -> None:
    from sqlalchemy.exc import OperationalError

    from storage.db import translate
    from storage.errors import StoreUnavailableError

    err = translate(OperationalError("SELECT 1", {}, Exception(message)), "checking a token")
    assert isinstance(err, StoreUnavailableError) and "cannot be reached" in err.cause
    other = translate(OperationalError("SELECT 1", {}, Exception("syntax error at or near")), "reading")
    assert not isinstance(other, StoreUnavailableError)
