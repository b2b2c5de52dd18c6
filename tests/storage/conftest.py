"""Fixtures: every store test runs on SQLite (in tmp_path) and on a real PostgreSQL server.

The server is started once per session on 127.0.0.1 at a free port from the local PostgreSQL
binaries (initdb/pg_ctl; as the `postgres` user when the tests run as root) and stopped at the end,
also when tests fail. Each test gets a fresh database. Without PostgreSQL binaries the postgres
parameters are skipped with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from storage.db import MIGRATIONS_DIR, WRITE_OPTION, make_engine, normalize_url
from storage.records import Comparison, Demonstration, Feedback, Ranking, Rating, Record
from storage.store import Store


def _find_pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: newest /usr/lib/postgresql/*/bin, else PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0, reverse=True)
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """A throwaway PostgreSQL cluster in a temp folder, trust auth, listening on 127.0.0.1:port."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_postgres = os.geteuid() == 0  # initdb and postgres refuse to run as root
        owner = pwd.getpwnam("postgres") if self.as_postgres else None  # KeyError: no such user
        self.root = Path(tempfile.mkdtemp(prefix="rewardnode-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = (["runuser", "-u", "postgres", "--", *cmd] if shutil.which("runuser")
                   else ["su", "postgres", "-c", shlex.join(cmd)])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> None:
        init = self._run("initdb", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D", str(self.data))
        if init.returncode:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
        opts = f"-k {self.root} -h 127.0.0.1 -p {self.port} -F -c max_connections=50"
        started = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w",
                            "-t", "60", "start")
        if started.returncode:
            log = (self.root / "log").read_text(errors="replace") if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()} {log[-2000:]}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not listen on 127.0.0.1:{self.port} within 30 s")

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = _find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH: "
                    "the PostgreSQL half of the storage tests is NOT run; install the postgresql package")
    try:
        server = PostgresServer(bin_dir)
    except KeyError:
        pytest.skip("running as root but there is no `postgres` user to run PostgreSQL as: "
                    "the PostgreSQL tests are NOT run; create the user (the postgresql package does)")
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        pytest.skip(f"could not start a PostgreSQL test server ({exc}): the PostgreSQL tests are NOT run")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty database: SQLite in tmp_path, or a fresh database on the test server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """An opened (migrated) empty store on each backend."""
    s = Store.open(db_url)
    try:
        yield s
    finally:
        s.close()


def migrate(url: str, revision: str, *, down: bool = False) -> None:
    """`alembic upgrade REVISION` (or downgrade) on the database at `url`, as Store.open runs it."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = make_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            config.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(config, revision)
            conn.commit()
    finally:
        engine.dispose()


T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def sample_records(source: str = "src") -> list[Record]:
    """One or more records of every kind, with every optional field used somewhere."""
    return [
        Comparison(source, "What is 2+2?", "4", "5", "A", annotator="ann1", confidence=0.9, comment="easy",
                   model_a="m-small", model_b="m-large", subset="math", campaign="c1", external_id="1",
                   created_at=T0),
        Comparison(source, "What is 2+2?", "4", "four", "tie", annotator="ann2", agreement=0.5, external_id="2",
                   created_at=T0 + timedelta(seconds=1)),
        Comparison(source, "Say hi", "hi", "go away", "A", annotator="ann1", idempotency_key="req-1", created_at=T0),
        Comparison(source, "Say hi", "hello", "go away", "both_bad", created_at=T0),
        Ranking(source, "Pick a color", ("red", "green", "blue"), models=("m1", None, "m2"), annotator="ann3",
                subset="colors", created_at=T0),
        Rating(source, "Say hi", "hi", 6.0, 1.0, 7.0, annotator="ann2", model="m-small", comment="ok", created_at=T0),
        Feedback(source, "Say hi", "hello", True, annotator="user9", model="m-large", created_at=T0),
        Demonstration(source, "Write a haiku", "an old silent pond\na frog jumps in\nsplash", author="poet",
                      campaign="c1", created_at=T0),
    ]
