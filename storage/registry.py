"""The model registry: reward-model artifacts, what they were trained on, how they scored.

A model's id is the first 12 hex characters of its artifact's sha256 (longer only in the unlikely
case that 12 collide), so the id names the exact bytes. Registering the same artifact again with
the same description returns the stored entry; with a different one it is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, Row, insert, select

from storage import models as m
from storage.db import find_by_prefix
from storage.errors import AlreadyExistsError, InvalidRecordError
from storage.types import ModelEntry

ID_LEN: Final = 12
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_models: Final = m.table_of(m.RegisteredModel)


def to_json(value: Any, where: str) -> Any:
    """`value` as plain JSON data: non-finite floats become None (JSON has no NaN), numpy-like
    scalars become Python numbers, tuples become lists; anything else raises InvalidRecordError."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidRecordError(f"{where} has a non-string key {k!r}", "use string keys (JSON objects)")
            out[k] = to_json(v, f"{where}.{k}")
        return out
    if isinstance(value, list | tuple):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays
    if callable(item):
        return to_json(item(), where)
    raise InvalidRecordError(f"{where} holds a {type(value).__name__}, which JSON cannot store",
                             "convert it to a number, string, list or dict first")


def _entry(row: Row[Any]) -> ModelEntry:
    return ModelEntry(id=row.id, name=row.name, kind=row.kind, path=row.path, sha256=row.sha256,
                      base_model=row.base_model, snapshot_id=row.snapshot_id, metrics=dict(row.metrics),
                      provenance=dict(row.provenance), created_at=row.created_at)


def register(conn: Connection, *, name: str, kind: str, path: str, sha256: str, base_model: str,
             snapshot_id: str | None, metrics: Mapping[str, Any], provenance: Mapping[str, Any]) -> ModelEntry:
    """Add a model (inside the caller's write transaction); see the module docstring for ids and repeats."""
    if kind not in m.MODEL_KINDS:
        raise InvalidRecordError(f"model kind {kind!r} is not one of {', '.join(m.MODEL_KINDS)}",
                                 "pass kind='personal' (trained here), 'federated' or 'imported'")
    digest = sha256.lower() if isinstance(sha256, str) else ""
    if not _SHA256.fullmatch(digest):
        raise InvalidRecordError(f"sha256 {sha256!r} is not 64 hex characters",
                                 "pass hashlib.sha256(artifact bytes).hexdigest()")
    for field, value in (("name", name), ("path", path), ("base_model", base_model)):
        if not isinstance(value, str) or not value:
            raise InvalidRecordError(f"model {field} is empty", f"pass a non-empty {field}")
    metrics_json = to_json(dict(metrics), "metrics")
    provenance_json = to_json(dict(provenance), "provenance")
    if snapshot_id is not None:
        snapshot_id = find_by_prefix(conn, m.table_of(m.Snapshot).c.id, snapshot_id, "snapshot")
    existing = conn.execute(select(_models).where(_models.c.sha256 == digest)).first()
    if existing is not None:
        same = (existing.name, existing.kind, existing.path, existing.base_model, existing.snapshot_id) == (
            name, kind, path, base_model, snapshot_id)
        if same:
            return _entry(existing)
        raise AlreadyExistsError(
            f"the artifact with sha256 {digest[:12]}... is already registered as model {existing.id} "
            f"({existing.name!r}, {existing.kind}, {existing.path})",
            f"use model {existing.id}, or register a different artifact")
    length = ID_LEN
    while conn.execute(select(_models.c.id).where(_models.c.id == digest[:length])).first() is not None:
        length += 4
    model_id = digest[:length]
    conn.execute(insert(_models).values(
        id=model_id, name=name, kind=kind, path=path, sha256=digest, base_model=base_model, snapshot_id=snapshot_id,
        metrics=metrics_json, provenance=provenance_json, created_at=datetime.now(UTC)))
    return get(conn, model_id)


def list_all(conn: Connection) -> list[ModelEntry]:
    """Every registered model, oldest first."""
    return [_entry(r) for r in conn.execute(select(_models).order_by(_models.c.created_at, _models.c.id))]


def get(conn: Connection, model_id: str) -> ModelEntry:
    """The model with this id, unique id prefix or full sha256; NotFoundError / AmbiguousIdError otherwise."""
    if isinstance(model_id, str) and _SHA256.fullmatch(model_id.lower()):
        by_digest = conn.execute(select(_models).where(_models.c.sha256 == model_id.lower())).first()
        if by_digest is not None:
            return _entry(by_digest)
    full = find_by_prefix(conn, _models.c.id, model_id, "model")
    return _entry(conn.execute(select(_models).where(_models.c.id == full)).one())


__all__ = ["ID_LEN", "get", "list_all", "register", "to_json"]
