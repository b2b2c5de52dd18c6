"""Formats for one response or one ranking per record: typed rankings, ratings, feedback, demonstrations."""

from __future__ import annotations

from typing import Any

from node.formats.fields import (
    ANNOTATOR,
    AUTHOR,
    CAMPAIGN,
    COMMENT,
    DEMONSTRATION,
    FEEDBACK,
    ID,
    IDEMPOTENCY_KEY,
    MODEL,
    MODELS,
    PROMPT,
    RATING,
    RESPONSE,
    RESPONSES,
    SCALE,
    SCALE_MAX,
    SCALE_MIN,
    SUBSET,
    THUMBS,
    THUMBS_DOWN,
    THUMBS_UP,
    ParseContext,
    RecordError,
    check_text,
    json_type,
    missing,
    number,
    opt_datetime,
    opt_name,
    opt_person,
    opt_str,
    req_text,
    source_of,
    wrong_type,
)
from storage.records import Demonstration, Feedback, Ranking, Rating


def parse_ranking(d: dict[str, Any], ctx: ParseContext) -> Ranking:
    """Typed ranking {"type": "ranking", "prompt", "responses": [best, ..., worst], "models"?}."""
    prompt = req_text(d, PROMPT)
    value = d.get(RESPONSES)
    if type(value) is not list or len(value) < 2:
        raise RecordError(f"'responses' must list at least 2 responses, best first, got {json_type(value)}",
                          "write 'responses': [best, ..., worst] as strings")
    responses = tuple(check_text(r, f"{RESPONSES}[{i}]") for i, r in enumerate(value))
    if len(set(responses)) != len(responses):
        raise RecordError("'responses' holds the same text twice", "list each distinct response once")
    raw_models = d.get(MODELS)
    models: tuple[str | None, ...] | None = None
    if raw_models is not None:
        if type(raw_models) is not list or len(raw_models) != len(responses) \
                or any(m is not None and type(m) is not str for m in raw_models):
            raise RecordError(f"'models' must be a list of {len(responses)} model names (or nulls), one per "
                              f"response, got {json_type(raw_models)}", "align 'models' with 'responses' or drop it")
        if any(m is not None for m in raw_models):
            models = tuple(raw_models)
    return Ranking(
        source=source_of(d, ctx), prompt=prompt, responses=responses, models=models,
        annotator=opt_person(d, ANNOTATOR), subset=opt_str(d, SUBSET), campaign=opt_str(d, CAMPAIGN),
        external_id=opt_name(d, ID), idempotency_key=opt_str(d, IDEMPOTENCY_KEY), created_at=opt_datetime(d))


def parse_rating(d: dict[str, Any], ctx: ParseContext) -> Rating:
    """{"prompt", "response", "rating", "scale": [min, max] | "1-7" | {"min", "max"}} (or scale_min/scale_max)."""
    prompt = req_text(d, PROMPT)
    response = req_text(d, RESPONSE)
    value = number(d, RATING)
    lo, hi = _scale(d)
    if not lo <= value <= hi:
        raise RecordError(f"rating {value:g} is outside the scale [{lo:g}, {hi:g}]",
                          "check the rating and the scale the annotators used")
    return Rating(
        source=source_of(d, ctx), prompt=prompt, response=response, value=value, scale_min=lo, scale_max=hi,
        annotator=opt_person(d, ANNOTATOR), model=opt_str(d, MODEL), comment=opt_str(d, COMMENT),
        subset=opt_str(d, SUBSET), campaign=opt_str(d, CAMPAIGN), external_id=opt_name(d, ID),
        idempotency_key=opt_str(d, IDEMPOTENCY_KEY), created_at=opt_datetime(d))


_SCALE_FIX = "give the scale as \"scale\": [1, 7], \"scale\": \"1-7\" or \"scale\": {\"min\": 1, \"max\": 7}"


def _scale(d: dict[str, Any]) -> tuple[float, float]:
    s = d.get(SCALE)
    if s is None:
        if SCALE_MIN in d or SCALE_MAX in d:
            lo, hi = number(d, SCALE_MIN), number(d, SCALE_MAX)
        else:
            raise missing(SCALE, _SCALE_FIX)
    elif type(s) is list and len(s) == 2:
        lo, hi = number({"scale[0]": s[0]}, "scale[0]"), number({"scale[1]": s[1]}, "scale[1]")
    elif type(s) is dict:
        lo, hi = number(s, "min"), number(s, "max")
    elif type(s) is str:
        cut = s.find("-", 1)  # from 1: a leading '-' is the minimum's sign
        try:
            if cut < 0:
                raise ValueError(s)
            lo, hi = float(s[:cut]), float(s[cut + 1:])
            if lo - lo != 0 or hi - hi != 0:
                raise ValueError(s)
        except ValueError:
            raise RecordError(f"scale {s!r} is not 'MIN-MAX' with finite numbers", _SCALE_FIX) from None
    else:
        raise wrong_type(SCALE, "[min, max]", s)
    if not lo < hi:
        raise RecordError(f"scale [{lo:g}, {hi:g}] is empty: its minimum is not below its maximum", _SCALE_FIX)
    return lo, hi


_THUMBS = {THUMBS_UP: True, THUMBS_DOWN: False, True: True, False: False}


def parse_feedback(d: dict[str, Any], ctx: ParseContext) -> Feedback:
    """{"prompt", "response", "thumbs": "up" | "down" | true | false} (or "feedback": "up" | "down")."""
    prompt = req_text(d, PROMPT)
    response = req_text(d, RESPONSE)
    key = THUMBS if THUMBS in d else FEEDBACK
    v = d.get(key)
    up = _THUMBS.get(v.lower() if type(v) is str else v) if type(v) in (str, bool) else None
    if up is None:
        if v is None and key not in d:
            raise missing(THUMBS, "add \"thumbs\": \"up\" or \"down\"")
        raise RecordError(f"'{key}' must be \"up\", \"down\", true or false, got {json_type(v)} {v!r}",
                          "write \"thumbs\": \"up\" or \"down\"")
    return Feedback(
        source=source_of(d, ctx), prompt=prompt, response=response, thumbs_up=up,
        annotator=opt_person(d, ANNOTATOR), model=opt_str(d, MODEL), comment=opt_str(d, COMMENT),
        subset=opt_str(d, SUBSET), campaign=opt_str(d, CAMPAIGN), external_id=opt_name(d, ID),
        idempotency_key=opt_str(d, IDEMPOTENCY_KEY), created_at=opt_datetime(d))


def parse_demonstration(d: dict[str, Any], ctx: ParseContext) -> Demonstration:
    """{"prompt", "demonstration", "author"?} or {"type": "demonstration", "prompt", "response", "author"?}."""
    prompt = req_text(d, PROMPT)
    key = DEMONSTRATION if DEMONSTRATION in d or RESPONSE not in d else RESPONSE
    response = req_text(d, key, "add 'demonstration': the human-written response")
    return Demonstration(
        source=source_of(d, ctx), prompt=prompt, response=response, author=opt_person(d, AUTHOR),
        subset=opt_str(d, SUBSET), campaign=opt_str(d, CAMPAIGN), external_id=opt_name(d, ID),
        idempotency_key=opt_str(d, IDEMPOTENCY_KEY), created_at=opt_datetime(d))
