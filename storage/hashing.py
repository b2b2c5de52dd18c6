"""Content hashes: the ids of prompts and responses and the dedup keys of records.

These definitions are part of the stored data (snapshot ids are hashes over record keys), so they
change only with a migration that rewrites the stored keys (0004 did, for comparisons). Every hash
is the lowercase hex SHA-256 of UTF-8 bytes:

- prompt id:   sha256(prompt_text)
- response id: sha256(prompt_id + "\\x00" + response_text)  (the same text under two prompts is
  two responses)
- record key:  sha256(kind + ":" + the hex ids it refers to, concatenated + canonical JSON of the
  other fields that make the record itself). The JSON is a list written by
  `json.dumps(..., separators=(",", ":"))` with ASCII escapes; it starts with "[", which no hex id
  does, so the text is unambiguous:
  comparisons    "comparison:" prompt_id lo_id hi_id [source, outcome, annotator, external_id, campaign]
                 with the two responses in id order (lo_id < hi_id) and the outcome as seen from lo: a
                 comparison written the other way round (b against a, "A" <-> "B", tie and both_bad as
                 they are) is the same vote and has the same key. For a comparison written lo first
                 it is the key the rule before gave too; migration 0004 rekeyed the stored others.
  rankings       "ranking:" prompt_id ids-best-first... [source, annotator, external_id, campaign]
  ratings        "rating:" response_id [source, value, scale_min, scale_max, annotator, external_id, campaign]
  feedback       "feedback:" response_id [source, thumbs_up, annotator, external_id, campaign]
  demonstrations "demonstration:" prompt_id response_id(prompt_id, text) [source, author, external_id, campaign]
  Numbers are written as Python floats (`5` and `5.0` give the same key). Ids stay outside the
  JSON because escaping 64-char hex strings is most of the cost of a key on the import hot path.

Fields outside the key (confidence, comment, subset, created_at, models) do not make a record new:
importing a record again with only those changed is a duplicate.

>>> prompt_id("hi")
'8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4'
>>> response_id(prompt_id("hi"), "hello")[:12]
'588416ac64c8'
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from hashlib import sha256
from json import encoder as _json_encoder
from typing import Any, Final

from storage.records import MIRRORED, Comparison, Demonstration, Feedback, Ranking, Rating

HASH_HEX_LEN: Final = 64


def _refuse(o: object) -> Any:
    raise TypeError(f"a {type(o).__name__} cannot be part of a record key")


def _make_encoder() -> Callable[[Sequence[object]], str]:
    """json.dumps(fields, separators=(",", ":")) without its per-call setup (the C encoder, built once)."""
    c_make_encoder: Any = getattr(_json_encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # no C accelerator: the same output, slower
        return json.JSONEncoder(separators=(",", ":"), default=_refuse).encode
    chunks = c_make_encoder(None, _refuse, _json_encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
    return lambda fields: "".join(chunks(fields, 0))


canonical_json: Final = _make_encoder()
"""The canonical JSON text of a list of fields (ASCII, no spaces), as hashed into record keys."""


def prompt_id(text: str) -> str:
    """The id of a prompt: sha256 of its text."""
    return sha256(text.encode()).hexdigest()


def response_id(prompt_id: str, text: str) -> str:
    """The id of a response to the prompt `prompt_id`."""
    return sha256((prompt_id + "\x00" + text).encode()).hexdigest()


def record_key(kind: str, ids: Sequence[str], fields: Sequence[object]) -> str:
    """sha256 of kind + ":" + the concatenated hex `ids` + the canonical JSON of `fields`."""
    return sha256((kind + ":" + "".join(ids) + canonical_json(fields)).encode()).hexdigest()


def comparison_key(r: Comparison, pid: str, aid: str, bid: str) -> str:
    """The dedup key of a comparison whose prompt and responses have ids pid, aid, bid; the same for the
    comparison with its sides swapped (bid, aid and the mirrored outcome).

    >>> pid, x, y = "0" * 64, "1" * 64, "2" * 64
    >>> c, swapped = Comparison("s", "p", "x", "y", "A"), Comparison("s", "p", "y", "x", "B")
    >>> comparison_key(c, pid, x, y) == comparison_key(swapped, pid, y, x)
    True
    """
    outcome: str = r.outcome
    if outcome not in MIRRORED:
        raise ValueError(f"outcome {outcome!r} is not one of {', '.join(MIRRORED)}")
    if aid > bid:
        aid, bid, outcome = bid, aid, MIRRORED[outcome]
    return record_key("comparison", (pid, aid, bid),
                      [r.source, outcome, r.annotator, r.external_id, r.campaign])


def ranking_key(r: Ranking, pid: str, response_ids: Sequence[str]) -> str:
    """The dedup key of a ranking; `response_ids` best first."""
    return record_key("ranking", (pid, *response_ids), [r.source, r.annotator, r.external_id, r.campaign])


def rating_key(r: Rating, rid: str) -> str:
    """The dedup key of a rating of response `rid`."""
    return record_key("rating", (rid,), [r.source, float(r.value), float(r.scale_min), float(r.scale_max),
                                         r.annotator, r.external_id, r.campaign])


def feedback_key(r: Feedback, rid: str) -> str:
    """The dedup key of feedback on response `rid`."""
    return record_key("feedback", (rid,), [r.source, bool(r.thumbs_up), r.annotator, r.external_id, r.campaign])


def demonstration_key(r: Demonstration, pid: str) -> str:
    """The dedup key of a demonstration for prompt `pid`."""
    return record_key("demonstration", (pid, response_id(pid, r.response)),
                      [r.source, r.author, r.external_id, r.campaign])


def snapshot_line(kind: str, key: str) -> str:
    """One line of a snapshot's hashed content; the id is sha256 over these lines in KINDS, key order."""
    return f"{kind}\t{key}\n"


__all__ = [
    "HASH_HEX_LEN",
    "canonical_json",
    "comparison_key",
    "demonstration_key",
    "feedback_key",
    "prompt_id",
    "ranking_key",
    "rating_key",
    "record_key",
    "response_id",
    "snapshot_line",
]
