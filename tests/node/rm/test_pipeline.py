"""Store -> pairs -> split -> train -> card -> registry (node/rm/pipeline.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from node.errors import NodeError
from node.rm.artifact import read_card
from node.rm.config import TrainConfig
from node.rm.pipeline import (
    HISTORY_POINTS,
    card_history,
    dev_pairs_for_card,
    newest_model,
    pairs_from_records,
    run_dir_for,
    train_and_register,
    training_data,
)
from storage.records import Comparison, Demonstration, Feedback, Ranking, Rating
from storage.store import Store

from .conftest import synthetic_pairs


def by_pair(pairs):  # type: ignore[no-untyped-def]
    return {(q.chosen, q.rejected): q for q in pairs}


def test_votes_on_one_pair_become_one_soft_label() -> None:
    records = [
        Comparison("s", "q", "a", "b", "A", annotator="x"),
        Comparison("s", "q", "b", "a", "B", annotator="y"),  # the same pair the other way round: a again
        Comparison("s", "q", "a", "b", "tie", annotator="z"),
        Comparison("s", "q", "a", "b", "both_bad", annotator="w"),  # no order: left out
        Comparison("s", "q", "c", "d", "B", agreement=0.2),  # pre-aggregated: 20% prefer c
        Comparison("s", "q", "e", "e", "A"),
    ]
    pairs, stats = pairs_from_records(records)
    got = by_pair(pairs)
    assert set(got) == {("a", "b"), ("d", "c")}
    assert got[("a", "b")].p == pytest.approx(2.5 / 3)
    assert got[("d", "c")].p == pytest.approx(0.8)
    assert (stats.comparisons, stats.both_bad_skipped, stats.same_response_skipped) == (6, 1, 1)
    assert stats.pairs_from_votes == 2 and stats.by_source == {"s": 2}


def test_cancelling_votes_make_a_tie_and_sources_stay_apart() -> None:
    pairs, stats = pairs_from_records([
        Comparison("s1", "q", "a", "b", "A"), Comparison("s1", "q", "a", "b", "B"),
        Comparison("s2", "q", "a", "b", "A", subset="sub"),
    ])
    assert sorted((q.source, q.p, q.subset) for q in pairs) == [("s1", 0.5, None), ("s2", 1.0, "sub")]
    assert stats.ties == 1


def test_rankings_vote_on_every_pair_best_first() -> None:
    pairs, stats = pairs_from_records([Ranking("s", "q", ("a", "b", "c")), Comparison("s", "q", "c", "a", "A")])
    got = by_pair(pairs)
    assert set(got) == {("a", "b"), ("a", "c"), ("b", "c")}
    assert got[("a", "c")].p == 0.5  # ranking says a > c, the comparison c > a
    assert got[("a", "b")].p == 1.0 and stats.rankings == 1


def test_ratings_and_feedback_pair_within_prompt_never_mixed() -> None:
    records = [
        Rating("s", "q", "a", 7, 1, 7), Rating("s", "q", "b", 4, 1, 7), Rating("s", "other", "z", 1, 1, 7),
        Feedback("s", "q", "a", False), Feedback("s", "q", "c", True),
        Demonstration("s", "q", "written by a person"),
    ]
    pairs, stats = pairs_from_records(records)
    got = by_pair(pairs)
    assert got[("a", "b")].p == pytest.approx(0.75)  # (1 + (1 - 0.5)) / 2
    assert got[("c", "a")].p == 1.0  # thumbs up vs down
    assert len(pairs) == 2  # one prompt per rating group; no rating-vs-thumbs pair
    assert (stats.ratings, stats.feedback, stats.pairs_from_ratings, stats.pairs_from_feedback) == (3, 2, 1, 1)


def comparisons(n: int, source: str, seed: int = 0) -> list[Comparison]:
    return [Comparison(source, q.prompt, q.chosen, q.rejected, "A") for q in synthetic_pairs(n, seed, source=source)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(f"sqlite:///{tmp_path / 'store.db'}") as s:
        yield s


def test_empty_store_is_refused_with_a_fix(store: Store) -> None:
    with pytest.raises(NodeError, match="store is empty.*rewardnode import"):
        training_data(store, TrainConfig())


def test_training_data_snapshots_and_splits_deterministically(store: Store) -> None:
    store.import_records(comparisons(40, "hh") + comparisons(20, "llmbar", seed=1))
    config = TrainConfig(dev_fraction=0.25, seed=3)
    data = training_data(store, config)
    assert len(data.train) + len(data.dev) == 60 and data.dev
    assert not {q.prompt for q in data.train} & {q.prompt for q in data.dev}
    assert training_data(store, config).snapshot.id == data.snapshot.id  # same content, same snapshot
    store.import_records(comparisons(5, "late", seed=2))
    again = training_data(store, config, snapshot_id=data.snapshot.id[:10])  # later imports are not in it
    assert (again.train, again.dev) == (data.train, data.dev)
    only = training_data(store, config, sources=["llmbar"])
    assert {q.source for q in only.train + only.dev} == {"llmbar"}
    card = {"snapshot": {"id": data.snapshot.id}, "split": {"dev_fraction": 0.25, "seed": 3, "sources": None}}
    assert dev_pairs_for_card(store, card) == data.dev
    with pytest.raises(NodeError, match="--data FILE"):
        dev_pairs_for_card(store, {})


def test_train_and_register_writes_card_and_registry(store: Store, tiny_config: TrainConfig, tmp_path: Path) -> None:
    store.import_records(comparisons(48, "hh") + [Comparison("hh", "q0", "x", "y", "both_bad")])
    config = TrainConfig(**{**tiny_config.to_dict(), "dev_fraction": 0.25})
    data = training_data(store, config)
    models_dir = tmp_path / "models"
    trained = train_and_register(store, config, data, models_dir=models_dir, node_name="org-t", progress=False)
    entry = trained.entry
    assert entry.kind == "personal" and entry.snapshot_id == data.snapshot.id
    assert newest_model(store) == entry
    assert entry.metrics["n_train"] == len(data.train) and entry.metrics["dev_by_source"].keys() == {"hh"}
    card = read_card(trained.path)
    assert card["snapshot"]["id"] == data.snapshot.id and card["sources"] == ["hh"]
    assert card["counts"]["both_bad_skipped"] == 1 and card["counts"]["n_dev"] == len(data.dev)
    assert card["config"]["base_model"] == config.base_model and card["sha256"] == entry.sha256
    assert set(card["metrics"]["length_bias"]) == {"longer_wins_accuracy", "prefers_longer",
                                                   "reward_length_correlation"}
    assert "hh" in card["metrics"]["dev_accuracy_by_source"]
    history = card["metrics"]["training"]["history"]  # the training curve the dashboard draws
    assert history and len(history) == card["metrics"]["training"]["history_points"]
    assert {"step", "train_loss", "dev_accuracy"} <= history[-1].keys()
    assert [p["step"] for p in history] == sorted(p["step"] for p in history)
    assert AutoModelForSequenceClassification.from_pretrained(trained.path).config.num_labels == 1
    assert not run_dir_for(models_dir, data, config).exists()  # the checkpoint goes once registered
    assert dev_pairs_for_card(store, card) == data.dev
    with pytest.raises(NodeError, match=f"reproduced model {entry.id} bit for bit"):
        train_and_register(store, config, data, models_dir=models_dir, node_name="org-t", progress=False)
    assert [p.name for p in models_dir.iterdir() if p.name != "runs"] == [trained.path.name]  # no orphan copy
    assert len(store.list_models()) == 1


def test_card_history_keeps_short_curves_and_subsamples_long_ones() -> None:
    short = [{"step": i} for i in range(5)]
    assert card_history(short) == short
    long = [{"step": i} for i in range(1000)]
    kept = card_history(long)
    assert len(kept) == HISTORY_POINTS and kept[0] == long[0] and kept[-1] == long[-1]
    assert len({p["step"] for p in kept}) == HISTORY_POINTS  # no point twice
