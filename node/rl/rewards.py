"""Reward sources for RL: text in, scores out. The policy's tokens are decoded to text and every reward
model scores that text with its own tokenizer, so the policy and the RM never need to share a vocabulary.

    --reward personal | federated | ensemble | ensemble:ID,ID | MODEL_ID | PATH | http(s)://host/v1/score
"""

from __future__ import annotations

import json
import os
import statistics
import urllib.error
import urllib.parse
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
SCORE_PATH = "/v1/score"
OPENAPI_PATH = "/openapi.json"
"""Where a node describes its API, next to SCORE_PATH; its ScoreRequest schema says the server's max_items."""
SCORE_REQUEST_SCHEMA = "ScoreRequest"
"""node/http/scoring.py's name for the /v1/score body schema in the OpenAPI document."""
KEY_MAX_BODY_BYTES = "max_body_bytes"
"""node/http/errors.py: the key of the server's body limit in its 413 answer."""
KEY_MAX_ITEMS = "max_items"
"""node/http/errors.py: the key of the server's item limit in its 422 answer to too many items."""


class _Refused(Exception):
    """Internal: the server refused a request for its size: 413 (body), or 422 naming its max_items."""

    def __init__(self, status: int, answer: str, limit: int | None, body_bytes: int) -> None:
        super().__init__(answer)
        self.status, self.answer, self.limit, self.body_bytes = status, answer, limit, body_bytes


class HttpReward(RewardSource):
    """A node's scoring API: POST {url} {"model"?, "items": [{"prompt", "response"}]} -> {"scores": [...]}.

    A batch is sent in requests of at most `max_items` items and `max_body_bytes` bytes, the server's
    default limits (SERVER_MAX_ITEMS, SERVER_MAX_BODY_BYTES) unless it says lower ones: its OpenAPI
    document (read once, before the first request) gives its max_items, and a request it refuses as too
    large (413, or 422 for too many items) is split, by the limit its answer names or else in halves, and
    sent again; the lowered limits hold for the requests after it. A single item still refused is a
    NodeError that says the request's size, the server's answer and how to raise its limit.
    Blank (empty or whitespace-only) responses are not sent, since the server refuses them (422); what a
    remote reward model would give them cannot be asked, so each gets the lowest score of its batch (the
    worst of what was scored: a policy is never rewarded for saying nothing), or BLANK_FLOOR (0.0) when
    every response of the batch is blank. A reward-model folder scores blank responses itself.
    """

    def __init__(self, url: str, token: str | None = None, model: str | None = None, timeout: float = 60.0,
                 *, max_items: int = SERVER_MAX_ITEMS, max_body_bytes: int = SERVER_MAX_BODY_BYTES) -> None:
        if max_items < 1:
            raise ValueError(f"max_items {max_items}: send at least 1 item per request")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes {max_body_bytes}: allow at least 1 byte per request")
        self.url, self.model, self.timeout = url, model, timeout
        self.max_items, self.max_body_bytes = max_items, max_body_bytes
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.name = url
        self._asked_limits = False

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scored:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses; pass one prompt per "
                             "response")
        sent = [i for i, r in enumerate(responses) if r.strip()]  # the server refuses blank responses
        items = [{"prompt": prompts[i], "response": responses[i]} for i in sent]
        if items and not self._asked_limits:
            self._asked_limits = True
            self._read_advertised_limits()
        scores = self._send(items) if items else []
        out = [min(scores, default=BLANK_FLOOR)] * len(responses)
        for i, s in zip(sent, scores, strict=True):
            out[i] = s
        return Scored(out)

    def _chunks(self, items: list[dict[str, str]]) -> list[list[dict[str, str]]]:
        """`items` in order, in requests of at most max_items items and max_body_bytes (but one item each)."""
        budget = self.max_body_bytes - len(self._body([]))
        chunks: list[list[dict[str, str]]] = []
        size = 0
        for item in items:
            n = _item_bytes(item)
            if not chunks or len(chunks[-1]) >= self.max_items or size + n > budget:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += n
        return chunks

    def _send(self, chunk: list[dict[str, str]]) -> list[float]:
        """The scores of `chunk` (not empty): one request per part that fits the limits, each part cut again
        when it is sent (a refusal lowers the limits for the rest), and a refused part split."""
        parts = self._chunks(chunk)  # the limits may have dropped since it was cut
        if len(parts) > 1:
            return [s for part in parts for s in self._send(part)]
        try:
            return self._post(chunk)
        except _Refused as refused:
            if len(chunk) == 1:
                raise self._too_large(chunk[0], refused) from None
            if refused.status == 413:  # the limit the server names, else half the body it refused
                limit = refused.limit if refused.limit and refused.limit < refused.body_bytes else None
                self.max_body_bytes = min(self.max_body_bytes, limit or refused.body_bytes // 2)
            else:  # 422, naming its max_items
                limit = refused.limit if refused.limit and refused.limit < len(chunk) else None
                self.max_items = min(self.max_items, limit or len(chunk) // 2)
            parts = self._chunks(chunk)
            if len(parts) == 1:  # the limits do not split it: halve it
                parts = [chunk[:len(chunk) // 2], chunk[len(chunk) // 2:]]
        return [s for part in parts for s in self._send(part)]

    def _too_large(self, item: dict[str, str], refused: _Refused) -> NodeError:
        """The error for one item the server refuses: its size, the answer, how to raise the limit."""
        size = refused.body_bytes
        limit = f" (its max_body_bytes is {refused.limit:,})" if refused.limit is not None else ""
        return NodeError(f"the reward server {self.url} refuses even a single item: a request of {size:,} "
                         f"bytes (a prompt of {len(item['prompt']):,} and a response of "
                         f"{len(item['response']):,} characters) was answered {refused.status}{limit}: "
                         f"{refused.answer}; raise max_body_bytes to at least {size:,} in the [server] table "
                         "of that node's node.toml and restart `rewardnode serve`, or generate shorter "
                         "responses")

    def _body(self, items: list[dict[str, str]]) -> bytes:
        """The request body, as sent."""
        body: dict[str, object] = {"items": items}
        if self.model:
            body["model"] = self.model
        return json.dumps(body).encode()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _read_advertised_limits(self) -> None:
        """Lower max_items to what the server's OpenAPI document says /v1/score takes, when it says so."""
        parts = urllib.parse.urlsplit(self.url)
        if not parts.path.endswith(SCORE_PATH):
            return  # not a node's usual path: its limits are learned from its refusals
        path = parts.path.removesuffix(SCORE_PATH) + OPENAPI_PATH
        url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))
        request = urllib.request.Request(url, headers=self._headers(), method="GET")
        try:
            with urllib.request.urlopen(request, timeout=min(self.timeout, 10.0)) as reply:
                schema = json.loads(reply.read())["components"]["schemas"][SCORE_REQUEST_SCHEMA]
            advertised = schema["properties"]["items"]["maxItems"]
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
            return  # no document (another server, a proxy): the first refusal says the limits
        if type(advertised) is int and advertised >= 1:
            self.max_items = min(self.max_items, advertised)

    def _post(self, items: list[dict[str, str]]) -> list[float]:
        """One POST /v1/score of `items`; their scores in order. _Refused when the server finds it too big."""
        data = self._body(items)
        request = urllib.request.Request(self.url, data, self._headers(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                scores = json.loads(reply.read())["scores"]
        except urllib.error.HTTPError as e:
            raw = e.read(64 * 1024)
            answer, limit = _error_answer(raw, KEY_MAX_BODY_BYTES if e.code == 413 else KEY_MAX_ITEMS)
            if e.code == 413 or (e.code == 422 and limit is not None):
                raise _Refused(e.code, answer, limit, len(data)) from None
            raise NodeError(f"the reward server {self.url} answered {e.code}: {raw[:200]!r}; check the URL "
                            f"and the bearer token in ${TOKEN_ENV}") from e
        except (urllib.error.URLError, TimeoutError, KeyError, ValueError) as e:
            raise NodeError(f"scoring at {self.url} failed ({e}); is `rewardnode serve` running there?") from e
        if len(scores) != len(items):
            raise NodeError(f"{self.url} returned {len(scores)} scores for {len(items)} items; check the "
                            "server")
        return [float(s) for s in scores]


def _item_bytes(item: dict[str, str]) -> int:
    """The bytes one item adds to a request body at most (json.dumps, as sent, and the ", " after it)."""
    return len(json.dumps(item).encode()) + 2


def _error_answer(raw: bytes, key: str) -> tuple[str, int | None]:
    """A refusal's message (the error shape's "error", else the raw text) and its limit under `key`."""
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return raw[:200].decode("utf-8", "replace") or "(no message)", None
    limit = answer.get(key)
    message = answer.get("error")
    text = message if isinstance(message, str) else raw[:200].decode("utf-8", "replace")
    return text, limit if type(limit) is int and limit >= 1 else None


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
