"""Reward sources for RL: text in, scores out. The policy's tokens are decoded to text and every reward
model scores that text with its own tokenizer, so the policy and the RM never need to share a vocabulary.

    --reward personal | federated | ensemble | ensemble:ID,ID | MODEL_ID | PATH | http(s)://host/v1/score
"""

from __future__ import annotations

import json
import os
import statistics
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from node.errors import NodeError, UsageError

if TYPE_CHECKING:
    from storage.store import Store

TOKEN_ENV = "REWARDNODE_TOKEN"
"""Bearer token for an http(s) reward source."""
KINDS = ("personal", "federated")


@dataclass(frozen=True)
class Scored:
    """Scores of one batch: the reward per response (what RL optimizes) and, for ensembles, the members'
    spread and their unstandardized mean (what a run logs and reports)."""

    scores: list[float]
    spread: list[float] | None = None  # (N,) std over ensemble members; None for a single model
    unstandardized: list[float] | None = None  # (N,) mean of the members' raw scores; None for a single model

    @property
    def reported(self) -> list[float]:
        """The scores to log and show: the members' raw mean for an ensemble (its `scores` are standardized
        over the batch, so their batch mean is 0 by construction), else the scores themselves."""
        return self.unstandardized if self.unstandardized is not None else self.scores


class RewardSource:
    """Anything that scores (prompt, response) texts."""

    name: str = "reward"

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scored:
        raise NotImplementedError

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> Scored:
        return self.score(prompts, responses)


class FunctionReward(RewardSource):
    """A Python function (prompts, responses) -> list[float] as a reward (toy rewards, tests, rules)."""

    def __init__(self, fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]], name: str = "function"):
        self.fn, self.name = fn, name

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scored:
        return Scored([float(x) for x in self.fn(prompts, responses)])


class ModelReward(RewardSource):
    """A saved reward-model folder (node/rm/artifact.py), scored with its own tokenizer and truncation."""

    def __init__(self, path: str | os.PathLike[str], name: str | None = None, device: str = "cpu",
                 expected_sha256: str | None = None) -> None:
        from node.rm.artifact import RewardScorer

        self.scorer = RewardScorer(path, device=device, expected_sha256=expected_sha256)
        self.name = name or Path(path).name

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scored:
        return Scored(self.scorer.score(list(prompts), list(responses)))


SERVER_MAX_ITEMS = 256
"""Most items a node's POST /v1/score takes in one request (the default `max_items` of node/http/config.py's
ServerConfig, which imports aiohttp, so it is mirrored here); HttpReward sends no more per request."""
SERVER_MAX_BODY_BYTES = 1 << 20
"""Largest /v1/score request body (ServerConfig's default `max_body_bytes`); HttpReward stays under it."""
BLANK_FLOOR = 0.0
"""HttpReward's score for a blank response in a batch where every response is blank."""


class HttpReward(RewardSource):
    """A node's scoring API: POST {url} {"model"?, "items": [{"prompt", "response"}]} -> {"scores": [...]}.

    A batch is sent in requests of at most `max_items` items (SERVER_MAX_ITEMS) and SERVER_MAX_BODY_BYTES.
    Blank (empty or whitespace-only) responses are not sent, since the server refuses them (422); what a
    remote reward model would give them cannot be asked, so each gets the lowest score of its batch (the
    worst of what was scored: a policy is never rewarded for saying nothing), or BLANK_FLOOR (0.0) when
    every response of the batch is blank. A reward-model folder scores blank responses itself.
    """

    def __init__(self, url: str, token: str | None = None, model: str | None = None, timeout: float = 60.0,
                 *, max_items: int = SERVER_MAX_ITEMS) -> None:
        if max_items < 1:
            raise ValueError(f"max_items {max_items}: send at least 1 item per request")
        self.url, self.model, self.timeout, self.max_items = url, model, timeout, max_items
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.name = url

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scored:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses; pass one prompt per "
                             "response")
        sent = [i for i, r in enumerate(responses) if r.strip()]  # the server refuses blank responses
        scores: list[float] = []
        for chunk in self._chunks([{"prompt": prompts[i], "response": responses[i]} for i in sent]):
            scores += self._post(chunk)
        out = [min(scores, default=BLANK_FLOOR)] * len(responses)
        for i, s in zip(sent, scores, strict=True):
            out[i] = s
        return Scored(out)

    def _chunks(self, items: list[dict[str, str]]) -> list[list[dict[str, str]]]:
        """`items` in order, in requests of at most max_items items and about SERVER_MAX_BODY_BYTES."""
        budget = SERVER_MAX_BODY_BYTES - 1024  # {"model": ..., "items": []} and the separators
        chunks: list[list[dict[str, str]]] = []
        size = 0
        for item in items:
            n = len(json.dumps(item).encode()) + 2
            if not chunks or len(chunks[-1]) >= self.max_items or size + n > budget:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += n
        return chunks

    def _post(self, items: list[dict[str, str]]) -> list[float]:
        """One POST /v1/score of `items`; their scores in order."""
        body: dict[str, object] = {"items": items}
        if self.model:
            body["model"] = self.model
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                scores = json.loads(reply.read())["scores"]
        except urllib.error.HTTPError as e:
            raise NodeError(f"the reward server {self.url} answered {e.code}: {e.read()[:200]!r}; check the URL "
                            f"and the bearer token in ${TOKEN_ENV}") from e
        except (urllib.error.URLError, TimeoutError, KeyError, ValueError) as e:
            raise NodeError(f"scoring at {self.url} failed ({e}); is `rewardnode serve` running there?") from e
        if len(scores) != len(items):
            raise NodeError(f"{self.url} returned {len(scores)} scores for {len(items)} items; check the "
                            "server")
        return [float(s) for s in scores]


class EnsembleReward(RewardSource):
    """The mean of several reward sources; `spread` (their std) feeds the disagreement guard.

    Each member's scores are standardized over the batch first, so members on different scales weigh the same:
    RL optimizes those. Their batch mean is 0 by construction, so `unstandardized`, the mean of the members'
    raw scores, is what a run logs, reports and feeds to the audit guard.
    """

    def __init__(self, members: Sequence[RewardSource]) -> None:
        if len(members) < 2:
            raise UsageError("an ensemble needs at least two reward models; register a personal and a federated "
                             "one, or name them: --reward ensemble:ID1,ID2")
        self.members = list(members)
        self.name = "ensemble(" + ",".join(m.name for m in members) + ")"

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scored:
        columns, raw = [], []
        for member in self.members:
            s = member.score(prompts, responses).reported
            mu = statistics.fmean(s)
            sd = statistics.pstdev(s) if len(s) > 1 else 0.0
            columns.append([(x - mu) / (sd + 1e-6) for x in s])
            raw.append(s)
        rows = list(zip(*columns, strict=True))  # (N, M)
        return Scored([statistics.fmean(r) for r in rows], [statistics.pstdev(r) for r in rows],
                      [statistics.fmean(r) for r in zip(*raw, strict=True)])


def _registered(store: Store, model_id: str, home: Path | None, device: str) -> ModelReward:
    entry = store.get_model(model_id)
    path = Path(entry.path)
    if not path.is_absolute() and home is not None:
        path = home / path
    return ModelReward(path, name=f"{entry.kind}:{entry.id}", device=device, expected_sha256=entry.sha256)


def _newest(store: Store, kind: str) -> str:
    found = [m for m in store.list_models() if m.kind == kind]
    if not found:
        hint = "train one with `rewardnode train`" if kind == "personal" else "join a federation round first"
        raise UsageError(f"no {kind} reward model is registered; {hint}, or pass --reward PATH|MODEL_ID")
    return found[-1].id


def resolve_reward(spec: str, store: Store | None = None, *, home: Path | None = None,
                   device: str = "cpu") -> RewardSource:
    """The reward source named by `spec` (see the module docstring)."""
    if spec.startswith(("http://", "https://")):
        return HttpReward(spec)
    if Path(spec).is_dir():
        return ModelReward(spec, device=device)
    if store is None:
        raise UsageError(f"--reward {spec} needs the node's model registry; run inside a node (--home DIR) or pass "
                         "a reward-model folder")
    if spec in KINDS:
        return _registered(store, _newest(store, spec), home, device)
    if spec == "ensemble" or spec.startswith("ensemble:"):
        if ":" in spec:
            ids = [s for s in spec.split(":", 1)[1].split(",") if s]
        else:
            ids = [_newest(store, kind) for kind in KINDS if any(m.kind == kind for m in store.list_models())]
        return EnsembleReward([_registered(store, i, home, device) for i in ids])
    return _registered(store, spec, home, device)
