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
    from node.app import Node
    from node.http import Feature

FEATURE_FACTORIES: tuple[str, ...] = ()
"""Feature factories mounted by `rewardnode serve`, in order."""


def node_features(node: Node) -> list[Feature]:
    """Every Feature the node's subsystems contribute to the HTTP app."""
    features: list[Feature] = []
    for spec in FEATURE_FACTORIES:
        module_name, _, attr = spec.partition(":")
        factory: Callable[[Node], Sequence[Feature]] = getattr(importlib.import_module(module_name), attr)
        features.extend(factory(node))
    return features
