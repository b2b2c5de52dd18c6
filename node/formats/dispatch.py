"""Pick the parser for one record: by its "type", by its keys (format "auto"), or as the user forced."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Final

from node.formats.fields import (
    CHOSEN,
    DEMONSTRATION,
    FEEDBACK,
    KIND_COMPARISON,
    KIND_DEMONSTRATION,
    KIND_FEEDBACK,
    KIND_RANKING,
    KIND_RATING,
    KINDS,
    PROMPT,
    RANKINGS,
    RATING,
    REJECTED,
    RESPONSE,
    RESPONSE_A,
    RESPONSE_B,
    RESPONSES,
    THUMBS,
    TYPE,
    VOTES,
    ParseContext,
    RecordError,
)
from node.formats.pairwise import (
    parse_ab,
    parse_conversational,
    parse_hh,
    parse_multi,
    parse_trl,
    parse_trl_text,
)
from node.formats.single import parse_demonstration, parse_feedback, parse_ranking, parse_rating
from storage.records import Record

Parsed = Record | list[Record]
Parser = Callable[[dict[str, Any], ParseContext], Parsed]

FORMATS: Final[tuple[str, ...]] = ("auto", "trl", "hh", "conversational", "multi", "ratings", "feedback",
                                   "demonstrations")

FORMAT_PARSERS: Final[dict[str, Parser]] = {
    "trl": parse_trl,
    "hh": parse_hh,
    "conversational": parse_conversational,
    "multi": parse_multi,
    "ratings": parse_rating,
    "feedback": parse_feedback,
    "demonstrations": parse_demonstration,
}

FORMAT_KINDS: Final[dict[str, frozenset[str]]] = {
    "trl": frozenset({KIND_COMPARISON}),
    "hh": frozenset({KIND_COMPARISON}),
    "conversational": frozenset({KIND_COMPARISON}),
    "multi": frozenset(KINDS),  # export-data --format multi writes the records it cannot group as typed lines
    "ratings": frozenset({KIND_RATING}),
    "feedback": frozenset({KIND_FEEDBACK}),
    "demonstrations": frozenset({KIND_DEMONSTRATION}),
}
"""The record types each forced format accepts in a "type" field."""

RECORD_KEYS: Final = frozenset({TYPE, PROMPT, CHOSEN, REJECTED, RESPONSE, RESPONSE_A, RESPONSE_B, RESPONSES,
                                VOTES, RANKINGS, RATING, THUMBS, FEEDBACK, DEMONSTRATION})
"""Keys that make an object a record (of some format): a JSON object holding one of them is never read as a
{"records": [...]} or {"data": [...]} container."""


def parse_pairwise(d: dict[str, Any], ctx: ParseContext) -> Parsed:
    """A comparison in any pairwise shape: A/B with outcome, TRL text, TRL/conversational messages, or HH."""
    if RESPONSE_A in d:
        return parse_ab(d, ctx)
    if type(d.get(CHOSEN)) is list or type(d.get(PROMPT)) is list:
        return parse_conversational(d, ctx)
    if PROMPT in d:
        return parse_trl(d, ctx)
    return parse_hh(d, ctx)


KIND_PARSERS: Final[dict[str, Parser]] = {
    KIND_COMPARISON: parse_pairwise,
    KIND_RANKING: parse_ranking,
    KIND_RATING: parse_rating,
    KIND_FEEDBACK: parse_feedback,
    KIND_DEMONSTRATION: parse_demonstration,
}


def _kind(d: dict[str, Any]) -> str:
    t = d[TYPE]
    if type(t) is str and t in KIND_PARSERS:
        return t
    raise RecordError(f"unknown record type {t!r}", f"use one of {', '.join(KINDS)}, or drop 'type' to detect it")


def parse_auto(d: dict[str, Any], ctx: ParseContext) -> Parsed:
    """Detect the record's format from its "type" or its keys, then parse it."""
    if TYPE in d:
        return KIND_PARSERS[_kind(d)](d, ctx)
    if type(d.get(PROMPT)) is str and type(d.get(CHOSEN)) is str and RESPONSE_A not in d:
        return parse_trl_text(d, ctx)  # the common case first
    if CHOSEN in d or REJECTED in d or RESPONSE_A in d:
        return parse_pairwise(d, ctx)
    if VOTES in d or RANKINGS in d or RESPONSES in d:
        return parse_multi(d, ctx)
    if RATING in d:
        return parse_rating(d, ctx)
    if THUMBS in d or FEEDBACK in d:
        return parse_feedback(d, ctx)
    if DEMONSTRATION in d:
        return parse_demonstration(d, ctx)
    keys = ", ".join(sorted(d)[:12]) or "none"
    raise RecordError(
        f"cannot tell what this record is from its keys ({keys})",
        "expected trl {prompt, chosen, rejected}, hh {chosen, rejected}, a comparison {prompt, response_a, "
        "response_b, outcome}, multi {prompt, responses, votes}, ratings {prompt, response, rating, scale}, "
        "feedback {prompt, response, thumbs} or demonstrations {prompt, demonstration}; add a 'type' field "
        "or pass --format")


def _parse_forced(fmt: str, d: dict[str, Any], ctx: ParseContext) -> Parsed:
    if TYPE in d:
        kind = _kind(d)
        if kind not in FORMAT_KINDS[fmt]:
            raise RecordError(f"the record has type '{kind}', which --format {fmt} does not hold",
                              "import a file that mixes record types with --format auto")
        if fmt == "multi":  # multi exports write ratings, feedback and demonstrations as typed lines
            return KIND_PARSERS[kind](d, ctx)
    return FORMAT_PARSERS[fmt](d, ctx)


def parser_for(fmt: str) -> Parser:
    """The record parser for a format name (one of FORMATS)."""
    if fmt == "auto":
        return parse_auto
    if fmt not in FORMAT_PARSERS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return partial(_parse_forced, fmt)
