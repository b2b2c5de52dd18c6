"""The labeling feature's shared state: the store (called from one worker thread), sessions, and the
reward-model ranking of uncertain pairs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from aiohttp import web

from node.http import ServiceUnavailable
from node.importing import SOURCE_NAME_MAX, source_name_problem
from storage.store import Store

log = logging.getLogger("rewardnode.labeling")
T = TypeVar("T")

SESSION_COOKIE = "rn_session"
LOGIN_CSRF_COOKIE = "rn_login_csrf"
SESSION_DAYS = 30
UNCERTAIN_BAND = 0.15
"""A pair is "uncertain" when the reward model's P(lo beats hi) is within 0.5 +- this."""
UNCERTAIN_MAX_PAIRS = 512
"""Pairs of a campaign the reward model scores (the first ones by id)."""


def new_secret() -> str:
    """A fresh 256-bit URL-safe secret (api, invite and session tokens)."""
    return secrets.token_urlsafe(32)


def sha256_hex(secret: str) -> str:
    """What the store keeps instead of a secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def csrf_token(session_secret: str) -> str:
    """The CSRF token of a browser session: derived from the session secret, so nothing more is stored."""
    return hmac.new(session_secret.encode("utf-8"), b"rewardnode-csrf", hashlib.sha256).hexdigest()[:40]


def csrf_ok(session_secret: str, sent: str) -> bool:
    """Constant-time check of a form's CSRF token."""
    return hmac.compare_digest(csrf_token(session_secret).encode(), sent.encode("utf-8", "replace"))


class PairScorer(Protocol):
    """A reward model: (prompt, response) -> reward (node.rm.artifact.RewardScorer is one)."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]: ...


@dataclass(frozen=True)
class LabelingSettings:
    """Settings of the labeling app."""

    source_prefix: str = "labeling:"
    """Labels from the labeling page are stored under source "<prefix><campaign>"."""
    default_api_source: str = "api"
    """Source of ingestion-API records that name none."""
    secure_cookies: bool = False
    """Mark cookies Secure (serve over HTTPS, e.g. behind a TLS proxy); node.toml `[server] secure_cookies`
    turns it on for `rewardnode serve`."""


def campaign_name_max(prefix: str = LabelingSettings.source_prefix) -> int:
    """The longest campaign name: its labels' source `prefix + name` is at most SOURCE_NAME_MAX characters."""
    return SOURCE_NAME_MAX - len(prefix)


def campaign_name_problem(name: str, prefix: str = LabelingSettings.source_prefix) -> str | None:
    """What is wrong with `name` as a campaign name (None when nothing): its labels are stored under the
    source `prefix + name`, and its page is /label/NAME, so "." and ".." (a browser makes /label/..
    into /) and a "/" cannot be in it.

    >>> campaign_name_problem("..")
    "'..' is a path step, not a name: a browser turns the page /label/.. into /"
    """
    if name in (".", ".."):
        return f"{name!r} is a path step, not a name: a browser turns the page /label/{name} into " + (
            "/label/" if name == "." else "/")
    if "/" in name:
        return f"{name[:60]!r} holds a '/', which cannot be in the campaign's page address /label/NAME"
    if len(name) > campaign_name_max(prefix):
        return (f"it is {len(name)} characters long, more than {campaign_name_max(prefix)} (its labels are "
                f"stored under the source {prefix!r} + the name, at most {SOURCE_NAME_MAX} characters)")
    return source_name_problem(name)


STORE_CALL_TIMEOUT_S = 60.0
"""The longest a request waits for its store call (LabelingService.call) before answering 503."""


class LabelingService:
    """The store behind one worker thread (the event loop never blocks on SQL), plus the optional
    reward model that ranks a campaign's pairs by uncertainty."""

    def __init__(self, store: Store, *, settings: LabelingSettings | None = None,
                 scorer_loader: Callable[[], PairScorer] | None = None) -> None:
        self.store = store
        self.settings = settings or LabelingSettings()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardnode-labeling")
        self._scorer_loader = scorer_loader
        self._scorer: PairScorer | None = None
        self._uncertain: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking store call on the worker thread; 503 when it does not finish within
        STORE_CALL_TIMEOUT_S (a database server that hangs must not hang every request with it)."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))
        try:
            return await asyncio.wait_for(future, STORE_CALL_TIMEOUT_S)
        except TimeoutError:
            raise ServiceUnavailable(f"the store did not answer within {STORE_CALL_TIMEOUT_S:g} s (the database "
                                     "server is unreachable or overloaded); retry later") from None

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def uncertain_pairs(self, campaign: str) -> list[int]:
        """Pair ids of the campaign the reward model is least sure about, least sure first (cached; blocking)."""
        if self._scorer_loader is None:
            return []
        with self._lock:
            if campaign in self._uncertain:
                return self._uncertain[campaign]
            ranked: list[int] = []
            try:
                if self._scorer is None:
                    self._scorer = self._scorer_loader()
                pairs = self.store.campaign_pair_texts(campaign, limit=UNCERTAIN_MAX_PAIRS)
                prompts = [p.prompt for p in pairs]
                lo = self._scorer.score(prompts, [p.response_lo for p in pairs])
                hi = self._scorer.score(prompts, [p.response_hi for p in pairs])
                margins = [(abs(1.0 / (1.0 + math.exp(min(50.0, max(-50.0, b - a)))) - 0.5), p.pair_id)
                           for p, a, b in zip(pairs, lo, hi, strict=True)]
                ranked = [pid for m, pid in sorted(margins) if m <= UNCERTAIN_BAND]
            except Exception:  # noqa: BLE001 - a broken model must not stop labeling: fall back to the queue
                log.exception("scoring campaign %r pairs for uncertainty failed; labeling goes on without it",
                              campaign)
                self._scorer_loader = None
            self._uncertain[campaign] = ranked
            return ranked

    def set_session_cookie(self, response: web.StreamResponse, secret: str) -> None:
        response.set_cookie(SESSION_COOKIE, secret, max_age=SESSION_DAYS * 86400, path="/", httponly=True,
                            samesite="Lax", secure=self.settings.secure_cookies)


SERVICE_KEY = web.AppKey("rewardnode.labeling.service", LabelingService)
