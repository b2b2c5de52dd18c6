"""The ingestion API: labels in as JSON, one record per request, stored once per idempotency key.

    POST /v1/comparisons  {"prompt", "response_a", "response_b", "outcome", ...}
    POST /v1/rankings     {"prompt", "responses": [best, ..., worst], ...}
    POST /v1/feedback     {"prompt", "response", "thumbs": "up"|"down"} or {..., "rating": 5, "scale": [1, 7]}
    GET  /v1/stats        counts per source and per campaign

Every POST answers {"ok": true, "kind", "stored"}: "stored" is false when the record was already
there (a retry with the same idempotency key, from the body or the `Idempotency-Key` header, or the
same content). An idempotency key belongs to the caller who sent it (other callers' keys, and the
keys of file imports, never collide with it) and names one record, every field of it: the same key
with a record that differs in anything (a confidence or comment too) is refused with 409.
A "campaign" must already exist (`rewardnode campaign create`); a labeler whose browser session came
from an invite may send records of that campaign only (403). A labeler's records are stored under
their own name; an admin may name any annotator. Sources starting with "labeling:" are reserved for
the labeling pages (422). A refused record stores nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web

from node.formats.fields import NAME_RULE, name_problem
from node.http import (
    PRINCIPAL_KEY,
    Conflict,
    Endpoint,
    Role,
    Schema,
    ServiceUnavailable,
    ValidationError,
    json_response,
)
from node.http.routes import CONFIG_KEY, check_fields, check_unicode, read_json_object
from node.importing import SOURCE_NAME_RULE, source_name_problem
from node.labeling.auth import campaign_allowed
from node.labeling.service import SERVICE_KEY
from storage.errors import AlreadyExistsError, InvalidRecordError, NotFoundError, StorageError
from storage.records import OUTCOMES, Comparison, Feedback, Ranking, Rating, Record

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 200
MAX_NAME_CHARS = 200
MAX_RANKED = 32

_name = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS}
_text = {"type": "string", "minLength": 1}
_common: dict[str, Any] = {
    "source": {**_name, "description": 'Where the record comes from (default "api").'},
    "annotator": {**_name, "description": "Who labeled it; a labeler token always labels as itself."},
    "campaign": _name,
    "external_id": _name,
    "idempotency_key": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS,
                        "description": "A retried submit with the same key is stored once (or send the "
                                       "Idempotency-Key header)."},
}
COMPARISON_IN = Schema("ComparisonIn", {
    "type": "object", "additionalProperties": False,
    "required": ["prompt", "response_a", "response_b", "outcome"],
    "properties": {"prompt": _text, "response_a": _text, "response_b": _text,
                   "outcome": {"enum": list(OUTCOMES)},
                   "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                   "comment": {"type": "string"}, "model_a": _name, "model_b": _name, **_common},
})
RANKING_IN = Schema("RankingIn", {
    "type": "object", "additionalProperties": False, "required": ["prompt", "responses"],
    "properties": {"prompt": _text, "responses": {"type": "array", "items": _text, "minItems": 2,
                                                  "maxItems": MAX_RANKED, "uniqueItems": True,
                                                  "description": "Best first."}, **_common},
})
FEEDBACK_IN = Schema("FeedbackIn", {
    "type": "object", "additionalProperties": False, "required": ["prompt", "response"],
    "description": 'Exactly one of "thumbs" or "rating" (with "scale").',
    "properties": {"prompt": _text, "response": _text, "thumbs": {"enum": ["up", "down"]},
                   "rating": {"type": "number"},
                   "scale": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                   "model": _name, "comment": {"type": "string"}, **_common},
})
STORED = Schema("Stored", {
    "type": "object", "required": ["ok", "kind", "stored"],
    "properties": {"ok": {"const": True}, "kind": {"type": "string"}, "stored": {"type": "boolean"}},
})
_counts = {"type": "object", "additionalProperties": {"type": "integer"}}
STATS = Schema("LabelStats", {
    "type": "object", "required": ["sources", "campaigns", "totals"],
    "properties": {"sources": {"type": "object", "additionalProperties": _counts}, "totals": _counts,
                   "campaigns": {"type": "array", "items": {"type": "object"}}},
})


class _Body:
    """Typed reads of a validated-as-object JSON body; every problem is a 422 naming the field."""

    def __init__(self, data: dict[str, Any], max_chars: int) -> None:
        self.data, self.max_chars = data, max_chars

    def text(self, key: str, *, required: bool = True, limit: int | None = None, where: str | None = None,
             value: Any = None, blank: bool = False) -> str | None:
        """A string field; `blank` allows one of only whitespace (names, keys, comments: not texts)."""
        value = self.data.get(key) if where is None else value
        where = where or key
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            raise ValidationError(where, "must be a non-empty string" + ("" if required else " or omitted"))
        if not blank and value.isspace():
            raise ValidationError(where, "must be a non-empty string; got only whitespace (empty prompts and "
                                         "responses cannot be compared)")
        limit = limit or self.max_chars
        if len(value) > limit:
            raise ValidationError(where, f"is {len(value)} characters, more than the limit of {limit}; shorten it")
        check_unicode(value, where)
        if "\x00" in value:
            raise ValidationError(where, "contains a NUL character; remove it")
        return value

    def name(self, key: str) -> str | None:
        return self.text(key, required=False, limit=MAX_NAME_CHARS, blank=True)

    def number(self, key: str, *, required: bool = False, value: Any = None, where: str | None = None) -> float | None:
        value = self.data.get(key) if where is None else value
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(where or key, "must be a finite number")
        try:
            number = float(value)
        except OverflowError:  # an integer too big for a float (math.isfinite would raise it too)
            raise ValidationError(where or key, "is too large: must be a finite number") from None
        if not math.isfinite(number):
            raise ValidationError(where or key, "must be a finite number")
        return number

    def comment(self) -> str | None:
        """The optional "comment": a string (empty means none), or a 422."""
        value = self.data.get("comment")
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ValidationError("comment", "must be a string (or omitted)")
        return self.text("comment", blank=True)


def _who(request: web.Request, body: _Body) -> str | None:
    principal = request[PRINCIPAL_KEY]
    named = body.name("annotator")
    if named is not None and (problem := name_problem(named)) is not None:
        raise ValidationError("annotator", f"is not a valid annotator name: {problem}; use {NAME_RULE}")
    if principal.role is Role.LABELER:
        if named is not None and named != principal.name:
            raise ValidationError("annotator", f"must be omitted or {principal.name!r}: a labeler token labels as "
                                               "its own holder")
        return principal.name
    return named


def _key(request: web.Request, body: _Body) -> str | None:
    from_body = body.text("idempotency_key", required=False, limit=MAX_KEY_CHARS, blank=True)
    header = request.headers.get(IDEMPOTENCY_HEADER)
    if header is not None:
        header = body.text("", where=f"header {IDEMPOTENCY_HEADER}", value=header, limit=MAX_KEY_CHARS,
                           blank=True)
        if from_body is not None and from_body != header:
            raise ValidationError("idempotency_key", f"differs from the {IDEMPOTENCY_HEADER} header; send one")
    return from_body or header


def _check_fields(data: dict[str, Any], schema: Schema) -> None:
    required = list(schema.body["required"])
    check_fields(data, "", required, [k for k in schema.body["properties"] if k not in required])


async def _store(request: web.Request, kind: str, build: Callable[[_Body], Record], schema: Schema) -> web.Response:
    data = await read_json_object(request)
    _check_fields(data, schema)
    body = _Body(data, request.config_dict[CONFIG_KEY].max_text_chars)
    return await _save(request, build(body), kind)


async def _save(request: web.Request, record: Record, kind: str) -> web.Response:
    """Store one record (once: a retry with its idempotency key stores nothing) and acknowledge it."""
    service = request.config_dict[SERVICE_KEY]
    principal = request[PRINCIPAL_KEY]
    campaign_allowed(request, principal, record.campaign)
    try:
        stored = await service.call(service.store.submit, record, scope=f"{principal.role.value}:{principal.name}")
    except InvalidRecordError as e:
        raise ValidationError("", e.cause) from None
    except NotFoundError as e:  # the named campaign
        raise ValidationError("", str(e)) from None
    except AlreadyExistsError:
        raise Conflict(f"idempotency key {record.idempotency_key!r} was already used for a different record; "
                       "send this record with a new idempotency key (reuse a key only to retry the very "
                       "same record)") from None
    except StorageError as e:
        raise ServiceUnavailable(f"the store could not save the record ({e.cause}); retry with the same "
                                 "idempotency key") from None
    return json_response({"ok": True, "kind": kind, "stored": stored})


def _source(request: web.Request, body: _Body) -> str:
    named = body.name("source")
    settings = request.config_dict[SERVICE_KEY].settings
    if named is not None and (problem := source_name_problem(named)) is not None:
        raise ValidationError("source", f"is not a valid source name: {problem}; use {SOURCE_NAME_RULE}")
    if named is not None and named.startswith(settings.source_prefix):
        raise ValidationError("source", f"{named[:60]!r} starts with {settings.source_prefix!r}, which is "
                                        "reserved for labels made on the labeling pages; name another source "
                                        f"(or leave it out: {settings.default_api_source!r})")
    return named or settings.default_api_source


async def post_comparison(request: web.Request) -> web.Response:
    """POST /v1/comparisons."""
    def build(b: _Body) -> Record:
        outcome = b.data.get("outcome")
        if outcome not in OUTCOMES:
            raise ValidationError("outcome", f"must be one of {', '.join(OUTCOMES)}")
        if b.data.get("response_a") == b.data.get("response_b"):
            raise ValidationError("response_b", "must differ from response_a")
        confidence = b.number("confidence")
        if confidence is not None and not 0 <= confidence <= 1:
            raise ValidationError("confidence", "must be in [0, 1]")
        comment = b.comment()
        return Comparison(_source(request, b), str(b.text("prompt")), str(b.text("response_a")),
                          str(b.text("response_b")), outcome, annotator=_who(request, b), confidence=confidence,
                          comment=comment, model_a=b.name("model_a"), model_b=b.name("model_b"),
                          campaign=b.name("campaign"), external_id=b.name("external_id"),
                          idempotency_key=_key(request, b))
    return await _store(request, "comparisons", build, COMPARISON_IN)


async def post_ranking(request: web.Request) -> web.Response:
    """POST /v1/rankings."""
    def build(b: _Body) -> Record:
        responses = b.data.get("responses")
        if not isinstance(responses, list) or not 2 <= len(responses) <= MAX_RANKED:
            raise ValidationError("responses", f"must be an array of 2..{MAX_RANKED} responses, best first")
        texts = tuple(str(b.text("", where=f"responses[{i}]", value=r)) for i, r in enumerate(responses))
        if len(set(texts)) != len(texts):
            raise ValidationError("responses", "must all differ")
        return Ranking(_source(request, b), str(b.text("prompt")), texts, annotator=_who(request, b),
                       campaign=b.name("campaign"), external_id=b.name("external_id"),
                       idempotency_key=_key(request, b))
    return await _store(request, "rankings", build, RANKING_IN)


async def post_feedback(request: web.Request) -> web.Response:
    """POST /v1/feedback: thumbs up/down (stored as feedback) or a rating on a scale (stored as a rating)."""
    data = None  # the kind depends on the body

    def build(b: _Body) -> Record:
        nonlocal data
        thumbs, rating = b.data.get("thumbs"), b.data.get("rating")
        if (thumbs is None) == (rating is None):
            raise ValidationError("", 'send exactly one of "thumbs" ("up" or "down") or "rating" (with "scale")')
        who, model, campaign, external_id, key = (_who(request, b), b.name("model"), b.name("campaign"),
                                                   b.name("external_id"), _key(request, b))
        comment = b.comment()
        prompt, response = str(b.text("prompt")), str(b.text("response"))
        if thumbs is not None:
            if thumbs not in ("up", "down"):
                raise ValidationError("thumbs", 'must be "up" or "down"')
            data = "feedback"
            return Feedback(_source(request, b), prompt, response, thumbs == "up", annotator=who, model=model,
                            comment=comment, campaign=campaign, external_id=external_id, idempotency_key=key)
        value = b.number("rating", required=True)
        scale = b.data.get("scale")
        if not isinstance(scale, list) or len(scale) != 2:
            raise ValidationError("scale", "must be [min, max] with a rating, e.g. [1, 7]")
        lo = b.number("", value=scale[0], where="scale[0]")
        hi = b.number("", value=scale[1], where="scale[1]")
        assert value is not None and lo is not None and hi is not None  # required numbers
        if not lo < hi or not lo <= value <= hi:
            raise ValidationError("rating", f"{value} is not on the scale [{lo}, {hi}]")
        data = "ratings"
        return Rating(_source(request, b), prompt, response, value, lo, hi, annotator=who, model=model,
                      comment=comment, campaign=campaign, external_id=external_id, idempotency_key=key)

    body = await read_json_object(request)
    _check_fields(body, FEEDBACK_IN)
    record = build(_Body(body, request.config_dict[CONFIG_KEY].max_text_chars))
    return await _save(request, record, str(data))


async def get_stats(request: web.Request) -> web.Response:
    """GET /v1/stats."""
    service = request.config_dict[SERVICE_KEY]
    stats = await service.call(service.store.stats)
    totals = await service.call(service.store.totals)  # distinct: a prompt two sources share counts once
    campaigns = await service.call(service.store.list_campaigns)
    sources = {name: asdict(s) for name, s in stats.items()}
    return json_response({"sources": sources, "totals": asdict(totals), "campaigns": [
        {"name": c.name, "overlap": c.overlap, "pairs": c.pairs, "labels": c.labels, "complete": c.complete,
         "labelers": c.labelers} for c in campaigns]})


IDEMPOTENCY_PARAMETER: dict[str, Any] = {
    "name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
    "description": "The record's idempotency key, as the body's idempotency_key (send one or both, equal): "
                   "retrying the very same record with it stores nothing more (stored: false); the same key "
                   "with any other record is refused with 409. Keys belong to their caller.",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS},
}


def api_endpoints() -> tuple[Endpoint, ...]:
    """The ingestion API's endpoints (labelers and admins may post; stats are admin only)."""
    tags, keyed = ("ingestion",), (IDEMPOTENCY_PARAMETER,)
    return (
        Endpoint(method="POST", path="/v1/comparisons", handler=post_comparison, role=Role.LABELER,
                 summary="Store one pairwise comparison", operation_id="postComparison", request=COMPARISON_IN,
                 response=STORED, errors=(409, 503), tags=tags, parameters=keyed),
        Endpoint(method="POST", path="/v1/rankings", handler=post_ranking, role=Role.LABELER,
                 summary="Store one ranking (best first)", operation_id="postRanking", request=RANKING_IN,
                 response=STORED, errors=(409, 503), tags=tags, parameters=keyed),
        Endpoint(method="POST", path="/v1/feedback", handler=post_feedback, role=Role.LABELER,
                 summary="Store thumbs up/down or a rating on one response", operation_id="postFeedback",
                 request=FEEDBACK_IN, response=STORED, errors=(409, 503), tags=tags, parameters=keyed),
        Endpoint(method="GET", path="/v1/stats", handler=get_stats, role=Role.ADMIN,
                 summary="Records per source and campaign progress", operation_id="getStats", response=STATS,
                 tags=tags),
    )
