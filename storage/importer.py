"""Bulk import: every record of an iterable in ONE transaction, deduplicated by content hash.

Records become row tuples in storage/rows.py (validation and hashing, no database); this module
inserts them. Speed comes from: no ORM objects; one executemany per table per batch on the raw
DBAPI cursor (`INSERT ... ON CONFLICT DO NOTHING` compiled from SQLAlchemy's dialect inserts);
columns that are NULL in a whole batch are left out of the statement (binding a None costs the
sqlite3 module more than binding a string); per-import caches so a prompt, response, source,
annotator or campaign is hashed and inserted once however many records repeat it.

On SQLite, for this one transaction, foreign keys and CHECK constraints are not re-checked row by
row (PRAGMA foreign_keys=OFF, ignore_check_constraints=ON; both back after): every referenced row
is inserted or looked up first in the same write-locked transaction, and RowBuilder enforces every
CHECK of the imported tables itself (rows.CHECKED_CONSTRAINTS; the tests run PRAGMA
foreign_key_check and compare the constraint list with the schema).

Also on SQLite, when records are built into rows in this process and an import has stored more
rows into a table than the table held before (and at least DEFER_INDEXES_MIN_ROWS), the table's
plain secondary indexes are dropped and built again, sorted, before the commit: cheaper than
updating them row by row at random places. Not when the records build their own batches
(rows.BuildsRows, e.g. in a worker process): then this process has time to spare while it waits
for batches, and updating the indexes in place there beats a rebuild at the end that nothing
overlaps. DDL is transactional in SQLite, so a failed or killed import leaves the indexes as they
were. Unique indexes (the dedup keys) are never dropped.

Duplicates: a record whose key (storage/hashing.py) or idempotency_key is already stored, or
appeared earlier in the same iterable, is counted in `ImportResult.duplicates` and not stored.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Sequence
from contextlib import closing
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from storage import models as m
from storage.db import SQLITE_CACHE_KIB, SQLITE_IMPORT_CACHE_KIB, begin_write, translate
from storage.errors import InvalidRecordError, StorageError
from storage.records import Record
from storage.rows import COLUMNS, NAME_COLUMNS, BuildsRows, RowBatch, RowBuilder, build_batches
from storage.types import ImportResult

DEFAULT_BATCH_SIZE: Final = 5000
DEFER_INDEXES_MIN_ROWS: Final = 10_000
"""Rows an import must have stored into a table before its secondary indexes are rebuilt at the end."""
_NAME_CHUNK: Final = 500
_INDEXED_TABLES: Final = ("responses", *m.KINDS)  # the imported tables with plain secondary indexes


def insert_ignore_sql(table: Table, columns: Sequence[str], dialect_name: str) -> str:
    """`INSERT INTO table (columns) VALUES (...) ON CONFLICT DO NOTHING` with positional placeholders."""
    if dialect_name == "sqlite":
        stmt: Any = sqlite.insert(table).on_conflict_do_nothing()
        dialect: Any = sqlite.dialect()
    else:
        stmt = postgresql.insert(table).inline().on_conflict_do_nothing()
        dialect = postgresql.psycopg.dialect(paramstyle="format")  # type: ignore[no-untyped-call]
    compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
    if list(compiled.positiontup or ()) != list(columns):
        raise RuntimeError(f"column order of {table.name} changed: {compiled.positiontup} != {list(columns)}; "
                           "update storage/rows.py COLUMNS to the table's column order")
    return str(compiled.string)


@lru_cache(maxsize=512)
def _insert_sql(dialect_name: str, table: str, columns: tuple[str, ...]) -> str:
    """The insert statement for these columns of `table`, compiled once (compiling costs ~1 ms)."""
    return insert_ignore_sql(m.Base.metadata.tables[table], columns, dialect_name)


@lru_cache(maxsize=32)
def _omittable(table: str) -> frozenset[int]:
    """Positions in COLUMNS[table] that may be left out of an insert: nullable, no default (NULL either way)."""
    t = m.Base.metadata.tables[table]
    return frozenset(i for i, name in enumerate(COLUMNS[table])
                     if t.c[name].nullable and t.c[name].server_default is None and t.c[name].default is None)


def import_records(engine: Engine, records: Iterable[Record], *, batch_size: int = DEFAULT_BATCH_SIZE,
                   progress: Callable[[int], None] | None = None) -> ImportResult:
    """Store `records` in one transaction; any exception (from the iterable or the database) stores nothing."""
    if batch_size < 1:
        raise InvalidRecordError(f"batch_size must be >= 1, got {batch_size}", "pass a positive batch size")
    now = datetime.now(UTC)
    with engine.connect() as conn:
        raw = dbapi_connection(conn)
        is_sqlite = conn.dialect.name == "sqlite"
        if is_sqlite:  # outside any transaction: foreign_keys and cache_size are no-ops inside one
            raw.execute("PRAGMA foreign_keys=OFF")
            raw.execute("PRAGMA ignore_check_constraints=ON")
            raw.execute(f"PRAGMA cache_size={-SQLITE_IMPORT_CACHE_KIB}")
        try:
            with begin_write(conn), closing(_batches(records, RowBuilder(conn.dialect.name, now), batch_size)) as batches:
                importer = _Importer(conn, now, defer_indexes=is_sqlite and not isinstance(records, BuildsRows))
                for batch in batches:
                    importer.insert(batch)
                    if progress is not None:
                        progress(batch.n_records)
                importer.finish()
                return importer.result()
        finally:
            if is_sqlite and not conn.invalidated:
                raw.execute("PRAGMA foreign_keys=ON")
                raw.execute("PRAGMA ignore_check_constraints=OFF")
                raw.execute(f"PRAGMA cache_size={-SQLITE_CACHE_KIB}")


def _batches(records: Iterable[Record], builder: RowBuilder, batch_size: int) -> Generator[RowBatch, None, None]:
    """Row batches built here, or by `records` itself when it can (BuildsRows); closed on any error."""
    if isinstance(records, BuildsRows):
        with closing(records.row_batches(builder, batch_size)) as prebuilt:
            yield from prebuilt
    else:
        yield from build_batches(records, builder, batch_size)


def dbapi_connection(conn: Connection) -> Any:
    """The driver's own connection (sqlite3 / psycopg) under a SQLAlchemy connection."""
    raw = conn.connection.driver_connection
    if raw is None:
        raise StorageError("the database connection was closed during the import", "retry the import")
    return raw


class _Importer:
    """State of one import transaction: ids of the names known in it, counts so far, deferred indexes."""

    def __init__(self, conn: Connection, now: datetime, *, defer_indexes: bool = False) -> None:
        self.conn = conn
        self.cursor = dbapi_connection(conn).cursor()
        self.dialect = conn.dialect.name
        self.started = now
        self.now = m.sqlite_timestamp(now) if self.dialect == "sqlite" else m.to_utc(now)
        self.ids: dict[str, dict[str | None, int | None]] = {t: {None: None} for t in set(NAME_COLUMNS.values())}
        self.added = dict.fromkeys(m.KINDS, 0)
        self.seen = dict.fromkeys(m.KINDS, 0)
        self.prompts_added = 0
        self.responses_added = 0
        self.position = 0  # records stored before the current batch
        self.rows_before: dict[str, int] = {}  # table -> rows it held when the import began (SQLite)
        self.dropped: list[tuple[str, str]] = []  # (index name, CREATE INDEX sql), built again by finish()
        if defer_indexes:
            for table in _INDEXED_TABLES:
                self.rows_before[table] = int(self.cursor.execute(
                    f"SELECT coalesce(max(rowid), 0) FROM {table}").fetchone()[0])

    def result(self) -> ImportResult:
        return ImportResult(added=dict(self.added),
                            duplicates={k: self.seen[k] - self.added[k] for k in m.KINDS},
                            prompts_added=self.prompts_added, responses_added=self.responses_added)

    def flush(self, batch: list[Record]) -> None:
        """Validate, hash and insert a few records (the labeling API's path; import_records streams)."""
        self.insert(RowBuilder(self.dialect, self.started).build(batch))

    # ---- one batch --------------------------------------------------------------------------

    def insert(self, batch: RowBatch) -> None:
        """Insert the rows of one batch (names resolved to ids first)."""
        columns = batch.columns
        doing = f"storing records {self.position + 1}..{self.position + batch.n_records}"
        try:
            self.prompts_added += self._insert("prompts", columns["prompts"])
            self.responses_added += self._insert("responses", columns["responses"])
            if batch.models:
                self._fill_models(batch.models)
            for kind in m.KINDS:
                self.seen[kind] += batch.n_rows(kind)
                self.added[kind] += self._insert(kind, columns[kind])
            if batch.ranking_items:
                self._insert_ranking_items(batch.ranking_items)
            if self.rows_before:
                self._defer_indexes()
        except SQLAlchemyError as exc:
            raise translate(exc, doing) from exc
        except Exception as exc:
            if isinstance(exc, StorageError) or not _is_dbapi_error(exc):
                raise
            raise translate(exc, doing) from exc
        self.position += batch.n_records

    def _insert(self, table: str, columns: list[tuple[Any, ...]]) -> int:
        """executemany of the rows in `columns` (COLUMNS[table] order, names in the name columns); rows stored."""
        if not columns:
            return 0
        n = len(columns[0])
        names = COLUMNS[table]
        omittable = _omittable(table)
        kept: list[str] = []
        values: list[Iterable[Any]] = []
        for i, column in enumerate(columns):
            if i in omittable and column[0] is None and column.count(None) == n:
                continue  # NULL in the whole batch: left out of the statement
            name_table = NAME_COLUMNS.get(names[i])
            if name_table is not None:
                ids = self.ids[name_table]
                unknown = [name for name in set(column) if name not in ids]
                if unknown:
                    self._name_ids(name_table, sorted(unknown))
                values.append(map(ids.__getitem__, column))
            else:
                values.append(column)
            kept.append(names[i])
        self.cursor.executemany(_insert_sql(self.dialect, table, tuple(kept)), zip(*values, strict=True))
        return int(self.cursor.rowcount)

    def _fill_models(self, models: dict[str, str]) -> None:
        """Name the model of stored responses whose model was not known yet (a response is shared by every
        record that holds its text: the first model named for it stays, a later one fills it only if none)."""
        mark = "?" if self.dialect == "sqlite" else "%s"
        self.cursor.executemany(f"UPDATE responses SET model = {mark} WHERE id = {mark} AND model IS NULL",
                                [(model, rid) for rid, model in models.items()])

    def _name_ids(self, table: str, names: list[str]) -> None:
        """Insert the names not stored yet and learn the ids of all of them."""
        t = m.Base.metadata.tables[table]
        self.cursor.executemany(_insert_sql(self.dialect, table, COLUMNS[table]), [(name, self.now) for name in names])
        for start in range(0, len(names), _NAME_CHUNK):
            chunk = names[start:start + _NAME_CHUNK]
            for id_, name in self.conn.execute(select(t.c.id, t.c.name).where(t.c.name.in_(chunk))):
                self.ids[table][name] = id_

    def _insert_ranking_items(self, items: dict[str, list[str]]) -> None:
        """Items of the rankings of this batch (new or not: a stored ranking's items conflict and are skipped)."""
        t = m.table_of(m.Ranking)
        keys = list(items)
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), _NAME_CHUNK):
            chunk = keys[start:start + _NAME_CHUNK]
            for ranking_id, k in self.conn.execute(select(t.c.id, t.c.key).where(t.c.key.in_(chunk))):
                rows.extend((ranking_id, pos, rid) for pos, rid in enumerate(items[k]))
        self._insert("ranking_items", list(zip(*rows, strict=True)))

    # ---- deferred secondary indexes (SQLite) -------------------------------------------------

    def _defer_indexes(self) -> None:
        """Drop the plain indexes of every table this import has filled past its old size."""
        stored = {"responses": self.responses_added, **self.added}
        for table in list(self.rows_before):
            if stored[table] >= max(DEFER_INDEXES_MIN_ROWS, self.rows_before[table]):
                del self.rows_before[table]
                plain = {row[1] for row in self.cursor.execute(f'PRAGMA index_list("{table}")').fetchall()
                         if not row[2] and row[3] == "c"}  # (seq, name, unique, origin, partial)
                for name, sql in self.cursor.execute(
                        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? ORDER BY name",
                        (table,)).fetchall():
                    if name in plain:
                        self.cursor.execute(f'DROP INDEX "{name}"')
                        self.dropped.append((name, sql))

    def finish(self) -> None:
        """Build the dropped indexes again (inside the transaction, before its commit)."""
        try:
            for _, sql in self.dropped:
                self.cursor.execute(sql)
            self.dropped.clear()
        except Exception as exc:
            if not (isinstance(exc, SQLAlchemyError) or _is_dbapi_error(exc)):
                raise
            raise translate(exc, "building the indexes again after the import") from exc


def _is_dbapi_error(exc: BaseException) -> bool:
    """True for exceptions raised by the sqlite3 or psycopg driver itself (raw cursor calls)."""
    module = type(exc).__module__
    return module.startswith(("sqlite3", "psycopg"))


__all__ = ["COLUMNS", "DEFAULT_BATCH_SIZE", "DEFER_INDEXES_MIN_ROWS", "import_records", "insert_ignore_sql"]
