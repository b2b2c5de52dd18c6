"""Store -> reward model: snapshot, preference pairs, split, training, model card, registry.

    snapshot -> records -> pairs_from_records -> split_by_prompt -> train_reward_model
             -> save_reward_model (card) -> Store.register_model (kind "personal")

How records become PreferencePairs (`pairs_from_records`):

- Comparisons and rankings are votes on an unordered pair of responses to one prompt, grouped per
  (source, prompt, pair). A vote says how much it prefers one side: A/B = 1, a tie = 1/2 each way,
  a comparison's pre-aggregated `agreement` (share of annotators preferring A) counts as given. A
  ranking of k responses votes on each of its k(k-1)/2 pairs, best first. The pair's soft label
  is the mean (the aggregation's soft label): p = P(chosen better), chosen = the side with p >= 1/2,
  so a pair whose votes cancel trains as a tie (p = 1/2, r_c = r_r). `both_bad` says nothing about
  the order (as in the aggregation's strengths) and is left out.
- Ratings (scaled onto [0, 1]) and thumbs (up = 1, down = 0) become within-prompt pairs with
  `pairs_from_ratings`, ratings and feedback never mixed (their scales differ).

The dev split is `split_by_prompt(pairs, dev_fraction, seed)`: a pure function of the snapshot's
records and the config, so `dev_pairs_for_card` rebuilds exactly the dev pairs a model was
selected on (the int8 export gate uses them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.errors import NodeError
from node.rm.config import TrainConfig
from node.rm.data import PreferencePair, pairs_from_ratings, split_by_prompt
from node.rm.preflight import check_out_dir
from storage.errors import AlreadyExistsError, StorageError
from storage.records import Comparison, Feedback, Ranking, Rating, Record
from storage.store import Store
from storage.types import ModelEntry, Snapshot

log = logging.getLogger(__name__)

MODEL_KIND = "personal"
RUNS_DIR = "runs"
RUN_FILE = "run.json"
"""In a run's checkpoint folder: its snapshot, sources and training settings (--resume says what differs)."""
SPLIT_METHOD = "split_by_prompt/sha256"
HISTORY_POINTS = 200
"""Most training-curve points a model card keeps (longer histories are subsampled evenly)."""
_VOTE = {"A": 1.0, "B": 0.0, "tie": 0.5}


@dataclass(frozen=True)
class PairStats:
    """How the records became pairs: what was read, kept and left out."""

    comparisons: int = 0
    rankings: int = 0
    ratings: int = 0
    feedback: int = 0
    both_bad_skipped: int = 0
    """`both_bad` comparisons: no order, not trained on."""
    same_response_skipped: int = 0
    """Comparisons of a response with itself."""
    pairs_from_votes: int = 0
    """Pairs from comparisons and rankings (several votes on one pair make one soft-labeled pair)."""
    pairs_from_ratings: int = 0
    pairs_from_feedback: int = 0
    ties: int = 0
    """Pairs with p = 1/2 (votes that cancel, ties, equal ratings)."""
    by_source: dict[str, int] = field(default_factory=dict)
    """Pairs per source."""

    @property
    def n_pairs(self) -> int:
        return self.pairs_from_votes + self.pairs_from_ratings + self.pairs_from_feedback

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items()}
        out["n_pairs"] = self.n_pairs
        return out


def pairs_from_records(records: Iterable[Record]) -> tuple[list[PreferencePair], PairStats]:
    """Preference pairs from stored or imported records, as the module docstring says; deterministic order.

    >>> from storage.records import Comparison
    >>> pairs, _ = pairs_from_records([Comparison("s", "q", "a", "b", "B"), Comparison("s", "q", "b", "a", "tie")])
    >>> [(q.chosen, q.rejected, q.p) for q in pairs]
    [('b', 'a', 0.75)]
    """
    # (source, prompt, lo, hi) -> votes P(lo better); dicts keep first-seen order
    votes: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    subsets: dict[tuple[str, str, str, str], str | None] = {}
    ratings: list[tuple[str, str, float, str]] = []
    thumbs: list[tuple[str, str, float, str]] = []
    counts: Counter[str] = Counter()

    def vote(source: str, prompt: str, a: str, b: str, p_a: float, subset: str | None) -> None:
        lo, hi = sorted((a, b))
        key = (source, prompt, lo, hi)
        votes[key].append(p_a if a == key[2] else 1.0 - p_a)
        subsets.setdefault(key, subset)

    for record in records:
        if isinstance(record, Comparison):
            counts["comparisons"] += 1
            if record.outcome == "both_bad":
                counts["both_bad_skipped"] += 1
                continue
            if record.response_a == record.response_b:
                counts["same_response_skipped"] += 1
                continue
            p_a = record.agreement if record.agreement is not None else _VOTE[record.outcome]
            vote(record.source, record.prompt, record.response_a, record.response_b, p_a, record.subset)
        elif isinstance(record, Ranking):
            counts["rankings"] += 1
            for i, better in enumerate(record.responses):
                for worse in record.responses[i + 1:]:
                    vote(record.source, record.prompt, better, worse, 1.0, record.subset)
        elif isinstance(record, Rating):
            counts["ratings"] += 1
            span = record.scale_max - record.scale_min
            score = (record.value - record.scale_min) / span if span > 0 else 0.5
            ratings.append((record.prompt, record.response, min(max(score, 0.0), 1.0), record.source))
        elif isinstance(record, Feedback):
            counts["feedback"] += 1
            thumbs.append((record.prompt, record.response, 1.0 if record.thumbs_up else 0.0, record.source))
        # demonstrations are SFT data, not preferences

    pairs: list[PreferencePair] = []
    for key, ps in votes.items():
        source, prompt, lo, hi = key
        p_lo = sum(ps) / len(ps)
        chosen, rejected, p = (lo, hi, p_lo) if p_lo >= 0.5 else (hi, lo, 1.0 - p_lo)
        pairs.append(PreferencePair(prompt, chosen, rejected, p=p, source=source, subset=subsets[key]))
    from_votes = len(pairs)
    from_ratings = pairs_from_ratings(ratings)
    from_thumbs = pairs_from_ratings(thumbs)
    pairs += from_ratings + from_thumbs
    stats = PairStats(
        comparisons=counts["comparisons"], rankings=counts["rankings"], ratings=counts["ratings"],
        feedback=counts["feedback"], both_bad_skipped=counts["both_bad_skipped"],
        same_response_skipped=counts["same_response_skipped"], pairs_from_votes=from_votes,
        pairs_from_ratings=len(from_ratings), pairs_from_feedback=len(from_thumbs),
        ties=sum(q.p == 0.5 for q in pairs), by_source=dict(sorted(Counter(q.source for q in pairs).items())),
    )
    return pairs, stats


# ----------------------------------------------------------------------------------------------
# Snapshot -> pairs -> split


@dataclass(frozen=True)
class TrainingData:
    """The pairs of one snapshot (optionally of some sources), split by prompt."""

    snapshot: Snapshot
    sources: tuple[str, ...] | None
    """Sources kept (None: every source in the snapshot)."""
    train: list[PreferencePair]
    dev: list[PreferencePair]
    stats: PairStats


def snapshot_pairs(store: Store, snapshot_id: str, sources: Sequence[str] | None = None) -> tuple[
        Snapshot, list[PreferencePair], PairStats]:
    """(snapshot, pairs, stats) of a stored snapshot; with `sources`, only theirs (each must be in it)."""
    snapshot = store.get_snapshot(snapshot_id)
    keep = set(sources) if sources else None
    seen: set[str] = set()

    def kept() -> Iterable[Record]:
        for record in store.snapshot_records(snapshot.id):
            seen.add(record.source)
            if keep is None or record.source in keep:
                yield record

    pairs, stats = pairs_from_records(kept())
    unknown = sorted(keep - seen) if keep else []
    if unknown:
        raise NodeError(f"snapshot {snapshot.id[:12]} holds no source named {', '.join(map(repr, unknown))} "
                        f"(its sources: {', '.join(sorted(seen)) or 'none'}); pass --source names from that "
                        "list, or leave out --snapshot to train on a new snapshot of everything stored now")
    return snapshot, pairs, stats


def training_data(store: Store, config: TrainConfig, *, snapshot_id: str | None = None,
                  sources: Sequence[str] | None = None) -> TrainingData:
    """The snapshot (`snapshot_id`, else a new one of what is stored now) as train and dev pairs."""
    if snapshot_id is None:
        if not store.stats():
            raise NodeError("the store is empty: nothing to train on; import preference data first with "
                            "`rewardnode import FILE`")
        snapshot_id = store.create_snapshot(sources=sources or None).id
    snapshot, pairs, stats = snapshot_pairs(store, snapshot_id, sources)
    if not pairs:
        raise NodeError(f"snapshot {snapshot.id[:12]} holds no preference pairs ({snapshot.counts}); import "
                        "comparisons, rankings, ratings or feedback (`rewardnode import FILE`), then train again")
    train, dev = split_by_prompt(pairs, config.dev_fraction, config.seed)
    if not train:
        raise NodeError(f"all {len(pairs)} pairs of snapshot {snapshot.id[:12]} fell into the dev split; import "
                        "pairs for more prompts, or lower rm.dev_fraction")
    return TrainingData(snapshot, tuple(sorted(sources)) if sources else None, train, dev, stats)


def dev_pairs_for_card(store: Store, card: dict[str, Any]) -> list[PreferencePair]:
    """The dev pairs a model card's run was selected on, rebuilt from its snapshot and split settings."""
    snapshot = card.get("snapshot") or {}
    split = card.get("split") or {}
    if not isinstance(snapshot, dict) or "id" not in snapshot or "dev_fraction" not in split:
        raise NodeError("the model card names no training snapshot and split (it was not trained by `rewardnode "
                        "train`); give dev pairs with --data FILE")
    _, pairs, _ = snapshot_pairs(store, snapshot["id"], split.get("sources"))
    return split_by_prompt(pairs, float(split["dev_fraction"]), int(split.get("seed", 0)))[1]


# ----------------------------------------------------------------------------------------------
# Train -> card -> registry


@dataclass(frozen=True)
class TrainedModel:
    """What `train_and_register` produced."""

    entry: ModelEntry
    card: dict[str, Any]
    path: Path


def run_name(snapshot_id: str, sources: tuple[str, ...] | None, config: TrainConfig) -> str:
    """The checkpoint folder's name: the snapshot id's prefix, a hash of snapshot, sources and settings."""
    key = json.dumps({"snapshot": snapshot_id, "sources": sources, "config": config.training_fields()},
                     sort_keys=True)
    return f"{snapshot_id[:12]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def run_dir_for(models_dir: Path, data: TrainingData, config: TrainConfig) -> Path:
    """The checkpoint folder of a run: fixed by snapshot, sources and training config, so --resume finds it."""
    return models_dir / RUNS_DIR / run_name(data.snapshot.id, data.sources, config)


@dataclass(frozen=True)
class InterruptedRun:
    """A run folder under models_dir/runs with an epoch checkpoint: stopped before the model was saved."""

    path: Path
    snapshot: str
    """The snapshot id (its 12-character prefix for runs started before run.json was written)."""
    saved: datetime
    """When the last checkpoint was written."""
    settings: dict[str, Any] | None
    """run.json: {"snapshot", "sources", "config": training fields}; None for runs of older versions."""


def interrupted_runs(models_dir: Path) -> list[InterruptedRun]:
    """The runs `--resume` can continue, newest checkpoint first."""
    from node.rm.train import CHECKPOINT_DIR, CHECKPOINT_FILE

    runs = []
    for path in sorted((models_dir / RUNS_DIR).glob("*/" + CHECKPOINT_DIR + "/" + CHECKPOINT_FILE)):
        folder = path.parent.parent
        try:
            settings = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            settings = None
        settings = settings if isinstance(settings, dict) else None
        snapshot = str(settings.get("snapshot")) if settings else folder.name.split("-")[0]
        saved = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        runs.append(InterruptedRun(folder, snapshot, saved, settings))
    return sorted(runs, key=lambda run: run.saved, reverse=True)


def resumable_snapshot(store: Store, models_dir: Path, config: TrainConfig,
                       sources: Sequence[str] | None) -> str | None:
    """The snapshot of the newest interrupted run with these sources and training settings, or None."""
    key_sources = tuple(sorted(sources)) if sources else None
    for run in interrupted_runs(models_dir):
        try:
            snapshot = store.get_snapshot(run.snapshot)
        except StorageError:  # deleted, or an ambiguous prefix
            continue
        if run.path.name == run_name(snapshot.id, key_sources, config):
            return snapshot.id
    return None


def no_checkpoint_message(models_dir: Path, snapshot_id: str | None, sources: Sequence[str] | None,
                          config: TrainConfig, shown: int = 5) -> str:
    """Why --resume has nothing to continue, the interrupted runs there are, and how to resume one of them."""
    key_sources = sorted(sources) if sources else None
    these = "with these sources and settings"
    head = (f"--resume found no checkpoint of a run on snapshot {snapshot_id[:12]} {these}" if snapshot_id
            else f"--resume found no interrupted run {these}")
    runs = interrupted_runs(models_dir)
    if not runs:
        return f"{head}, nor any other under {models_dir / RUNS_DIR}; train without --resume"
    now = config.training_fields()

    def describe(run: InterruptedRun) -> str:
        if run.settings is None:
            return f"{run.snapshot[:12]} (saved {run.saved:%Y-%m-%d %H:%M} UTC; settings not recorded)"
        diffs = []
        if run.settings.get("sources") != key_sources:
            diffs.append(f"sources {', '.join(run.settings.get('sources') or ['all'])} "
                         f"(now {', '.join(key_sources or ['all'])})")
        saved = run.settings.get("config") or {}
        diffs += [f"{k} = {saved.get(k)!r} (now {now.get(k)!r})" for k in sorted(set(saved) | set(now))
                  if saved.get(k) != now.get(k)]
        differs = f"differs in {', '.join(diffs)}" if diffs else "the same sources and settings"
        return f"{run.snapshot[:12]} (saved {run.saved:%Y-%m-%d %H:%M} UTC; {differs})"

    more = f" and {len(runs) - shown} older" if len(runs) > shown else ""
    return (f"{head}; interrupted runs with a checkpoint, newest first: "
            f"{'; '.join(describe(run) for run in runs[:shown])}{more}. Resume one with `rewardnode train "
            "--resume --snapshot ID` and the settings it was started with (--source, --epochs, ... or "
            "node.toml [rm]), or train without --resume to start over")


def key_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The registry's metrics: the dev numbers `rewardnode models` shows, plus the length bias."""
    dev = summary.get("dev") or {}
    return {
        "dev_accuracy": dev.get("accuracy"), "dev_n": dev.get("n"), "dev_ece": dev.get("ece"),
        "dev_mean_margin": dev.get("mean_margin"),
        "dev_by_source": {k: v.get("accuracy") for k, v in (dev.get("by_source") or {}).items()},
        "longer_wins_accuracy": dev.get("longer_wins_accuracy"), "prefers_longer": dev.get("prefers_longer"),
        "reward_length_correlation": dev.get("length_correlation"),
        "n_train": summary.get("n_train"), "n_dev": summary.get("n_dev"),
        "pairs_per_second": summary.get("pairs_per_second"), "best_step": summary.get("best_step"),
        "stopped_early": summary.get("stopped_early"),
    }


def train_and_register(
    store: Store,
    config: TrainConfig,
    data: TrainingData,
    *,
    models_dir: Path,
    node_name: str,
    out_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainedModel:
    """Train on `data`, save the artifact with its card (out_dir, default models_dir/rm-TIMESTAMP), register it.

    The checkpoint folder (run_dir_for) is deleted once the model is registered.
    """
    from node.rm.artifact import save_reward_model
    from node.rm.train import CHECKPOINT_DIR, CHECKPOINT_FILE, train_reward_model

    created = datetime.now(UTC)
    name = f"rm-{created.strftime('%Y%m%d-%H%M%S')}"
    for n in range(2, 100):  # two runs in one second get rm-...-2, ...
        if out_dir is not None or not (models_dir / name).exists():
            break
        name = f"rm-{created.strftime('%Y%m%d-%H%M%S')}-{n}"
    out = out_dir if out_dir is not None else models_dir / name
    check_out_dir(out)  # before training, not after it
    run_dir = run_dir_for(models_dir, data, config)
    if resume and not (run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE).is_file():
        raise NodeError(no_checkpoint_message(models_dir, data.snapshot.id, data.sources, config))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_FILE).write_text(json.dumps({
        "snapshot": data.snapshot.id, "sources": list(data.sources) if data.sources else None,
        "config": config.training_fields()}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    try:
        result = train_reward_model(data.train, data.dev, config, out_dir=run_dir, progress=progress, resume=resume)
    except BaseException as e:
        if not (run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE).is_file():  # nothing to resume: no empty run
            shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(e, ValueError):  # bad base model, checkpoint mismatch, ...: the message says what to do
            raise NodeError(str(e)) from None
        raise
    summary = result.summary()
    dev = summary.get("dev") or {}
    card: dict[str, Any] = {
        "name": name,
        "node": node_name,
        "created": created.isoformat(timespec="seconds"),
        "base_model": config.base_model,
        "snapshot": {"id": data.snapshot.id, "filter": data.snapshot.filter, "counts": data.snapshot.counts},
        "sources": sorted(data.stats.by_source),
        "split": {"method": SPLIT_METHOD, "dev_fraction": config.dev_fraction, "seed": config.seed,
                  "sources": list(data.sources) if data.sources else None},
        "counts": {**data.stats.to_json(), "n_train": result.n_train, "n_dev": result.n_dev,
                   "n_truncated_train": result.n_truncated_train, "n_truncated_dev": result.n_truncated_dev},
        "config": config.to_dict(),
        "metrics": {
            "dev": dev or None,
            "dev_accuracy_by_source": {k: v.get("accuracy") for k, v in (dev.get("by_source") or {}).items()},
            "length_bias": {"longer_wins_accuracy": dev.get("longer_wins_accuracy"),
                            "prefers_longer": dev.get("prefers_longer"),
                            "reward_length_correlation": dev.get("length_correlation")},
            "training": {**{k: summary[k] for k in ("global_step", "epochs_completed", "finished", "stopped_early",
                                                    "best_step", "best_dev_accuracy", "train_seconds",
                                                    "pairs_per_second")},
                         "history": card_history(summary.get("history") or []),
                         "history_points": len(summary.get("history") or [])},
        },
    }
    card = _plain(card)
    sha = save_reward_model(result.model, result.tokenizer, out, card)
    try:
        entry = store.register_model(
            name=name, kind=MODEL_KIND, path=str(out.resolve()), sha256=sha, base_model=config.base_model,
            snapshot_id=data.snapshot.id, metrics=key_metrics(summary),
            provenance={"node": node_name, "sources": card["sources"], "counts": card["counts"],
                        "split": card["split"], "config": config.to_dict()},
        )
    except AlreadyExistsError:  # same data, config and seed give the same weights: keep the first copy
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        existing = store.get_model(sha)
        raise NodeError(f"training reproduced model {existing.id} bit for bit (same snapshot, settings and seed); "
                        f"it is registered at {existing.path}. Change --seed or the data to train another") from None
    shutil.rmtree(run_dir, ignore_errors=True)
    return TrainedModel(entry, card, out)


def card_history(history: list[dict[str, Any]], limit: int = HISTORY_POINTS) -> list[dict[str, Any]]:
    """The training curve for the card: every dev evaluation, or `limit` evenly spaced ones (first and last kept)."""
    if len(history) <= limit:
        return list(history)
    if limit <= 1:
        return history[-1:]
    last = len(history) - 1
    return [history[round(i * last / (limit - 1))] for i in range(limit)]


def _plain(value: Any) -> Any:
    """`value` as strict JSON data: non-finite floats become None, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str | bytes):
        value = item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------------------------
# Registry look-ups


def newest_model(store: Store, kind: str | None = MODEL_KIND) -> ModelEntry | None:
    """The most recently registered model (of `kind`, None = any kind), or None."""
    models = [m for m in store.list_models() if kind is None or m.kind == kind]
    return models[-1] if models else None


def model_path(entry: ModelEntry) -> Path:
    """The artifact folder of a registered model; NodeError when it is gone."""
    path = Path(entry.path)
    if not (path / "config.json").is_file():
        raise NodeError(f"model {entry.id} is registered at {path}, but no model folder is there anymore; restore "
                        "the folder, or train a new model with `rewardnode train`")
    return path
