"""The exceptions of `federation/`: every message says the cause and the fix."""

from __future__ import annotations


class FederationError(Exception):
    """Base class of federation failures (bad agreement, a round below quorum, a broken chain)."""


class BelowQuorum(FederationError):
    """Fewer valid contributions than the agreement's min_participants arrived in a round."""


class ChainBroken(FederationError):
    """A manifest chain does not verify; the message names the first break."""
