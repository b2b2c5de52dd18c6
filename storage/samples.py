"""Unlabeled responses: samples a policy generated, stored so that a campaign can have them labeled.

A response is content-addressed like every imported one (storage/hashing.py), so a sample that is
later labeled, imported or generated again is the same row; the producing model is kept as first
stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection

from storage import hashing
from storage import models as m
from storage.errors import InvalidRecordError
from storage.labeling import insert_ignore, name_id

Sample = tuple[str, Sequence[tuple[str, str | None]]]
"""(prompt text, [(response text, producing model or None), ...])."""


def usable_text(text: str) -> bool:
    """True when the store keeps `text` as a sample's prompt or response: not blank, no NUL character."""
    return bool(text.strip()) and "\x00" not in text


def add_samples(conn: Connection, source: str, samples: Sequence[Sample], now: datetime) -> list[list[str]]:
    """Store prompts and their responses under `source`; the response ids, per prompt, in order."""
    if not source:
        raise InvalidRecordError("the source name is empty", "name the source the samples are stored under")
    for prompt, responses in samples:
        texts = [prompt, *(text for text, _ in responses)]
        if any(not isinstance(t, str) or not usable_text(t) for t in texts):
            raise InvalidRecordError(f"a prompt or response of {prompt[:60]!r} is empty or holds a NUL character",
                                     "leave such samples out")
    source_id = name_id(conn, m.table_of(m.Source), source, now)
    prompt_rows: dict[str, dict[str, object]] = {}
    response_rows: dict[str, dict[str, object]] = {}
    ids: list[list[str]] = []
    for prompt, responses in samples:
        pid = hashing.prompt_id(prompt)
        prompt_rows.setdefault(pid, {"id": pid, "text": prompt, "source_id": source_id, "created_at": now})
        group = []
        for text, model in responses:
            rid = hashing.response_id(pid, text)
            response_rows.setdefault(rid, {"id": rid, "prompt_id": pid, "text": text, "model": model,
                                           "created_at": now})
            group.append(rid)
        ids.append(group)
    insert_ignore(conn, m.table_of(m.Prompt), list(prompt_rows.values()))
    insert_ignore(conn, m.table_of(m.Response), list(response_rows.values()))
    return ids
