"""Labeling campaigns, their pairs and labels, and the HTTP server's access tokens (stored hashed).

A campaign is a set of response pairs (lo < hi by id) with an overlap: how many labelers should
judge each pair. A labeler's answer is one `campaign_labels` row (at most one per pair and labeler)
that records which response was shown on the left and the choice relative to what was shown; the
answer itself is stored as an ordinary `Comparison` (response_a = the left one) and, when the
labeler wrote a better response, a `Demonstration`, in the same transaction.

Every function takes a Connection inside the caller's transaction (the Store opens them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime
from itertools import combinations
from typing import Any, Final
from urllib.parse import quote

from sqlalchemy import Connection, Row, and_, case, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from storage import hashing, reading
from storage import models as m
from storage.errors import AlreadyExistsError, InvalidRecordError, NotFoundError
from storage.importer import _Importer
from storage.records import Comparison, Demonstration, Record
from storage.rows import RowBuilder

MAX_RESPONSES_PER_PROMPT: Final = 8
"""A source's prompt with more responses contributes pairs among its first 8 (28 pairs)."""
_IN_CHUNK: Final = 500

_campaigns: Final = m.table_of(m.Campaign)
_pairs: Final = m.table_of(m.CampaignPair)
_labels: Final = m.table_of(m.CampaignLabel)
_tokens: Final = m.table_of(m.AccessToken)
_annotators: Final = m.table_of(m.Annotator)
_responses: Final = m.table_of(m.Response)
_prompts: Final = m.table_of(m.Prompt)
_comparisons: Final = m.table_of(m.Comparison)
_queue: Final = m.table_of(m.AmbiguityItem)
_api_keys: Final = m.table_of(m.ApiIdempotencyKey)
MAX_LABEL_ID: Final = 2**63 - 1
"""Ids (pairs, tokens) are 64-bit integers: a bigger one names nothing (and SQLite cannot bind it)."""


@dataclass(frozen=True, slots=True)
class CampaignInfo:
    """A campaign with its progress."""

    id: int
    name: str
    guidelines: str | None
    overlap: int  # labels wanted per pair
    pairs: int
    labels: int  # answers that are not skips
    complete: int  # pairs with at least `overlap` labels
    labelers: int  # distinct labelers who answered
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PairToLabel:
    """The next pair for a labeler, with texts; `reason` says why it was picked."""

    pair_id: int
    campaign: str
    prompt_id: str
    prompt: str
    response_lo_id: str
    response_lo: str
    response_hi_id: str
    response_hi: str
    labels: int  # non-skip labels so far
    reason: str  # "overlap" (below the campaign overlap), "uncertain" (the reward model), "ambiguous" (queue)


@dataclass(frozen=True, slots=True)
class PairText:
    """A campaign pair's texts (for scoring it with a reward model)."""

    pair_id: int
    prompt: str
    response_lo: str
    response_hi: str


@dataclass(frozen=True, slots=True)
class CampaignLabelRow:
    """One stored answer: what was shown left and right, and the choice relative to that."""

    pair_id: int
    annotator: str
    left_response_id: str
    right_response_id: str
    choice: str  # A = left, B = right, tie, both_bad, skip
    comparison_key: str | None
    demonstration_key: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LabelResult:
    """What recording an answer did: `stored` is False when this labeler had already answered the pair."""

    stored: bool
    comparison_key: str | None


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored credential (never its secret)."""

    id: int
    kind: str  # api | invite | session
    role: str  # admin | scorer | labeler
    name: str
    campaign: str | None
    created_at: datetime
    expires_at: datetime | None
    used_at: datetime | None
    revoked_at: datetime | None
    parent_id: int | None = None  # a session's api token or invite; None for sessions older than schema 0003


# ---- campaigns ------------------------------------------------------------------------------


def insert_ignore(conn: Connection, table: Any, rows: list[dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING of `rows` into `table`; the number of rows inserted."""
    if not rows:
        return 0
    dialect_insert = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
    result = conn.execute(dialect_insert(table).on_conflict_do_nothing(), rows)
    return int(result.rowcount)


def name_id(conn: Connection, table: Any, name: str, now: datetime) -> int:
    """The id of the named row of a name table (sources, annotators, campaigns), created if missing."""
    insert_ignore(conn, table, [{"name": name, "created_at": now}])
    return int(conn.execute(select(table.c.id).where(table.c.name == name)).scalar_one())


def _source_pairs(conn: Connection, source_ids: list[int]) -> list[tuple[str, str, str]]:
    """(prompt, lo, hi) for every pair of responses of the prompts the sources labeled or brought."""
    prompt_ids = set(conn.execute(select(_prompts.c.id).where(_prompts.c.source_id.in_(source_ids))).scalars())
    for kind in m.KINDS:
        t = m.Base.metadata.tables[kind]
        prompt_ids |= set(conn.execute(select(t.c.prompt_id).where(t.c.source_id.in_(source_ids))).scalars())
    by_prompt: dict[str, list[str]] = {}
    ordered = sorted(prompt_ids)
    for start in range(0, len(ordered), _IN_CHUNK):
        rows = conn.execute(select(_responses.c.prompt_id, _responses.c.id)
                            .where(_responses.c.prompt_id.in_(ordered[start:start + _IN_CHUNK]))
                            .order_by(_responses.c.prompt_id, _responses.c.id))
        for pid, rid in rows:
            by_prompt.setdefault(pid, []).append(rid)
    return [(pid, lo, hi) for pid, rids in sorted(by_prompt.items())
            for lo, hi in combinations(rids[:MAX_RESPONSES_PER_PROMPT], 2)]


def _explicit_pairs(conn: Connection, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for a, b in pairs:
        rows = dict(conn.execute(select(_responses.c.id, _responses.c.prompt_id)
                                 .where(_responses.c.id.in_([a, b]))).all())
        missing = [x for x in (a, b) if x not in rows]
        if missing:
            raise NotFoundError(f"no response has id {missing[0]!r}", "pass full response ids of stored responses")
        if a == b or rows[a] != rows[b]:
            raise InvalidRecordError(f"responses {a[:12]} and {b[:12]} are not two responses to one prompt",
                                     "pair two different responses to the same prompt")
        out.append((rows[a], min(a, b), max(a, b)))
    return out


def create_campaign(conn: Connection, *, name: str, guidelines: str | None, overlap: int,
                    sources: Sequence[str], pairs: Sequence[tuple[str, str]], now: datetime) -> int:
    """Create a campaign over the pairs of `sources` plus the explicit response-id `pairs`; its id.

    A campaign name that imports created (labels with a campaign field) is taken over; one that
    already has pairs is refused.
    """
    if not name:
        raise InvalidRecordError("the campaign name is empty", "give the campaign a name")
    if overlap < 1:
        raise InvalidRecordError(f"overlap {overlap} is below 1", "ask for at least one label per pair")
    campaign_id = conn.execute(select(_campaigns.c.id).where(_campaigns.c.name == name)).scalar_one_or_none()
    if campaign_id is not None and conn.execute(
            select(func.count()).select_from(_pairs).where(_pairs.c.campaign_id == campaign_id)).scalar_one():
        raise AlreadyExistsError(f"campaign {name!r} already exists", "pick another name")
    ids = reading.source_ids(conn, list(sources)) or []
    found = _source_pairs(conn, ids) if ids else []
    found += _explicit_pairs(conn, pairs)
    if not found:
        raise InvalidRecordError(f"campaign {name!r} would have no pairs (no prompt of {list(sources)} has two "
                                 "responses, and no explicit pairs were given)",
                                 "pick sources whose prompts have at least two responses, or pass pairs")
    if campaign_id is None:
        campaign_id = int(conn.execute(insert(_campaigns).values(
            name=name, guidelines=guidelines, overlap=overlap, created_at=now).returning(_campaigns.c.id)).scalar_one())
    else:
        conn.execute(update(_campaigns).where(_campaigns.c.id == campaign_id).values(
            guidelines=guidelines, overlap=overlap))
    insert_ignore(conn, _pairs, [{"campaign_id": campaign_id, "prompt_id": pid, "response_lo_id": lo,
                                   "response_hi_id": hi, "created_at": now} for pid, lo, hi in found])
    return int(campaign_id)


def list_campaigns(conn: Connection, name: str | None = None) -> list[CampaignInfo]:
    """Every campaign (or the one named), by name, with its progress."""
    answered = _labels.c.choice != "skip"
    per_pair = (select(_pairs.c.id.label("pair_id"), _pairs.c.campaign_id,
                       func.count(_labels.c.id).label("n"))
                .select_from(_pairs.outerjoin(_labels, and_(_labels.c.pair_id == _pairs.c.id, answered)))
                .group_by(_pairs.c.id, _pairs.c.campaign_id).subquery())
    stats: dict[int, tuple[int, int, int]] = {}
    q = select(per_pair.c.campaign_id, func.count(), func.coalesce(func.sum(per_pair.c.n), 0),
               func.sum(case((per_pair.c.n >= _campaigns.c.overlap, 1), else_=0))).join(
        _campaigns, _campaigns.c.id == per_pair.c.campaign_id).group_by(per_pair.c.campaign_id)
    for cid, n_pairs, n_labels, n_complete in conn.execute(q):
        stats[cid] = (int(n_pairs), int(n_labels), int(n_complete or 0))
    labelers: dict[int, int] = dict(conn.execute(
        select(_pairs.c.campaign_id, func.count(func.distinct(_labels.c.annotator_id)))
        .join(_labels, _labels.c.pair_id == _pairs.c.id).where(answered).group_by(_pairs.c.campaign_id)).all())
    query = select(_campaigns).order_by(_campaigns.c.name)
    if name is not None:
        query = query.where(_campaigns.c.name == name)
    out = []
    for row in conn.execute(query):
        n_pairs, n_labels, n_complete = stats.get(row.id, (0, 0, 0))
        out.append(CampaignInfo(id=row.id, name=row.name, guidelines=row.guidelines, overlap=row.overlap,
                                pairs=n_pairs, labels=n_labels, complete=n_complete,
                                labelers=int(labelers.get(row.id, 0)), created_at=row.created_at))
    return out


def get_campaign(conn: Connection, name: str) -> CampaignInfo:
    """One campaign by name; NotFoundError names the stored ones."""
    found = list_campaigns(conn, name)
    if not found:
        known = ", ".join(conn.execute(select(_campaigns.c.name).order_by(_campaigns.c.name)).scalars()) or "none yet"
        raise NotFoundError(f"no campaign named {name!r} (campaigns: {known})",
                            "create it with `rewardnode campaign create NAME --source SOURCE`")
    return found[0]


# ---- next pair ------------------------------------------------------------------------------


def _annotator_id(conn: Connection, name: str) -> int | None:
    return conn.execute(select(_annotators.c.id).where(_annotators.c.name == name)).scalar_one_or_none()


def _pair(conn: Connection, campaign: CampaignInfo, pair_id: int, reason: str) -> PairToLabel:
    p = conn.execute(select(_pairs).where(_pairs.c.id == pair_id)).one()
    texts = reading.texts(conn, _responses, [p.response_lo_id, p.response_hi_id])
    prompt = conn.execute(select(_prompts.c.text).where(_prompts.c.id == p.prompt_id)).scalar_one()
    n = conn.execute(select(func.count()).select_from(_labels).where(
        _labels.c.pair_id == pair_id, _labels.c.choice != "skip")).scalar_one()
    return PairToLabel(pair_id=p.id, campaign=campaign.name, prompt_id=p.prompt_id, prompt=prompt,
                       response_lo_id=p.response_lo_id, response_lo=texts[p.response_lo_id],
                       response_hi_id=p.response_hi_id, response_hi=texts[p.response_hi_id], labels=int(n),
                       reason=reason)


def next_pair(conn: Connection, campaign_name: str, annotator: str,
              uncertain: Sequence[int] = ()) -> PairToLabel | None:
    """The next pair `annotator` should label in the campaign, never one they answered (or skipped).

    First pairs below the campaign overlap (the most-labeled first, so pairs complete), then the
    `uncertain` pair ids in the given order (a reward model's least certain), then pairs of the
    campaign in the open ambiguity queue (highest score first). None when nothing is left.
    """
    campaign = get_campaign(conn, campaign_name)
    aid = _annotator_id(conn, annotator)
    mine = select(_labels.c.pair_id).where(_labels.c.annotator_id == (aid if aid is not None else -1))
    n = func.count(_labels.c.id)
    below = conn.execute(
        select(_pairs.c.id).select_from(_pairs.outerjoin(
            _labels, and_(_labels.c.pair_id == _pairs.c.id, _labels.c.choice != "skip")))
        .where(_pairs.c.campaign_id == campaign.id, _pairs.c.id.not_in(mine))
        .group_by(_pairs.c.id).having(n < campaign.overlap).order_by(n.desc(), _pairs.c.id).limit(1)
    ).scalar_one_or_none()
    if below is not None:
        return _pair(conn, campaign, below, "overlap")
    if uncertain:
        done = set(conn.execute(mine.where(_labels.c.pair_id.in_(list(uncertain)))).scalars())
        ours = set(conn.execute(select(_pairs.c.id).where(_pairs.c.campaign_id == campaign.id,
                                                          _pairs.c.id.in_(list(uncertain)))).scalars())
        for pair_id in uncertain:
            if pair_id in ours and pair_id not in done:
                return _pair(conn, campaign, pair_id, "uncertain")
    queued = conn.execute(
        select(_pairs.c.id).join(_queue, and_(_queue.c.response_lo_id == _pairs.c.response_lo_id,
                                              _queue.c.response_hi_id == _pairs.c.response_hi_id))
        .where(_pairs.c.campaign_id == campaign.id, _queue.c.status == "open", _pairs.c.id.not_in(mine))
        .order_by(_queue.c.score.desc(), _pairs.c.id).limit(1)
    ).scalar_one_or_none()
    return None if queued is None else _pair(conn, campaign, queued, "ambiguous")


def pair_texts(conn: Connection, campaign_name: str, *, limit: int) -> list[PairText]:
    """Texts of up to `limit` pairs of the campaign, by pair id (to score them with a reward model)."""
    campaign = get_campaign(conn, campaign_name)
    rows = conn.execute(select(_pairs).where(_pairs.c.campaign_id == campaign.id).order_by(_pairs.c.id)
                        .limit(limit)).all()
    texts = reading.texts(conn, _responses, [x for r in rows for x in (r.response_lo_id, r.response_hi_id)])
    prompts = reading.texts(conn, _prompts, [r.prompt_id for r in rows])
    return [PairText(r.id, prompts[r.prompt_id], texts[r.response_lo_id], texts[r.response_hi_id]) for r in rows]


def labeled_count(conn: Connection, campaign_name: str, annotator: str) -> int:
    """How many pairs of the campaign `annotator` has answered (skips included)."""
    aid = _annotator_id(conn, annotator)
    if aid is None:
        return 0
    return int(conn.execute(select(func.count()).select_from(_labels.join(_pairs, _pairs.c.id == _labels.c.pair_id))
                            .join(_campaigns, _campaigns.c.id == _pairs.c.campaign_id)
                            .where(_campaigns.c.name == campaign_name, _labels.c.annotator_id == aid)).scalar_one())


# ---- answers --------------------------------------------------------------------------------


def record_label(conn: Connection, *, campaign_name: str, pair_id: int, annotator: str, left_response_id: str,
                 choice: str, confidence: float | None, comment: str | None, better: str | None, source: str,
                 now: datetime) -> LabelResult:
    """Store one answer (and its Comparison and Demonstration) unless `annotator` already answered the pair."""
    if choice not in m.LABEL_CHOICES:
        raise InvalidRecordError(f"choice {choice!r} is not one of {', '.join(m.LABEL_CHOICES)}", "pick one of them")
    campaign = get_campaign(conn, campaign_name)
    p = None if not 0 <= pair_id <= MAX_LABEL_ID else conn.execute(
        select(_pairs).where(_pairs.c.id == pair_id, _pairs.c.campaign_id == campaign.id)).one_or_none()
    if p is None:
        raise NotFoundError(f"campaign {campaign_name!r} has no pair {pair_id}", "label the pair the page shows")
    if left_response_id not in (p.response_lo_id, p.response_hi_id):
        raise InvalidRecordError(f"response {left_response_id[:12]} is not one of pair {pair_id}",
                                 "send the id of the response shown on the left")
    right = p.response_hi_id if left_response_id == p.response_lo_id else p.response_lo_id
    aid = name_id(conn, _annotators, annotator, now)
    existing = conn.execute(select(_labels.c.comparison_key).where(
        _labels.c.pair_id == pair_id, _labels.c.annotator_id == aid)).one_or_none()
    if existing is not None:
        return LabelResult(stored=False, comparison_key=existing.comparison_key)
    texts = reading.texts(conn, _responses, [left_response_id, right])
    prompt = conn.execute(select(_prompts.c.text).where(_prompts.c.id == p.prompt_id)).scalar_one()
    records: list[Comparison | Demonstration] = []
    comparison_key = demonstration_key = None
    if choice != "skip":
        c = Comparison(source, prompt, texts[left_response_id], texts[right], choice,  # type: ignore[arg-type]
                       annotator=annotator, confidence=confidence, comment=comment or None,
                       campaign=campaign_name, created_at=now)
        records.append(c)
        comparison_key = hashing.comparison_key(c, p.prompt_id, left_response_id, right)
    if better:
        d = Demonstration(source, prompt, better, author=annotator, campaign=campaign_name, created_at=now)
        records.append(d)
        demonstration_key = hashing.demonstration_key(d, p.prompt_id)
    if records:
        _Importer(conn, now).flush(list(records))
    conn.execute(insert(_labels).values(pair_id=pair_id, annotator_id=aid, left_response_id=left_response_id,
                                        choice=choice, comparison_key=comparison_key,
                                        demonstration_key=demonstration_key, created_at=now))
    return LabelResult(stored=True, comparison_key=comparison_key)


def campaign_labels(conn: Connection, campaign_name: str) -> list[CampaignLabelRow]:
    """Every answer of the campaign, oldest first."""
    campaign = get_campaign(conn, campaign_name)
    q = (select(_labels, _pairs.c.response_lo_id, _pairs.c.response_hi_id, _annotators.c.name.label("who"))
         .join(_pairs, _pairs.c.id == _labels.c.pair_id).join(_annotators, _annotators.c.id == _labels.c.annotator_id)
         .where(_pairs.c.campaign_id == campaign.id).order_by(_labels.c.id))
    out = []
    for r in conn.execute(q):
        right = r.response_hi_id if r.left_response_id == r.response_lo_id else r.response_lo_id
        out.append(CampaignLabelRow(pair_id=r.pair_id, annotator=r.who, left_response_id=r.left_response_id,
                                    right_response_id=right, choice=r.choice, comparison_key=r.comparison_key,
                                    demonstration_key=r.demonstration_key, created_at=r.created_at))
    return out


# ---- access tokens --------------------------------------------------------------------------


def _token(row: Row[Any], campaign: str | None) -> TokenInfo:
    return TokenInfo(id=row.id, kind=row.kind, role=row.role, name=row.name, campaign=campaign,
                     created_at=row.created_at, expires_at=row.expires_at, used_at=row.used_at,
                     revoked_at=row.revoked_at, parent_id=row.parent_id)


def add_token(conn: Connection, *, sha256: str, kind: str, role: str, name: str, campaign: str | None,
              expires_at: datetime | None, now: datetime, parent_id: int | None = None) -> TokenInfo:
    """Store a credential by the sha256 of its secret; a session names the token it was made from."""
    if kind not in m.TOKEN_KINDS or role not in m.TOKEN_ROLES:
        raise InvalidRecordError(f"token kind {kind!r} / role {role!r} is not known",
                                 f"use kinds {m.TOKEN_KINDS} and roles {m.TOKEN_ROLES}")
    if not name:
        raise InvalidRecordError("the token holder's name is empty", "name who holds the token")
    campaign_id = None if campaign is None else get_campaign(conn, campaign).id
    token_id = conn.execute(insert(_tokens).values(
        sha256=sha256, kind=kind, role=role, name=name, campaign_id=campaign_id, created_at=now,
        expires_at=expires_at, parent_id=parent_id).returning(_tokens.c.id)).scalar_one()
    return _token(conn.execute(select(_tokens).where(_tokens.c.id == token_id)).one(), campaign)


def _campaign_name(conn: Connection, campaign_id: int | None) -> str | None:
    if campaign_id is None:
        return None
    return conn.execute(select(_campaigns.c.name).where(_campaigns.c.id == campaign_id)).scalar_one_or_none()


def find_token(conn: Connection, sha256: str, kinds: Sequence[str], now: datetime, *,
               lock: bool = False) -> TokenInfo | None:
    """The live credential of one of `kinds` with this hash: not revoked, not expired, an invite not used.

    `lock` holds its row until the transaction ends (SELECT ... FOR UPDATE on PostgreSQL; SQLite's
    write transactions hold the whole database), so a concurrent revoke waits for it."""
    query = select(_tokens).where(_tokens.c.sha256 == sha256, _tokens.c.kind.in_(list(kinds)))
    row = conn.execute(query.with_for_update() if lock else query).one_or_none()
    if row is None or row.revoked_at is not None or (row.kind == "invite" and row.used_at is not None):
        return None
    if row.expires_at is not None and m.to_utc(row.expires_at) <= m.to_utc(now):
        return None
    return _token(row, _campaign_name(conn, row.campaign_id))


SESSION_ROLES: Final = ("admin", "labeler")
"""Roles whose api tokens may open a browser session (a scorer token is for machines only)."""


def use_invite(conn: Connection, token_sha256: str, session_sha256: str, session_expires: datetime,
               now: datetime) -> TokenInfo | None:
    """Trade a live invite (once), or a live api token of an admin or labeler, for a browser session of
    the same holder, role and campaign; None if there is no such credential.

    The session records the credential it was made from (`parent_id`): revoking that credential
    revokes the session too (revoke_token). The credential's row stays locked until the session is
    stored, so a revoke running at the same time either comes first (no session) or sees it."""
    parent = find_token(conn, token_sha256, ("invite", "api"), now, lock=True)
    if parent is None or (parent.kind == "api" and parent.role not in SESSION_ROLES):
        return None
    if parent.kind == "invite" and conn.execute(
            update(_tokens).where(_tokens.c.id == parent.id, _tokens.c.used_at.is_(None),
                                  _tokens.c.revoked_at.is_(None)).values(used_at=now)).rowcount != 1:
        return None  # another request used it first
    return add_token(conn, sha256=session_sha256, kind="session", role=parent.role, name=parent.name,
                     campaign=parent.campaign, expires_at=session_expires, now=now, parent_id=parent.id)


def list_tokens(conn: Connection) -> list[TokenInfo]:
    """Every credential, oldest first."""
    names = dict(conn.execute(select(_campaigns.c.id, _campaigns.c.name)).all())
    return [_token(r, names.get(r.campaign_id)) for r in conn.execute(select(_tokens).order_by(_tokens.c.id))]


def revoke_token(conn: Connection, token_id: int, now: datetime) -> None:
    """Revoke a credential and the browser sessions made from it; NotFoundError for an unknown id.

    Sessions made before migration 0003 name no parent: they end at their expiry."""
    if not 0 <= token_id <= MAX_LABEL_ID or conn.execute(
            update(_tokens).where(_tokens.c.id == token_id).values(revoked_at=now)).rowcount != 1:
        raise NotFoundError(f"no token has id {token_id}", "list the tokens and pick an id")
    conn.execute(update(_tokens).where(_tokens.c.parent_id == token_id, _tokens.c.kind == "session",
                                       _tokens.c.revoked_at.is_(None)).values(revoked_at=now))


# ---- the ingestion API ------------------------------------------------------------------------


def scoped_idempotency_key(scope: str, key: str) -> str:
    """The stored form of a caller's idempotency key: scoped to the caller, so callers never collide.

    The scope is percent-quoted (no "/" left in it), so the first "/" ends it.

    >>> scoped_idempotency_key("labeler:alice", "k1")
    'labeler:alice/k1'
    >>> scoped_idempotency_key("admin:a/b", "c")
    'admin:a%2Fb/c'
    """
    return f"{quote(scope, safe=':')}/{key}"


def record_fingerprint(record: Record) -> str:
    """sha256 of the canonical JSON of the record's kind and every field but its idempotency key.

    Two submits with one idempotency key are the same record only when their fingerprints are equal:
    fields the content key leaves out (confidence, comment, models, ...) count here. Numbers are
    written as floats (`5` and `5.0` are one value), timestamps in ISO 8601.
    """
    def plain(value: Any) -> Any:
        if isinstance(value, datetime):
            return m.to_utc(value).isoformat()
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    values = [type(record).__name__, *([f.name, plain(getattr(record, f.name))] for f in fields(record)
                                       if f.name != "idempotency_key")]
    return hashlib.sha256(hashing.canonical_json(values).encode()).hexdigest()


def _key_check(conn: Connection, scoped_key: str, kind: str, content_key: str,
               fingerprint: str) -> bool | None:
    """None when no record holds the key; True when it names this very record; else AlreadyExistsError."""
    row = conn.execute(select(_api_keys).where(_api_keys.c.key == scoped_key)).one_or_none()
    if row is None:
        return None
    if row.fingerprint is not None:
        same = row.fingerprint == fingerprint
    else:  # a key stored before migration 0003: by kind and content key, as it was compared then
        same = (row.kind, row.content_key) == (kind, content_key)
    if not same:
        unscoped = scoped_key.partition("/")[2]
        raise AlreadyExistsError(f"idempotency key {unscoped!r} was already used for another record",
                                 "send a new idempotency key with each new record; repeat a key only to "
                                 "retry the very same record")
    return True


def submit_record(conn: Connection, record: Record, *, scope: str, now: datetime) -> bool:
    """Store one record sent to the ingestion API; False when it was stored before.

    Its campaign must exist (NotFoundError: imports create campaigns, the API does not). Its
    idempotency key is scoped to `scope` (the caller) and kept in api_idempotency_keys with the
    record's content key and fingerprint, never on the record's row (file imports' keys live there):
    sent again with the very same record it is a retry (False), also when the record's content was
    stored before the key was first used; with any difference, AlreadyExistsError and, as with any
    error, nothing of it is stored (the caller's transaction rolls back).
    """
    if record.campaign is not None and conn.execute(
            select(_campaigns.c.id).where(_campaigns.c.name == record.campaign)).scalar_one_or_none() is None:
        raise NotFoundError(f"no campaign named {record.campaign!r}",
                            "create it with `rewardnode campaign create` or leave 'campaign' out")
    key = record.idempotency_key
    record = replace(record, idempotency_key=None)
    batch = RowBuilder(conn.dialect.name, now).build([record])
    kind = next(k for k in m.KINDS if batch.n_rows(k))
    content_key = str(batch.columns[kind][0][0])
    importer = _Importer(conn, now)
    if key is None:
        importer.insert(batch)  # ON CONFLICT DO NOTHING: stored content stores no row
        return importer.added[kind] == 1
    scoped, fingerprint = scoped_idempotency_key(scope, key), record_fingerprint(record)
    if _key_check(conn, scoped, kind, content_key, fingerprint):
        return False  # a retry
    importer.insert(batch)
    if not insert_ignore(conn, _api_keys, [{"key": scoped, "kind": kind, "content_key": content_key,
                                            "fingerprint": fingerprint, "created_at": now}]):
        _key_check(conn, scoped, kind, content_key, fingerprint)  # a concurrent submit bound it first
        return False
    return importer.added[kind] == 1


__all__ = [
    "CampaignInfo", "CampaignLabelRow", "LabelResult", "PairText", "PairToLabel", "TokenInfo", "add_token",
    "campaign_labels", "create_campaign", "find_token", "get_campaign", "labeled_count", "list_campaigns",
    "list_tokens", "next_pair", "pair_texts", "record_fingerprint", "record_label", "revoke_token",
    "scoped_idempotency_key", "submit_record", "use_invite",
]
