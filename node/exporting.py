"""Write stored records to JSONL (gzip when the name ends in .gz) that re-imports to the same records.

Formats:
- "trl": one line per record. A Comparison with outcome "A" is written TRL-style as
  {"prompt", "chosen", "rejected", "model_chosen"?, "model_rejected"?, ...}, so TRL can read it; any
  other outcome as {"type": "comparison", "prompt", "response_a", "response_b", "outcome",
  "model_a"?, "model_b"?, ...}. Rankings, ratings, feedback and demonstrations have no TRL form and
  are written as their own typed lines ({"type": "ranking" | "rating" | "feedback" | "demonstration"}).
- "multi": comparisons and rankings grouped by (source, subset, campaign, prompt) into one multi line
  each: {"responses": [text | {"text", "model"}], "votes": [...], "rankings": [...]}; per-vote
  annotator, confidence, comment, agreement, id, idempotency_key and created_at are kept. Ratings,
  feedback and demonstrations are written as typed lines as they arrive, the groups at the end:
  the multi format holds every comparison and ranking in memory until then.
Every line carries "source" and each optional field that is set (the external id as "id",
created_at as ISO-8601), so `iter_records(path)` with the default format "auto" gives back the same
multiset of records. The file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from node.formats.fields import (
    AGREEMENT,
    ANNOTATOR,
    AUTHOR,
    CAMPAIGN,
    CHOSEN,
    COMMENT,
    CONFIDENCE,
    CREATED_AT,
    ID,
    IDEMPOTENCY_KEY,
    KIND_COMPARISON,
    KIND_DEMONSTRATION,
    KIND_FEEDBACK,
    KIND_RANKING,
    KIND_RATING,
    MODEL,
    MODEL_A,
    MODEL_B,
    MODEL_CHOSEN,
    MODEL_REJECTED,
    MODELS,
    ORDER,
    OUTCOME,
    PROMPT,
    RANKINGS,
    RATING,
    REJECTED,
    RESPONSE,
    RESPONSE_A,
    RESPONSE_B,
    RESPONSES,
    SCALE,
    SOURCE,
    SUBSET,
    TEXT,
    THUMBS,
    THUMBS_DOWN,
    THUMBS_UP,
    TYPE,
    VOTE_A,
    VOTE_B,
    VOTES,
)
from storage.records import Comparison, Demonstration, Feedback, Ranking, Rating, Record

EXPORT_FORMATS: Final[tuple[str, ...]] = ("trl", "multi")


def write_records(path: str | os.PathLike[str], records: Iterable[Record], *, fmt: str = "trl") -> int:
    """Write `records` to a JSONL(.gz) file in format "trl" or "multi"; return how many records were written."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    # A fresh temporary name next to the target: never a user's file that happens to be called FILE.partial.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    partial = Path(name)
    try:
        with ExitStack() as stack:
            out = _open(stack, partial, compress=path.name.endswith(".gz"))
            n = _write_trl(out, records) if fmt == "trl" else _write_multi(out, records)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return n


def _open(stack: ExitStack, path: Path, *, compress: bool) -> IO[str]:
    if not compress:
        return stack.enter_context(open(path, "w", encoding="utf-8", newline="\n"))
    raw = stack.enter_context(open(path, "wb"))
    # no file name and mtime=0 in the gzip header: the same records give the same bytes
    zipped = stack.enter_context(gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=raw, mtime=0))
    return stack.enter_context(io.TextIOWrapper(zipped, encoding="utf-8", newline="\n"))


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n"


def _common(d: dict[str, Any], r: Comparison | Ranking | Rating | Feedback | Demonstration) -> dict[str, Any]:
    """Add the fields every record type has, when set."""
    if r.subset is not None:
        d[SUBSET] = r.subset
    if r.campaign is not None:
        d[CAMPAIGN] = r.campaign
    return _ids(d, r)


def _ids(d: dict[str, Any], r: Comparison | Ranking | Rating | Feedback | Demonstration) -> dict[str, Any]:
    if r.external_id is not None:
        d[ID] = r.external_id
    if r.idempotency_key is not None:
        d[IDEMPOTENCY_KEY] = r.idempotency_key
    if r.created_at is not None:
        d[CREATED_AT] = r.created_at.isoformat()
    return d


def _set(d: dict[str, Any], key: str, value: object) -> None:
    if value is not None:
        d[key] = value


def comparison_line(c: Comparison) -> dict[str, Any]:
    """The trl-format JSON object for one comparison (TRL's chosen/rejected when the outcome is "A")."""
    if c.outcome == "A":
        d: dict[str, Any] = {SOURCE: c.source, PROMPT: c.prompt, CHOSEN: c.response_a, REJECTED: c.response_b}
        _set(d, MODEL_CHOSEN, c.model_a)
        _set(d, MODEL_REJECTED, c.model_b)
    else:
        d = {TYPE: KIND_COMPARISON, SOURCE: c.source, PROMPT: c.prompt, RESPONSE_A: c.response_a,
             RESPONSE_B: c.response_b, OUTCOME: c.outcome}
        _set(d, MODEL_A, c.model_a)
        _set(d, MODEL_B, c.model_b)
    _set(d, ANNOTATOR, c.annotator)
    _set(d, CONFIDENCE, c.confidence)
    _set(d, COMMENT, c.comment)
    _set(d, AGREEMENT, c.agreement)
    return _common(d, c)


def record_line(r: Record) -> dict[str, Any]:
    """The typed JSON object for one record, as both export formats write it outside multi groups."""
    if isinstance(r, Comparison):
        return comparison_line(r)
    d: dict[str, Any]
    if isinstance(r, Ranking):
        d = {TYPE: KIND_RANKING, SOURCE: r.source, PROMPT: r.prompt, RESPONSES: list(r.responses)}
        if r.models is not None:
            d[MODELS] = list(r.models)
        _set(d, ANNOTATOR, r.annotator)
    elif isinstance(r, Rating):
        d = {TYPE: KIND_RATING, SOURCE: r.source, PROMPT: r.prompt, RESPONSE: r.response, RATING: r.value,
             SCALE: [r.scale_min, r.scale_max]}
        _set(d, ANNOTATOR, r.annotator)
        _set(d, MODEL, r.model)
        _set(d, COMMENT, r.comment)
    elif isinstance(r, Feedback):
        d = {TYPE: KIND_FEEDBACK, SOURCE: r.source, PROMPT: r.prompt, RESPONSE: r.response,
             THUMBS: THUMBS_UP if r.thumbs_up else THUMBS_DOWN}
        _set(d, ANNOTATOR, r.annotator)
        _set(d, MODEL, r.model)
        _set(d, COMMENT, r.comment)
    elif isinstance(r, Demonstration):
        d = {TYPE: KIND_DEMONSTRATION, SOURCE: r.source, PROMPT: r.prompt, RESPONSE: r.response}
        _set(d, AUTHOR, r.author)
    else:
        raise ValueError(f"cannot export a {type(r).__name__}; pass storage.records records")
    return _common(d, r)


def _write_trl(out: IO[str], records: Iterable[Record]) -> int:
    n = 0
    write = out.write
    for r in records:
        write(_dumps(comparison_line(r) if type(r) is Comparison else record_line(r)))
        n += 1
    return n


@dataclass(slots=True)
class _Group:
    """One multi line under construction: distinct (text, model) responses and the votes/rankings on them."""

    index: dict[tuple[str, str | None], int] = field(default_factory=dict)
    votes: list[dict[str, Any]] = field(default_factory=list)
    rankings: list[dict[str, Any]] = field(default_factory=list)

    def response(self, text: str, model: str | None) -> int:
        return self.index.setdefault((text, model), len(self.index))


def _write_multi(out: IO[str], records: Iterable[Record]) -> int:
    groups: dict[tuple[str, str | None, str | None, str], _Group] = {}
    n = 0
    for r in records:
        n += 1
        if isinstance(r, Comparison):
            group = groups.setdefault((r.source, r.subset, r.campaign, r.prompt), _Group())
            vote: dict[str, Any] = {VOTE_A: group.response(r.response_a, r.model_a),
                                    VOTE_B: group.response(r.response_b, r.model_b), OUTCOME: r.outcome}
            _set(vote, ANNOTATOR, r.annotator)
            _set(vote, CONFIDENCE, r.confidence)
            _set(vote, COMMENT, r.comment)
            _set(vote, AGREEMENT, r.agreement)
            group.votes.append(_ids(vote, r))
        elif isinstance(r, Ranking):
            group = groups.setdefault((r.source, r.subset, r.campaign, r.prompt), _Group())
            models = r.models if r.models is not None else (None,) * len(r.responses)
            ranking: dict[str, Any] = {ORDER: [group.response(t, m) for t, m in zip(r.responses, models, strict=True)]}
            _set(ranking, ANNOTATOR, r.annotator)
            group.rankings.append(_ids(ranking, r))
        else:
            out.write(_dumps(record_line(r)))
    for (source, subset, campaign, prompt), group in groups.items():
        d: dict[str, Any] = {SOURCE: source}
        _set(d, SUBSET, subset)
        _set(d, CAMPAIGN, campaign)
        d[PROMPT] = prompt
        d[RESPONSES] = [text if model is None else {TEXT: text, MODEL: model} for text, model in group.index]
        if group.votes:
            d[VOTES] = group.votes
        if group.rankings:
            d[RANKINGS] = group.rankings
        out.write(_dumps(d))
    return n
