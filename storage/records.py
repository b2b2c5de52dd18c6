"""Typed preference records: what the importer produces and the store persists.

These frozen dataclasses are the boundary between parsing (node/) and persistence (storage/).
Texts are kept exactly as given; ids are content hashes computed by the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

Outcome = Literal["A", "B", "tie", "both_bad"]
OUTCOMES: Final[tuple[str, ...]] = ("A", "B", "tie", "both_bad")
MIRRORED: Final[dict[str, str]] = {"A": "B", "B": "A", "tie": "tie", "both_bad": "both_bad"}
"""Each outcome as read with the comparison's two sides swapped (A = response_a preferred)."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """One pairwise judgment: which of two responses to `prompt` an annotator preferred."""

    source: str
    prompt: str
    response_a: str
    response_b: str
    outcome: Outcome
    annotator: str | None = None
    confidence: float | None = None  # the annotator's own confidence in [0, 1]
    comment: str | None = None
    agreement: float | None = None  # pre-aggregated fraction of annotators preferring A, if given
    model_a: str | None = None  # model that produced response_a, if known
    model_b: str | None = None
    subset: str | None = None  # finer label inside the source, e.g. "harmless-base"
    campaign: str | None = None
    external_id: str | None = None  # the record's id in the file it came from
    idempotency_key: str | None = None  # a retried submit with the same key is stored once
    created_at: datetime | None = None  # defaults to the import time


@dataclass(frozen=True, slots=True)
class Ranking:
    """A k-wise ranking of responses to one prompt, best first."""

    source: str
    prompt: str
    responses: tuple[str, ...]  # best first, at least 2, all distinct
    models: tuple[str | None, ...] | None = None  # producing model per response, same order
    annotator: str | None = None
    subset: str | None = None
    campaign: str | None = None
    external_id: str | None = None
    idempotency_key: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Rating:
    """A scalar rating of one response on a stated scale, e.g. 1..7."""

    source: str
    prompt: str
    response: str
    value: float
    scale_min: float
    scale_max: float
    annotator: str | None = None
    model: str | None = None
    comment: str | None = None
    subset: str | None = None
    campaign: str | None = None
    external_id: str | None = None
    idempotency_key: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Feedback:
    """Binary feedback (thumbs up/down) on one response, e.g. from end users of the owner's LLM."""

    source: str
    prompt: str
    response: str
    thumbs_up: bool
    annotator: str | None = None
    model: str | None = None
    comment: str | None = None
    subset: str | None = None
    campaign: str | None = None
    external_id: str | None = None
    idempotency_key: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Demonstration:
    """A human-written response to a prompt (for SFT), with its author."""

    source: str
    prompt: str
    response: str
    author: str | None = None
    subset: str | None = None
    campaign: str | None = None
    external_id: str | None = None
    idempotency_key: str | None = None
    created_at: datetime | None = None


Record = Comparison | Ranking | Rating | Feedback | Demonstration
