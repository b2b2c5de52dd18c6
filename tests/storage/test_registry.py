"""The model registry: register, list, get by id prefix; repeats and conflicts."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from storage import models as m
from storage.errors import AlreadyExistsError, AmbiguousIdError, InvalidRecordError, NotFoundError
from storage.store import Store
from tests.storage.conftest import sample_records


def _sha(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def _register(store: Store, seed: str, **kw: Any) -> Any:
    args: dict[str, Any] = dict(name=f"rm-{seed}", kind="personal", path=f"/models/{seed}", sha256=_sha(seed),
                                base_model="tiny-gpt", snapshot_id=None, metrics={"accuracy": 0.71},
                                provenance={"git": "abc"})
    args.update(kw)
    return store.register_model(**args)


def test_register_list_get(store: Store) -> None:
    store.import_records(sample_records())
    snap = store.create_snapshot()
    entry = _register(store, "one", snapshot_id=snap.id[:8], metrics={"accuracy": 0.71, "loss": float("nan")})
    assert entry.id == _sha("one")[:12] and entry.sha256 == _sha("one")
    assert entry.snapshot_id == snap.id  # a prefix is resolved to the full id
    assert entry.metrics == {"accuracy": 0.71, "loss": None}  # JSON has no NaN
    assert entry.created_at.utcoffset() is not None
    two = _register(store, "two", kind="federated", provenance={"round": 3, "peers": ["a", "b"]})
    assert store.list_models() == [entry, two]
    assert store.get_model(entry.id) == entry
    assert store.get_model(entry.id[:5]) == entry
    assert store.get_model(_sha("two")) == two  # the full sha256 works too


def test_registering_the_same_artifact_again(store: Store) -> None:
    first = _register(store, "x")
    assert _register(store, "x") == first  # same description: the stored entry
    with pytest.raises(AlreadyExistsError, match=f"already registered as model {first.id}"):
        _register(store, "x", name="another name")
    assert len(store.list_models()) == 1


def test_ambiguous_and_unknown_prefixes(store: Store) -> None:
    seeds = [f"s{i}" for i in range(40)]
    by_first: dict[str, list[str]] = {}
    for seed in seeds:
        by_first.setdefault(_sha(seed)[0], []).append(seed)
    shared = next(v for v in by_first.values() if len(v) >= 2)
    for seed in shared[:2]:
        _register(store, seed)
    with pytest.raises(AmbiguousIdError, match="give more characters"):
        store.get_model(_sha(shared[0])[0])
    with pytest.raises(NotFoundError, match="no model id starts with"):
        store.get_model("0000000")
    with pytest.raises(NotFoundError):
        store.get_model("Not-Hex!")


@pytest.mark.parametrize("change, problem", [
    ({"kind": "stolen"}, "model kind 'stolen'"),
    ({"sha256": "xyz"}, "64 hex"),
    ({"name": ""}, "name is empty"),
    ({"metrics": {"bad": object()}}, "JSON cannot store"),
])
def test_bad_registrations_are_refused(store: Store, change: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidRecordError, match=problem):
        _register(store, "bad", **change)
    assert store.list_models() == []


def test_unknown_snapshot_is_refused(store: Store) -> None:
    with pytest.raises(NotFoundError, match="snapshot"):
        _register(store, "y", snapshot_id="ab" * 32)


def test_kind_check_constraint(store: Store) -> None:
    t = m.RegisteredModel.__table__
    row = dict(id="x", name="n", kind="weird", path="p", sha256="0" * 64, base_model="b", snapshot_id=None,
               metrics={}, provenance={}, created_at=datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(sa.insert(t).values(**row))


def test_numpy_like_scalars_become_json() -> None:
    from storage.registry import to_json

    class Scalar:
        def __init__(self, v: float) -> None:
            self.v = v

        def item(self) -> float:
            return self.v

    assert to_json({"a": (Scalar(1.5), Scalar(float("inf")))}, "metrics") == {"a": [1.5, None]}
