"""A store with a small pool of prompts (three responses each), one campaign, and tokens of every role."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from node.http import ApiToken, Role, ServerConfig, create_app
from node.labeling import labeling_feature
from node.labeling.service import sha256_hex
from storage.models import ApiIdempotencyKey, table_of
from storage.records import Comparison, Record
from storage.store import Store
from tests.node.http.conftest import assert_error  # noqa: F401 -- the one error shape, re-exported for the tests here

ADMIN_TOKEN = "store-admin-token-0123456789"
LABELER_TOKEN = "store-labeler-token-0123456789"
SCORER_TOKEN = "store-scorer-token-0123456789"
CONFIG_ADMIN_TOKEN = "config-admin-token-0123456789"  # from node.toml [[server.tokens]]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LABELER = {"Authorization": f"Bearer {LABELER_TOKEN}"}
SCORER = {"Authorization": f"Bearer {SCORER_TOKEN}"}
CAMPAIGN = "helpful"


def pool(n_prompts: int) -> list[Record]:
    """n prompts with three responses each: 3 pairs per prompt."""
    out: list[Record] = []
    for i in range(n_prompts):
        out.append(Comparison("pool", f"Question {i}?", f"short {i}", f"a much longer answer {i}", "B",
                              annotator="seed"))
        out.append(Comparison("pool", f"Question {i}?", f"short {i}", f"medium answer {i}", "B", annotator="seed"))
    return out


def api_keys(store: Store) -> dict[str, tuple[str, str | None]]:
    """The ingestion API's idempotency keys: scoped key -> (kind, fingerprint)."""
    table = table_of(ApiIdempotencyKey)
    with store.engine.connect() as conn:
        return {r.key: (r.kind, r.fingerprint) for r in conn.execute(select(table))}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    s.import_records(pool(4))
    s.create_campaign(CAMPAIGN, sources=["pool"], overlap=1, guidelines="Prefer the more helpful answer.")
    s.add_token(sha256_hex(ADMIN_TOKEN), kind="api", role="admin", name="ops")
    s.add_token(sha256_hex(LABELER_TOKEN), kind="api", role="labeler", name="alice")
    s.add_token(sha256_hex(SCORER_TOKEN), kind="api", role="scorer", name="llm")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def server(store: Store) -> Iterator[str]:
    """The app with the labeling feature on 127.0.0.1:<free port>, served from a background thread."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(ServerConfig(port=0), features=[labeling_feature(store)]))
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


ClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_client(aiohttp_client: Any, store: Store) -> ClientFactory:
    async def make(**overrides: Any) -> TestClient:
        config = ServerConfig(**{"tokens": (ApiToken.from_secret(CONFIG_ADMIN_TOKEN, Role.ADMIN, "root"),),
                                 **overrides})
        client: TestClient = await aiohttp_client(create_app(config, features=[labeling_feature(store)]))
        return client

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient:
    return await make_client()


