"""What the store returns (and the aggregation rows it takes): frozen dataclasses, never ORM objects.

Timestamps are timezone-aware UTC. Ids of prompts and responses are sha256 hex (storage/hashing.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What one `import_records` call stored: counts per kind ("comparisons", "rankings", ...)."""

    added: dict[str, int]  # new records per kind
    duplicates: dict[str, int]  # records already stored (same content key, or an idempotency key seen before)
    prompts_added: int = 0  # prompts new to the store
    responses_added: int = 0  # responses new to the store

    @property
    def total_added(self) -> int:
        return sum(self.added.values())

    @property
    def total_duplicates(self) -> int:
        return sum(self.duplicates.values())


@dataclass(frozen=True, slots=True)
class SourceStats:
    """Counts for one source; prompts, responses and annotators are the distinct ones its records use."""

    prompts: int = 0
    responses: int = 0
    comparisons: int = 0
    rankings: int = 0
    ratings: int = 0
    feedback: int = 0
    demonstrations: int = 0
    annotators: int = 0


@dataclass(frozen=True, slots=True)
class ComparisonRows:
    """Comparisons as columns (one entry per comparison, in store order), for aggregation."""

    prompt_id: tuple[str, ...]
    response_a_id: tuple[str, ...]
    response_b_id: tuple[str, ...]
    outcome: tuple[str, ...]  # "A" | "B" | "tie" | "both_bad"
    annotator: tuple[str | None, ...]  # annotator name, None when unknown
    source: tuple[str, ...]  # source name

    def __len__(self) -> int:
        return len(self.prompt_id)


@dataclass(frozen=True, slots=True)
class RankingRow:
    """One ranking, for aggregation: response ids best first."""

    prompt_id: str
    response_ids: tuple[str, ...]
    annotator: str | None
    source: str


@dataclass(frozen=True, slots=True)
class PairLabel:
    """Aggregated votes on an unordered pair of responses to one prompt (response_lo_id < response_hi_id)."""

    prompt_id: str
    response_lo_id: str
    response_hi_id: str
    p_lo: float | None  # fraction of ordered votes preferring lo, ties count half; None if none
    n_votes: int
    n_ties: int
    n_both_bad: int


@dataclass(frozen=True, slots=True)
class AmbiguousItem:
    """A pair an aggregation run flags for another look (input of `save_aggregation`)."""

    prompt_id: str
    response_lo_id: str
    response_hi_id: str
    reason: str  # e.g. "low_agreement", "cycle", "both_bad"
    score: float  # urgency, higher first


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """An item of the ambiguity queue as stored: the flagged pair plus its review status."""

    id: int
    prompt_id: str
    response_lo_id: str
    response_hi_id: str
    reason: str
    score: float  # from the latest run that flagged it
    status: str  # "open" | "resolved"
    created_at: datetime  # first flagged
    resolved_at: datetime | None
    run_id: int | None  # latest run that flagged it


@dataclass(frozen=True, slots=True)
class AnnotatorScore:
    """An annotator's reliability in one aggregation run."""

    annotator: str
    reliability: float
    n_labels: int


@dataclass(frozen=True, slots=True)
class AggregationRun:
    """One saved aggregation: its summary and how many rows of each output it stored."""

    id: int
    created_at: datetime
    summary: dict[str, Any]
    n_strengths: int
    n_pair_labels: int
    n_annotators: int
    n_ambiguous: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable dataset: the record keys it holds hash to `id`."""

    id: str  # sha256 hex over its items
    created_at: datetime
    filter: dict[str, Any]  # how it was selected, e.g. {"sources": ["hh"]} ({"sources": None} = all)
    counts: dict[str, int]  # items per kind

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A registered reward-model artifact."""

    id: str  # the first 12 hex of sha256
    name: str
    kind: str  # "personal" | "federated" | "imported"
    path: str
    sha256: str
    base_model: str
    snapshot_id: str | None  # the training data, when trained here
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    created_at: datetime


__all__ = [
    "AggregationRun",
    "AmbiguousItem",
    "AnnotatorScore",
    "ComparisonRows",
    "ImportResult",
    "ModelEntry",
    "PairLabel",
    "QueueEntry",
    "RankingRow",
    "Snapshot",
    "SourceStats",
]
