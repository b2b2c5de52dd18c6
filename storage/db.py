"""Engines, transactions, migrations and database-error translation.

SQLite (the default) gets WAL journaling, `synchronous=NORMAL`, enforced foreign keys and a busy
timeout on every connection, and real transactions: SQLAlchemy issues BEGIN itself (the sqlite3
module's implicit transactions are off), BEGIN IMMEDIATE for writes so a writer takes the lock up
front instead of failing on upgrade. PostgreSQL is reached through psycopg 3 with the same code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    RootTransaction,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from storage.errors import (
    AmbiguousIdError,
    ConstraintError,
    MigrationError,
    NotFoundError,
    StorageError,
    StoreUnavailableError,
)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
SCHEMA_HEAD: Final = "0004"
"""The newest migration's revision; update it with every new migration (a test checks they agree)."""
WRITE_OPTION: Final = "rewardnode_write"
"""Execution option: on SQLite, a connection carrying it begins with BEGIN IMMEDIATE."""

SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
SQLITE_CACHE_KIB: Final = 64 * 1024  # page cache per connection
SQLITE_IMPORT_CACHE_KIB: Final = 512 * 1024  # during a bulk import, which touches random index pages
SQLITE_PRAGMAS: Final = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}",
    f"PRAGMA cache_size={-SQLITE_CACHE_KIB}",
    "PRAGMA temp_store=MEMORY",
)
SQLITE_NEW_DB_PRAGMAS: Final = ("PRAGMA page_size=16384",)  # only takes effect on a new, empty file
PG_CONNECT_TIMEOUT_S: Final = 10
_PG_MIGRATION_LOCK: Final = 0x7265776172646E6F  # pg_advisory_xact_lock key ("rewardno")
_URL_FIX: Final = ("use sqlite:///PATH/TO/store.db (SQLite, the default) or "
                   "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DBNAME (PostgreSQL)")


def normalize_url(url: str) -> URL:
    """Parse a database URL; plain postgresql:// and postgres:// get the psycopg 3 driver."""
    if not isinstance(url, str) or not url.strip():
        raise StoreUnavailableError("the database URL is empty", _URL_FIX)
    text = url.strip()
    if text.startswith("postgres://"):
        text = "postgresql://" + text[len("postgres://"):]
    try:
        parsed = make_url(text)
    except ArgumentError as exc:
        raise StoreUnavailableError(f"{url!r} is not a database URL ({exc})", _URL_FIX) from exc
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "postgresql" and driver in ("", "psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return parsed
    raise StoreUnavailableError(f"unsupported database driver {parsed.drivername!r} in {_safe(parsed)}", _URL_FIX)


def _safe(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def make_engine(url: URL) -> Engine:
    """An engine for `url` with this store's connection setup (SQLite pragmas, real transactions)."""
    try:
        if url.get_backend_name() == "sqlite":
            if url.database in (None, "", ":memory:"):  # one shared in-memory database for every thread
                engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
            else:
                engine = create_engine(url)
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
        else:
            engine = create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S})
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreUnavailableError(f"cannot create an engine for {_safe(url)}: {exc}", _URL_FIX) from exc
    return engine


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None  # no implicit BEGIN from the sqlite3 module: _sqlite_on_begin does it
    cursor = dbapi_connection.cursor()
    try:
        if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
            for pragma in SQLITE_NEW_DB_PRAGMAS:
                cursor.execute(pragma)
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    immediate = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def check_connection(engine: Engine) -> None:
    """Connect once, so a bad path or an unreachable server fails here with a fix."""
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        raise unavailable(engine.url, exc) from exc


def unavailable(url: URL, exc: BaseException) -> StoreUnavailableError:
    """The error for a database that cannot be opened or reached."""
    detail = _first_line(exc)
    if url.get_backend_name() == "sqlite":
        folder = Path(url.database or ".").expanduser().resolve().parent
        fix = (f"create the folder {folder} or point the URL at a writable file" if not folder.is_dir()
               else f"check that {url.database} is a SQLite database file you can read and write")
        return StoreUnavailableError(f"cannot open the SQLite store {url.database}: {detail}", fix)
    fix = "check that the PostgreSQL server is running and that host, port, user, password and database in the URL are right"
    if "does not exist" in detail:
        fix = f"create the database first (e.g. `createdb {url.database}`) or fix its name in the URL"
    return StoreUnavailableError(f"cannot connect to {_safe(url)}: {detail}", fix)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__


def begin_write(conn: Connection) -> RootTransaction:
    """Begin a write transaction on `conn` (BEGIN IMMEDIATE on SQLite: the write lock up front)."""
    conn.execution_options(**{WRITE_OPTION: True})
    return conn.begin()


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a write transaction: committed on success, rolled back on any exception."""
    with engine.connect() as conn, begin_write(conn):
        yield conn


@contextmanager
def read_transaction(engine: Engine, *, repeatable: bool = False) -> Iterator[Connection]:
    """A connection in a read transaction; `repeatable` gives PostgreSQL one consistent snapshot."""
    with engine.connect() as conn:
        if repeatable and conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


_UNREACHABLE: Final = ("connection refused", "could not connect", "connection failed", "timeout expired",
                       "server closed the connection", "no route to host", "could not translate host name")
"""Lowercase fragments of the drivers' messages for a database server that cannot be reached."""


def translate(exc: BaseException, doing: str) -> StorageError:
    """A database (DBAPI or SQLAlchemy) error raised while `doing` something, as a StorageError."""
    detail = _first_line(exc)
    name = type(getattr(exc, "orig", None) or exc).__name__
    lowered = detail.lower()
    if "locked" in lowered or "busy" in lowered:
        return StorageError(f"{doing} failed: the store is locked by another writer ({detail})",
                            "wait for the other process (e.g. a running import) to finish, then retry")
    if "disk is full" in lowered or "no space left" in lowered:
        return StorageError(f"{doing} failed: the disk is full ({detail})", "free disk space, then retry")
    if "integrity" in name.lower() or "constraint" in lowered or "violat" in lowered:
        return ConstraintError(f"the database refused {doing}: {detail}",
                               "the data breaks a rule of the schema; fix the input (or report a bug "
                               "if the store should have caught it first)")
    if isinstance(exc, DBAPIError) and not exc.connection_invalidated and any(
            marker in lowered for marker in _UNREACHABLE):
        return StoreUnavailableError(f"{doing} failed: the database cannot be reached ({detail})",
                                     "check that the database server is running and reachable, then retry")
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return StoreUnavailableError(f"{doing} failed: the connection to the database was lost ({detail})",
                                     "check that the database server is running, then retry")
    return StorageError(f"{doing} failed: {detail}", "check the database (server running, disk writable), then retry")


def run_migrations(engine: Engine) -> None:
    """Bring the schema to the newest revision (`alembic upgrade head`), creating it in a new database."""
    try:
        with engine.connect() as conn:  # the common case, already at head: no alembic import, no log lines
            at_head = inspect(conn).has_table("alembic_version") and set(
                conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) == {SCHEMA_HEAD}
            conn.rollback()
        if at_head:
            return
    except SQLAlchemyError as exc:
        raise MigrationError(f"reading the schema version of {_safe(engine.url)} failed: {_first_line(exc)}",
                             "check that the URL points at a rewardnode store (or an empty database)") from exc

    from alembic import command
    from alembic.config import Config
    from alembic.util.exc import CommandError

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    try:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()
    except CommandError as exc:
        if "Can't locate revision" in str(exc):
            raise MigrationError(
                f"the store at {_safe(engine.url)} has a schema revision this rewardnode does not know ({exc})",
                "it was written by a newer rewardnode: upgrade rewardnode, or open another store") from exc
        raise MigrationError(f"migrating the store failed: {exc}", "report this with the store's URL scheme") from exc
    except SQLAlchemyError as exc:
        raise MigrationError(f"migrating the store at {_safe(engine.url)} failed: {_first_line(exc)}",
                             "check that the database is writable and not changed by hand, then retry") from exc


def migration_lock(conn: Connection) -> None:
    """Serialize concurrent migrations (PostgreSQL advisory lock; SQLite's BEGIN IMMEDIATE does it there)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")


_HEX_PREFIX: Final = re.compile(r"[0-9a-f]{1,64}")


def find_by_prefix(conn: Connection, column: ColumnElement[str], prefix: str, what: str) -> str:
    """The one value of `column` equal to `prefix` or starting with it (hex ids); errors say how to fix."""
    if not isinstance(prefix, str) or not prefix:
        raise NotFoundError(f"no {what} id given", f"pass a {what} id or a unique prefix of one")
    exact = conn.execute(select(column).where(column == prefix)).scalar_one_or_none()
    if exact is not None:
        return exact
    if not _HEX_PREFIX.fullmatch(prefix):
        raise NotFoundError(f"no {what} has id {prefix!r}", f"list the {what}s and copy an id (lowercase hex)")
    matches = list(conn.execute(select(column).where(column.startswith(prefix)).order_by(column).limit(6)).scalars())
    if not matches:
        raise NotFoundError(f"no {what} id starts with {prefix!r}", f"list the {what}s and copy an id")
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise AmbiguousIdError(f"{prefix!r} is the start of several {what} ids ({shown})",
                               "give more characters of the id")
    return matches[0]


__all__ = [
    "MIGRATIONS_DIR",
    "SCHEMA_HEAD",
    "WRITE_OPTION",
    "begin_write",
    "check_connection",
    "find_by_prefix",
    "make_engine",
    "migration_lock",
    "normalize_url",
    "read_transaction",
    "run_migrations",
    "translate",
    "unavailable",
    "write_transaction",
]
