"""`rewardnode serve`: one aiohttp app with every HTTP feature of the node.

The scoring API comes from node/http; other subsystems contribute `Feature`s through the
factories named in FEATURE_FACTORIES ("module:function", each called with the open Node and
returning a sequence of node.http.Feature). Long-running companions (the libp2p host) are
started by `rewardnode serve` beside the app.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from node.app import Node
    from node.http import Feature, ServerConfig

FEATURE_FACTORIES: tuple[str, ...] = ("node.labeling:labeling_features",)
"""Feature factories mounted by `rewardnode serve`, in order."""
SCORING_OFF = ("scoring is off: no reward model was registered when this server started; train one with "
               "`rewardnode train` (it registers the model), then restart `rewardnode serve`")
"""What /v1/score, /v1/compare and /v1/models answer (503) on a node without reward models."""


def node_features(node: Node) -> list[Feature]:
    """Every Feature the node's subsystems contribute to the HTTP app."""
    features: list[Feature] = []
    for spec in FEATURE_FACTORIES:
        module_name, _, attr = spec.partition(":")
        factory: Callable[[Node], Sequence[Feature]] = getattr(importlib.import_module(module_name), attr)
        features.extend(factory(node))
    return features


def build_app(node: Node, *, models: Sequence[str] = (), config: ServerConfig | None = None) -> web.Application:
    """The node's HTTP app: scoring with its registered reward models, plus every feature of node_features.

    `models` (ids or unique prefixes) are served, the first as default; none given: every registered
    model, the newest personal one as default (with none registered, the scoring routes answer 503). `config`
    defaults to node.toml's [server] table. Models load on their first request.
    """
    from node.errors import NodeError
    from node.http import ScorerRegistry, ServerConfig, create_app
    from node.http.scoring import scoring_off_feature
    from node.rm.pipeline import model_path, newest_model

    if config is None:
        try:
            config = ServerConfig.from_toml(node.config.table("server"))
        except ValueError as e:
            raise NodeError(f"{node.config.config_path} [server]: {e}") from None
    if models:
        entries = [node.store.get_model(m) for m in models]
        default = entries[0]
    else:
        entries = node.store.list_models()
        default = newest_model(node.store) or newest_model(node.store, None)  # type: ignore[assignment]
    paths = {e.id: model_path(e) for e in entries}
    scorers = ScorerRegistry.from_artifacts(paths, default=default.id) if paths else None
    features = node_features(node)
    if scorers is None:  # the scoring routes say why they are off, not "no route"
        features = [scoring_off_feature(SCORING_OFF), *features]
    try:
        return create_app(config, scorers=scorers, features=features)
    except ValueError as e:  # no API tokens while authentication is required, ...
        raise NodeError(f"{e} (in {node.config.config_path})") from None
