"""Unlabeled samples: stored with their model, content-addressed, ready to become a campaign (SQLite + PostgreSQL)."""

from __future__ import annotations

import pytest

from storage.errors import InvalidRecordError
from storage.hashing import prompt_id, response_id
from storage.records import Comparison
from storage.store import Store


def test_samples_are_stored_with_their_model_and_become_a_campaign(store: Store) -> None:
    ids = store.add_samples("generated", [("Why is the sky blue?", [("Rayleigh scattering.", "policy-v1"),
                                                                    ("Because it is.", "policy-v1")]),
                                          ("Say hi", [("hi", "policy-v1"), ("hello", None), ("hey", "policy-v1")])])
    pid = prompt_id("Why is the sky blue?")
    assert ids[0] == [response_id(pid, "Rayleigh scattering."), response_id(pid, "Because it is.")]
    assert len(ids[1]) == 3
    assert store.response_texts(ids[0]) == {ids[0][0]: "Rayleigh scattering.", ids[0][1]: "Because it is."}
    # Storing again adds nothing and returns the same ids; the first model recorded stays.
    assert store.add_samples("generated", [("Say hi", [("hello", "policy-v2")])]) == [[ids[1][1]]]
    pairs = [(g[i], g[j]) for g in ids for i in range(len(g)) for j in range(i + 1, len(g))]
    campaign = store.create_campaign("gen-1", pairs=pairs, overlap=2)
    assert campaign.name == "gen-1"
    assert len(store.campaign_pair_texts("gen-1")) == 1 + 3
    # A later label of a sample refers to the same response rows.
    store.import_records([Comparison(prompt="Say hi", response_a="hi", response_b="hey", outcome="A",
                                     source="labeled", model_a="policy-v1", model_b="policy-v1")])
    assert store.table_counts()["responses"] == 5


def test_bad_samples_store_nothing(store: Store) -> None:
    before = store.table_counts()
    with pytest.raises(InvalidRecordError, match="empty or holds a NUL"):
        store.add_samples("generated", [("ok prompt", [("fine", "m")]), ("p", [("bad\x00", "m")])])
    with pytest.raises(InvalidRecordError, match="source name is empty"):
        store.add_samples("", [("p", [("r", None)])])
    assert store.table_counts() == before
