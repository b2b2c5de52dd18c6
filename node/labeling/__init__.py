"""The labeling web app, the ingestion API and the admin dashboard: one HTTP Feature over the store.

`labeling_features(node)` is the factory `rewardnode serve` mounts (node/serve.py); tests and
scripts call `labeling_feature(store)` directly. Pages: /login, /label, /label/{campaign},
/dashboard; API: /v1/comparisons, /v1/rankings, /v1/feedback, /v1/stats (in /openapi.json).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from node.http import Endpoint, Feature
from node.labeling.api import api_endpoints
from node.labeling.auth import (
    SessionAuthenticator,
    StoreBearerAuthenticator,
    install_authenticators,
    login_form,
    login_submit,
    logout,
)
from node.labeling.dashboard import HOME_KEY, dashboard
from node.labeling.pages import campaigns_page, label_page, label_submit
from node.labeling.service import SERVICE_KEY, LabelingService, LabelingSettings, PairScorer
from storage.store import Store

if TYPE_CHECKING:
    from node.app import Node

log = logging.getLogger("rewardnode.labeling")

__all__ = ["LabelingService", "LabelingSettings", "labeling_feature", "labeling_features"]


def _page(method: str, path: str, handler: object, summary: str, operation_id: str) -> Endpoint:
    # Pages check their role themselves (page_principal) so a browser without a session is sent to /login.
    return Endpoint(method=method, path=path, handler=handler, role=None, summary=summary,  # type: ignore[arg-type]
                    operation_id=operation_id, in_openapi=False, tags=("pages",))


def labeling_feature(store: Store, *, settings: LabelingSettings | None = None,
                     scorer_loader: Callable[[], PairScorer] | None = None, home: Path | None = None) -> Feature:
    """The Feature: pages, ingestion API, dashboard, and the store-backed authenticators.

    `home` is the node home; the dashboard lists the peers in its peers.json (none without it)."""
    service = LabelingService(store, settings=settings, scorer_loader=scorer_loader)
    authenticators = (StoreBearerAuthenticator(service), SessionAuthenticator(service))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        service.close()

    def setup(app: web.Application) -> None:
        app[SERVICE_KEY] = service
        if home is not None:
            app[HOME_KEY] = home
        install_authenticators(app, authenticators)
        app.cleanup_ctx.append(lifecycle)

    endpoints = (
        _page("GET", "/login", login_form, "Sign-in page (invite links land here)", "loginPage"),
        _page("POST", "/login", login_submit, "Trade an invite or token for a session", "login"),
        _page("POST", "/logout", logout, "End the browser session", "logout"),
        _page("GET", "/label", campaigns_page, "Campaigns to label", "labelCampaigns"),
        _page("GET", "/label/{campaign}", label_page, "The next pair to label", "labelPage"),
        _page("POST", "/label/{campaign}", label_submit, "Submit one label", "labelSubmit"),
        _page("GET", "/dashboard", dashboard, "Admin dashboard", "dashboard"),
        *api_endpoints(),
    )
    return Feature("labeling", endpoints, setup=setup, authenticators=authenticators)


def _latest_model_loader(node: Node) -> Callable[[], PairScorer] | None:
    models = [e for e in node.store.list_models() if e.kind in ("personal", "federated")]
    if not models:
        return None
    path = models[-1].path

    def load() -> PairScorer:
        from node.rm.artifact import RewardScorer

        return RewardScorer(path)

    return load


def labeling_features(node: Node) -> list[Feature]:
    """FEATURE_FACTORIES entry: the labeling feature over the node's store; the newest registered reward
    model (if any) picks uncertain pairs; node.toml's `[server] secure_cookies` marks its cookies Secure."""
    settings = LabelingSettings(secure_cookies=node.config.secure_cookies)
    return [labeling_feature(node.store, settings=settings, scorer_loader=_latest_model_loader(node),
                             home=node.config.home)]
