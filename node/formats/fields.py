"""Wire keys and the field validators every record parser shares.

A parser turns one decoded JSON object into typed records or raises `RecordError(problem, fix)`;
the reader in node/importing.py adds the file name and line. Validators are plain functions over
dicts (a `.get` and a `type(...) is` check each) because they run on the import hot path.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from storage.records import OUTCOMES, Outcome

# ---- wire keys shared by the importer and the exporter ---------------------------------------
TYPE: Final = "type"
SOURCE: Final = "source"
SUBSET: Final = "subset"
CAMPAIGN: Final = "campaign"
ID: Final = "id"
IDEMPOTENCY_KEY: Final = "idempotency_key"
CREATED_AT: Final = "created_at"
PROMPT: Final = "prompt"
CHOSEN: Final = "chosen"
REJECTED: Final = "rejected"
RESPONSE_A: Final = "response_a"
RESPONSE_B: Final = "response_b"
OUTCOME: Final = "outcome"
ANNOTATOR: Final = "annotator"
CONFIDENCE: Final = "confidence"
COMMENT: Final = "comment"
AGREEMENT: Final = "agreement"
MODEL: Final = "model"
MODEL_A: Final = "model_a"
MODEL_B: Final = "model_b"
MODEL_CHOSEN: Final = "model_chosen"
MODEL_REJECTED: Final = "model_rejected"
RESPONSE: Final = "response"
RESPONSES: Final = "responses"
MODELS: Final = "models"
TEXT: Final = "text"
VOTES: Final = "votes"
RANKINGS: Final = "rankings"
VOTE_A: Final = "a"
VOTE_B: Final = "b"
ORDER: Final = "order"
RATING: Final = "rating"
SCALE: Final = "scale"
SCALE_MIN: Final = "scale_min"
SCALE_MAX: Final = "scale_max"
THUMBS: Final = "thumbs"
FEEDBACK: Final = "feedback"
DEMONSTRATION: Final = "demonstration"
AUTHOR: Final = "author"

# values of the "type" key
KIND_COMPARISON: Final = "comparison"
KIND_RANKING: Final = "ranking"
KIND_RATING: Final = "rating"
KIND_FEEDBACK: Final = "feedback"
KIND_DEMONSTRATION: Final = "demonstration"
KINDS: Final[tuple[str, ...]] = (KIND_COMPARISON, KIND_RANKING, KIND_RATING, KIND_FEEDBACK, KIND_DEMONSTRATION)

THUMBS_UP: Final = "up"
THUMBS_DOWN: Final = "down"

NAME_MAX: Final = 200  # the labeling API's longest name
NAME_RULE: Final = (f"1-{NAME_MAX} characters, not only spaces, with no control characters "
                    "(no newline or tab)")
"""What a source, annotator or author name may be, in words for error messages: every stored name
prints on one line, so no name can forge a line of a report."""

_OUTCOME_SET: Final = frozenset(OUTCOMES)
_VALID_OUTCOMES: Final = ", ".join(OUTCOMES)


class RecordError(Exception):
    """One record is invalid: `problem` says what is wrong, `fix` how to repair it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}; {fix}")
        self.problem = problem
        self.fix = fix

    def within(self, where: str) -> RecordError:
        """The same error located inside a nested value, e.g. `votes[3]`."""
        return RecordError(f"{where}: {self.problem}", self.fix)


@dataclass(frozen=True, slots=True)
class ParseContext:
    """What a parser needs besides the record: the source-name precedence of one import."""

    source: str | None  # --source: overrides every record's own "source"
    default_source: str  # the file name without extensions, used when a record names no source


def json_type(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def wrong_type(key: str, expected: str, value: object) -> RecordError:
    """The error for a field holding the wrong JSON type."""
    return RecordError(f"field '{key}' must be {expected}, got {json_type(value)} {_preview(value)}",
                       f"write '{key}' as {expected}")


def _preview(value: object) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except RecursionError:  # decoded just under the depth limit, dumped from deeper in the stack
        return "(a deeply nested value)"
    return text if len(text) <= 40 else text[:37] + "..."


def name_problem(name: object, limit: int = NAME_MAX) -> str | None:
    """What is wrong with `name` as a name (None when it follows NAME_RULE): 'a\\nb' holds '\\n'."""
    if type(name) is not str:
        return f"it is not a string but {json_type(name)}"
    shown = repr(name[:60]) + ("..." if len(name) > 60 else "")
    if not name.strip():
        return "it is empty" if not name else f"{shown} is only whitespace"
    bad = next((c for c in name if unicodedata.category(c).startswith("C")), None)
    if bad is not None:
        return f"{shown} holds the control character {bad!r}"
    if len(name) > limit:
        return f"it is {len(name)} characters long"
    return None


def missing(key: str, fix: str | None = None) -> RecordError:
    """The error for an absent required field."""
    return RecordError(f"missing required field '{key}'", fix or f"add '{key}' to the record")


def req_text(d: dict[str, Any], key: str, fix: str | None = None) -> str:
    """A required, non-blank text field, returned exactly as given."""
    v = d.get(key)
    if type(v) is str:
        if v and not v.isspace():
            return v
        raise RecordError(f"field '{key}' is empty (empty responses and prompts cannot be compared)",
                          f"give a non-empty '{key}' or leave the record out (--skip-invalid)")
    if v is None and key not in d:
        raise missing(key, fix)
    raise wrong_type(key, "a non-empty string", v)


def check_text(value: object, where: str) -> str:
    """A non-blank text found inside a list (e.g. `responses[2]`)."""
    if type(value) is str:
        if value and not value.isspace():
            return value
        raise RecordError(f"{where} is empty", f"give a non-empty text for {where} or remove it")
    raise RecordError(f"{where} must be a non-empty string, got {json_type(value)} {_preview(value)}",
                      f"write {where} as a string")


def opt_str(d: dict[str, Any], key: str) -> str | None:
    """An optional string field (null and absent both mean None)."""
    v = d.get(key)
    if v is None or type(v) is str:
        return v
    raise wrong_type(key, "a string or null", v)


def opt_name(d: dict[str, Any], key: str) -> str | None:
    """An optional identifier (an external id): a string, or an integer kept as its decimal text."""
    v = d.get(key)
    if v is None or type(v) is str:
        return v
    if type(v) is int:
        return str(v)
    raise wrong_type(key, "a string (or integer) or null", v)


def opt_person(d: dict[str, Any], key: str) -> str | None:
    """An optional annotator or author name: a string following NAME_RULE, or an integer kept as its text."""
    v = d.get(key)
    if type(v) is str and 0 < len(v) <= NAME_MAX and v.isprintable() and not v.isspace():
        return v  # the common case; isprintable() is False for every control character
    if type(v) is not str:
        return opt_name(d, key)
    if (problem := name_problem(v)) is not None:
        raise RecordError(f"field '{key}' is not a valid name: {problem}",
                          f"give '{key}' as {NAME_RULE}, or leave it out")
    return v


def opt_unit(d: dict[str, Any], key: str) -> float | None:
    """An optional fraction in [0, 1] (confidence, agreement)."""
    v = d.get(key)
    if v is None:
        return None
    if type(v) is float or type(v) is int:
        if 0.0 <= v <= 1.0:  # NaN fails both comparisons
            return float(v)
        raise RecordError(f"{key} {v!r} is outside [0, 1]",
                          f"give '{key}' as a fraction between 0 and 1 (e.g. 0.8 rather than 80), or drop it")
    raise wrong_type(key, "a number in [0, 1] or null", v)


def number(d: dict[str, Any], key: str) -> float:
    """A required finite number (a JSON boolean is not a number)."""
    v = d.get(key)
    if type(v) is float or type(v) is int:
        if v - v == 0:  # finite: inf - inf and nan - nan are nan
            try:
                return float(v)
            except OverflowError:  # an integer beyond the largest float (~1.8e308)
                pass
        raise RecordError(f"field '{key}' is {_preview(v)}, not a finite number",
                          f"give a finite number for '{key}' (at most about 1.8e308)")
    if v is None and key not in d:
        raise missing(key)
    raise wrong_type(key, "a number", v)


def opt_datetime(d: dict[str, Any], key: str = CREATED_AT) -> datetime | None:
    """An optional ISO-8601 timestamp, e.g. 2024-05-01T12:30:00Z."""
    v = d.get(key)
    if v is None:
        return None
    if type(v) is str:
        try:
            return datetime.fromisoformat(v)
        except ValueError:
            raise RecordError(f"{key} {_preview(v)} is not an ISO-8601 timestamp",
                              f"write '{key}' like 2024-05-01T12:30:00Z or 2024-05-01T12:30:00+02:00") from None
    raise wrong_type(key, "an ISO-8601 string or null", v)


def outcome(d: dict[str, Any], key: str = OUTCOME) -> Outcome:
    """A required outcome: A, B, tie or both_bad."""
    v = d.get(key)
    if type(v) is str and v in _OUTCOME_SET:
        return v  # type: ignore[return-value]  # checked against OUTCOMES just above
    if v is None and key not in d:
        raise missing(key, f"add '{key}': one of {_VALID_OUTCOMES}")
    raise RecordError(f"unknown {key} {_preview(v)}",
                      f"use one of {_VALID_OUTCOMES} (A: response_a preferred, B: response_b preferred)")


def source_of(d: dict[str, Any], ctx: ParseContext) -> str:
    """--source, else the record's own "source", else the file name without extensions."""
    if ctx.source is not None:
        return ctx.source
    v = d.get(SOURCE)
    if v is None:
        return ctx.default_source
    if type(v) is str and v and not v.isspace():
        return v
    raise RecordError(f"field 'source' must be a non-empty string, got {json_type(v)} {_preview(v)}",
                      "fix the record's 'source', or override it for the whole file with --source NAME")


def opt_index(d: dict[str, Any], key: str, n: int) -> int:
    """A required index into a list of `n` items."""
    v = d.get(key)
    if type(v) is int:
        if 0 <= v < n:
            return v
        raise RecordError(f"index {key}={v} is out of range: there are {n} responses (0..{n - 1})",
                          "use 0-based indices into 'responses'")
    if v is None and key not in d:
        raise missing(key, f"add '{key}': a 0-based index into 'responses'")
    raise wrong_type(key, "an integer index", v)
