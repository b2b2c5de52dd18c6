"""Store -> pairs -> split -> train -> card -> registry (node/rm/pipeline.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification

from node.errors import NodeError, UsageError
from node.rm.artifact import read_card
from node.rm.config import TrainConfig
from node.rm.pipeline import (
    HISTORY_POINTS,
    card_history,
    dev_pairs_for_card,
    interrupted_runs,
    newest_model,
    no_checkpoint_message,
    pairs_from_records,
    resumable_snapshot,
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


def test_a_source_the_snapshot_lacks_is_named_not_dropped(store: Store) -> None:
    store.import_records(comparisons(20, "hh") + comparisons(20, "llmbar", seed=1))
    snapshot = training_data(store, TrainConfig()).snapshot.id
    with pytest.raises(NodeError, match=r"holds no source named 'nope' \(its sources: hh, llmbar\)"):
        training_data(store, TrainConfig(), snapshot_id=snapshot, sources=["nope"])
    with pytest.raises(NodeError, match=r"no source named 'hhx', 'zz' \(its sources: hh, llmbar\)"):
        training_data(store, TrainConfig(), snapshot_id=snapshot, sources=["llmbar", "zz", "hhx"])
    assert {q.source for q in training_data(store, TrainConfig(), snapshot_id=snapshot,
                                            sources=["hh"]).train} == {"hh"}


def test_an_unusable_out_dir_is_refused_before_training(store: Store, tiny_config: TrainConfig,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import node.rm.train

    store.import_records(comparisons(16, "hh"))
    data = training_data(store, tiny_config)
    monkeypatch.setattr(node.rm.train, "train_reward_model", lambda *a, **k: pytest.fail("trained anyway"))
    (tmp_path / "afile").write_text("")
    for out, problem in ((tmp_path / "afile" / "sub", "is a file"),
                         (tmp_path / "afile" / "a" / "b", "is a file"),
                         (tmp_path / "afile", "already exists and is a file")):
        with pytest.raises(UsageError, match=problem):
            train_and_register(store, tiny_config, data, models_dir=tmp_path / "models", node_name="n",
                               out_dir=out, progress=False)
    if Path("/proc/self").is_dir():  # a folder in which nothing can be created, even by root
        with pytest.raises(UsageError, match="cannot create folders in /proc"):
            train_and_register(store, tiny_config, data, models_dir=tmp_path / "models", node_name="n",
                               out_dir=Path("/proc/rewardnode-test/model"), progress=False)


def interrupt_after_first_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training stops (as Ctrl-C would) right after writing its first epoch checkpoint."""
    import node.rm.train

    save = node.rm.train._save_checkpoint

    def save_then_stop(*args, **kwargs):  # type: ignore[no-untyped-def]
        save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(node.rm.train, "_save_checkpoint", save_then_stop)


def test_resume_without_its_checkpoint_lists_the_interrupted_runs(store: Store, tiny_config: TrainConfig,
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store.import_records(comparisons(24, "hh") + comparisons(8, "llmbar", seed=1))
    config = replace(tiny_config, epochs=2, dev_fraction=0.25)
    models = tmp_path / "models"
    with monkeypatch.context() as m:
        interrupt_after_first_checkpoint(m)
        with pytest.raises(KeyboardInterrupt):
            train_and_register(store, config, training_data(store, config), models_dir=models, node_name="n",
                               progress=False)
    first = training_data(store, config).snapshot.id
    [run] = interrupted_runs(models)
    assert run.snapshot == first and run.settings is not None and run.settings["config"]["epochs"] == 2

    store.import_records(comparisons(4, "late", seed=2))  # a new snapshot differs from the interrupted run's
    newer = training_data(store, config)
    assert newer.snapshot.id != first
    with pytest.raises(NodeError) as e:
        train_and_register(store, config, newer, models_dir=models, node_name="n", progress=False,
                           resume=True)
    assert f"interrupted runs with a checkpoint, newest first: {first[:12]} (saved " in str(e.value)
    assert "the same sources and settings" in str(e.value) and "--snapshot ID" in str(e.value)
    other = replace(config, epochs=3, learning_rate=1e-3)
    old = training_data(store, other, snapshot_id=first, sources=["hh"])
    with pytest.raises(NodeError) as e:
        train_and_register(store, other, old, models_dir=models, node_name="n", progress=False, resume=True)
    message = str(e.value)
    assert f"no checkpoint of a run on snapshot {first[:12]}" in message
    assert "sources all (now hh)" in message and "epochs = 2 (now 3)" in message
    assert "learning_rate = 0.003 (now 0.001)" in message and "seed" not in message  # only what differs

    # --resume without --snapshot: the snapshot of the newest interrupted run with these settings
    assert resumable_snapshot(store, models, config, None) == first
    assert resumable_snapshot(store, models, other, None) is None
    assert resumable_snapshot(store, models, config, ["hh"]) is None
    again = training_data(store, config, snapshot_id=first)
    trained = train_and_register(store, config, again, models_dir=models, node_name="n", progress=False,
                                 resume=True)
    assert trained.card["metrics"]["training"]["epochs_completed"] == 2 and interrupted_runs(models) == []
    assert "nor any other" in no_checkpoint_message(models, first, None, config)
