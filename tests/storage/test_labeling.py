"""Labeling tables (migrations 0002, 0003): campaigns, their pairs, answers, next-pair order, access tokens.

Every test runs on SQLite and on PostgreSQL (the `store` fixture of conftest.py).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from storage import models as m
from storage.aggregations import DEFAULT_METHOD
from storage.db import SCHEMA_HEAD
from storage.errors import AlreadyExistsError, InvalidRecordError, NotFoundError
from storage.hashing import prompt_id, response_id
from storage.records import Comparison, Demonstration, Record
from storage.store import Store
from storage.types import AmbiguousItem
from tests.storage.conftest import migrate

api_keys = m.ApiIdempotencyKey.__table__


def pool(source: str = "pool", n_prompts: int = 3) -> list[Record]:
    """n prompts with three responses each (3 pairs per prompt), one comparison per prompt."""
    return [Comparison(source, f"prompt {i}", f"r{i}-a", f"r{i}-b", "A", annotator="seed") for i in range(n_prompts)] + [
        Comparison(source, f"prompt {i}", f"r{i}-a", f"r{i}-c", "B", annotator="seed") for i in range(n_prompts)]


def test_labeling_migrations_match_the_models(store: Store) -> None:
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() == SCHEMA_HEAD
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, m.Base.metadata) == []
    assert {"campaign_pairs", "campaign_labels", "access_tokens", "api_idempotency_keys"} <= set(
        sa.inspect(store.engine).get_table_names())


def test_campaign_from_a_source_has_every_response_pair(store: Store) -> None:
    store.import_records(pool(n_prompts=3))
    info = store.create_campaign("c1", sources=["pool"], overlap=2, guidelines="be kind")
    assert (info.name, info.pairs, info.overlap, info.guidelines, info.labels) == ("c1", 9, 2, "be kind", 0)
    assert [c.name for c in store.list_campaigns()] == ["c1"]
    with pytest.raises(AlreadyExistsError):
        store.create_campaign("c1", sources=["pool"])
    with pytest.raises(NotFoundError, match="no source named"):
        store.create_campaign("c2", sources=["nope"])
    with pytest.raises(InvalidRecordError, match="no pairs"):
        store.create_campaign("c3")
    with pytest.raises(NotFoundError, match="campaign create"):
        store.get_campaign("missing")


def test_explicit_pairs_must_share_a_prompt(store: Store) -> None:
    store.import_records(pool(n_prompts=2))
    p0, p1 = prompt_id("prompt 0"), prompt_id("prompt 1")
    a, b, other = response_id(p0, "r0-a"), response_id(p0, "r0-b"), response_id(p1, "r1-a")
    assert store.create_campaign("x", pairs=[(b, a)]).pairs == 1
    with pytest.raises(InvalidRecordError, match="same prompt"):
        store.create_campaign("y", pairs=[(a, other)])


def test_answers_store_comparisons_with_the_left_response_as_a(store: Store) -> None:
    store.import_records(pool(n_prompts=1))
    store.create_campaign("c", sources=["pool"])
    pair = store.next_pair("c", "alice")
    assert pair is not None and pair.reason == "overlap"
    # alice saw the hi response on the left and preferred it
    result = store.record_label("c", pair_id=pair.pair_id, annotator="alice", left_response_id=pair.response_hi_id,
                                choice="A", confidence=0.8, comment="clear", better="an even better answer")
    assert result.stored and result.comparison_key is not None
    again = store.record_label("c", pair_id=pair.pair_id, annotator="alice", left_response_id=pair.response_lo_id,
                               choice="B")
    assert not again.stored and again.comparison_key == result.comparison_key
    stored = [r for r in store.iter_records(sources=["labeling:c"])]
    comparisons = [r for r in stored if isinstance(r, Comparison)]
    demos = [r for r in stored if isinstance(r, Demonstration)]
    assert len(comparisons) == 1 and len(demos) == 1
    c = comparisons[0]
    assert (c.response_a, c.response_b, c.outcome) == (pair.response_hi, pair.response_lo, "A")
    assert (c.annotator, c.campaign, c.confidence, c.comment) == ("alice", "c", 0.8, "clear")
    assert demos[0].response == "an even better answer" and demos[0].author == "alice"
    rows = store.campaign_labels("c")
    assert [(r.annotator, r.left_response_id, r.right_response_id, r.choice) for r in rows] == [
        ("alice", pair.response_hi_id, pair.response_lo_id, "A")]
    with pytest.raises(InvalidRecordError, match="shown on the left"):
        store.record_label("c", pair_id=pair.pair_id, annotator="bob", left_response_id="0" * 64, choice="A")
    with pytest.raises(InvalidRecordError, match="choice"):
        store.record_label("c", pair_id=pair.pair_id, annotator="bob", left_response_id=pair.response_lo_id,
                           choice="C")


def test_next_pair_fills_overlap_never_repeats_then_uses_model_and_queue(store: Store) -> None:
    store.import_records(pool(n_prompts=1))
    info = store.create_campaign("c", sources=["pool"], overlap=2)
    assert info.pairs == 3
    seen: list[int] = []
    while (pair := store.next_pair("c", "alice")) is not None:
        assert pair.pair_id not in seen and pair.reason == "overlap"
        seen.append(pair.pair_id)
        choice = "skip" if len(seen) == 1 else "tie"
        store.record_label("c", pair_id=pair.pair_id, annotator="alice", left_response_id=pair.response_lo_id,
                           choice=choice)
    assert len(seen) == 3 and store.labeled_count("c", "alice") == 3
    # bob: pairs alice answered (one label each) come before the skipped one (zero labels)
    first = store.next_pair("c", "bob")
    assert first is not None and first.labels == 1 and first.pair_id != seen[0]
    for _ in range(3):
        pair = store.next_pair("c", "bob")
        assert pair is not None
        store.record_label("c", pair_id=pair.pair_id, annotator="bob", left_response_id=pair.response_hi_id,
                           choice="A")
    progress = store.get_campaign("c")
    assert (progress.labels, progress.complete, progress.labelers) == (5, 2, 2)
    # carol: one pair still below overlap, then the model's uncertain pair, then the ambiguity queue
    below = store.next_pair("c", "carol", uncertain=[seen[2]])
    assert below is not None and below.reason == "overlap" and below.pair_id == seen[0]
    store.record_label("c", pair_id=below.pair_id, annotator="carol", left_response_id=below.response_lo_id,
                       choice="B")
    uncertain = store.next_pair("c", "carol", uncertain=[seen[2]])
    assert uncertain is not None and (uncertain.reason, uncertain.pair_id) == ("uncertain", seen[2])
    store.record_label("c", pair_id=seen[2], annotator="carol", left_response_id=uncertain.response_lo_id,
                       choice="B")
    assert store.next_pair("c", "carol", uncertain=[seen[2]]) is None
    texts = {p.pair_id: p for p in store.campaign_pair_texts("c")}
    queued = texts[seen[1]]
    p0 = prompt_id("prompt 0")
    lo, hi = response_id(p0, queued.response_lo), response_id(p0, queued.response_hi)
    store.save_aggregation({}, [], [], [], [AmbiguousItem(p0, lo, hi, "low_agreement", 0.9)], method=DEFAULT_METHOD)
    queue_pair = store.next_pair("c", "carol")
    assert queue_pair is not None and (queue_pair.reason, queue_pair.pair_id) == ("ambiguous", seen[1])


def test_tokens_are_found_by_hash_and_invites_work_once(store: Store) -> None:
    store.import_records(pool(n_prompts=1))
    store.create_campaign("c", sources=["pool"])
    api = store.add_token("a" * 64, kind="api", role="admin", name="ops")
    assert store.find_token("a" * 64, ("api",)) == api
    assert store.find_token("a" * 64, ("session",)) is None
    invite = store.add_token("b" * 64, kind="invite", role="labeler", name="alice", campaign="c")
    assert invite.campaign == "c"
    later = datetime.now(UTC) + timedelta(days=1)
    session = store.use_invite("b" * 64, "c" * 64, later)
    assert session is not None and (session.kind, session.name, session.campaign) == ("session", "alice", "c")
    assert store.use_invite("b" * 64, "d" * 64, later) is None  # used
    assert store.find_token("b" * 64, ("invite",)) is None
    assert store.find_token("c" * 64, ("session",)) is not None
    store.add_token("e" * 64, kind="session", role="labeler", name="old", expires_at=datetime.now(UTC) - timedelta(1))
    assert store.find_token("e" * 64, ("session",)) is None  # expired
    store.revoke_token(api.id)
    assert store.find_token("a" * 64, ("api",)) is None
    assert [t.kind for t in store.list_tokens()] == ["api", "invite", "session", "session"]
    with pytest.raises(NotFoundError):
        store.revoke_token(999)
    with pytest.raises(InvalidRecordError):
        store.add_token("f" * 64, kind="api", role="root", name="x")


def test_revoking_a_token_ends_the_sessions_made_from_it(store: Store) -> None:
    store.import_records(pool(n_prompts=1))
    store.create_campaign("c", sources=["pool"])
    later = datetime.now(UTC) + timedelta(days=1)
    api = store.add_token("a" * 64, kind="api", role="labeler", name="alice")
    invite = store.add_token("b" * 64, kind="invite", role="labeler", name="bob", campaign="c")
    scorer = store.add_token("f" * 64, kind="api", role="scorer", name="llm")
    from_api = store.use_invite("a" * 64, "c" * 64, later)  # an api token opens as many sessions as it likes
    again = store.use_invite("a" * 64, "d" * 64, later)
    from_invite = store.use_invite("b" * 64, "e" * 64, later)
    assert from_api is not None and again is not None and from_invite is not None
    assert (from_api.parent_id, again.parent_id, from_invite.parent_id) == (api.id, api.id, invite.id)
    assert (from_api.kind, from_api.name, from_api.campaign) == ("session", "alice", None)
    assert (from_invite.kind, from_invite.name, from_invite.campaign) == ("session", "bob", "c")
    assert store.use_invite("f" * 64, "9" * 64, later) is None  # a scorer token is for machines only
    # a session as made before migration 0003: no parent
    old = store.add_token("7" * 64, kind="session", role="labeler", name="alice", expires_at=later)
    assert old.parent_id is None

    store.revoke_token(api.id)
    assert store.find_token("c" * 64, ("session",)) is None
    assert store.find_token("d" * 64, ("session",)) is None
    assert store.find_token("e" * 64, ("session",)) is not None  # another parent's session lives on
    assert store.find_token("7" * 64, ("session",)) is not None  # no parent: it ends at its expiry
    assert store.use_invite("a" * 64, "8" * 64, later) is None  # a revoked token opens no new session
    store.revoke_token(invite.id)
    assert store.find_token("e" * 64, ("session",)) is None
    revoked = {t.id: t.revoked_at for t in store.list_tokens()}
    assert revoked[from_api.id] == revoked[api.id] is not None  # in the same transaction
    assert revoked[scorer.id] is None and revoked[old.id] is None


def test_api_keys_bind_the_whole_record(store: Store) -> None:
    store.import_records([Comparison("api", "p", "a", "b", "A", annotator="alice")])  # stored without a key
    first = Comparison("api", "p", "a", "b", "A", annotator="alice", confidence=0.5, idempotency_key="k")
    assert store.submit(first, scope="labeler:alice") is False  # the content was there: k names it now
    assert store.submit(first, scope="labeler:alice") is False  # a retry
    before = store.table_counts()
    for other in (Comparison("api", "q", "x", "y", "B", annotator="alice", idempotency_key="k"),
                  replace(first, confidence=0.9), replace(first, comment="changed my mind"),
                  replace(first, model_a="m1")):
        with pytest.raises(AlreadyExistsError, match="key 'k' was already used for another record"):
            store.submit(other, scope="labeler:alice")
    assert store.table_counts() == before
    assert store.submit(replace(first, idempotency_key="k2"), scope="labeler:alice") is False  # same content
    with store.engine.connect() as conn:
        keys = dict(conn.execute(sa.select(api_keys.c.key, api_keys.c.kind)).all())
        assert keys == {"labeler:alice/k": "comparisons", "labeler:alice/k2": "comparisons"}
        assert conn.execute(sa.select(sa.func.count()).select_from(m.Comparison.__table__)
                            .where(m.Comparison.__table__.c.idempotency_key.is_not(None))).scalar_one() == 0


def test_file_keys_that_look_scoped_do_not_block_the_api(store: Store) -> None:
    store.import_records([Comparison("file", "p", "a", "b", "A", idempotency_key="labeler:carol/k9")])
    mine = Comparison("api", "q", "x", "y", "B", annotator="carol", idempotency_key="k9")
    assert store.submit(mine, scope="labeler:carol") is True
    assert store.submit(mine, scope="labeler:carol") is False
    assert sorted(str(r.idempotency_key) for r in store.iter_records()) == ["None", "labeler:carol/k9"]


def test_migration_0003_moves_the_api_keys_and_keeps_the_token_checks(db_url: str) -> None:
    with Store.open(db_url) as store:  # rows as the API stored them before 0003: the scoped key on the row
        store.import_records([
            Comparison("api", "p", "a", "b", "A", annotator="alice", confidence=0.5,
                       idempotency_key="labeler:alice/k1"),
            Comparison("file", "p", "a", "c", "B", idempotency_key="plain-file-key"),
            Comparison("file", "p", "b", "c", "B", idempotency_key="Admin:x/not-a-role")])
        store.submit(Comparison("api", "p2", "a", "b", "B", annotator="ops", idempotency_key="k2"),
                     scope="admin:ops")
        session = store.add_token("c" * 64, kind="session", role="labeler", name="alice")
    migrate(db_url, "0002", down=True)  # the key submitted after 0003 goes back onto its row
    migrate(db_url, "head")
    with Store.open(db_url) as store:
        on_rows = sorted(str(r.idempotency_key) for r in store.iter_records())
        assert on_rows == ["Admin:x/not-a-role", "None", "None", "plain-file-key"]
        with store.engine.connect() as conn:
            moved = {r.key: (r.kind, r.fingerprint) for r in conn.execute(sa.select(api_keys))}
        assert moved == {"labeler:alice/k1": ("comparisons", None), "admin:ops/k2": ("comparisons", None)}
        # a moved key compares by kind and content key, as before: confidence is not part of it
        retry = Comparison("api", "p", "a", "b", "A", annotator="alice", confidence=0.9, idempotency_key="k1")
        assert store.submit(retry, scope="labeler:alice") is False
        with pytest.raises(AlreadyExistsError):
            store.submit(replace(retry, outcome="B"), scope="labeler:alice")
        [token] = store.list_tokens()
        assert (token.id, token.parent_id) == (session.id, None)
        assert store.find_token("c" * 64, ("session",)) is not None
        tokens = m.AccessToken.__table__
        row = {"sha256": "d" * 64, "kind": "session", "role": "labeler", "name": "x",
               "created_at": datetime.now(UTC)}
        for bad in ({"kind": "bogus"}, {"role": "root"}, {"parent_id": 999}):
            with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
                conn.execute(sa.insert(tokens).values(**{**row, **bad}))
