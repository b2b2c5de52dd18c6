"""Poisoning members for the federation benchmarks: an insider that signs a poisoned update validly.

Used by scripts/bench_federation.py (synthetic pairs, every rule) and scripts/bench_federation_orgs.py
(the four organizations, one of them attacking). The attacker's contributions pass every signature,
hash and shape check: only the aggregation rule can protect the federation.

- label-flip: trains on its pairs with chosen and rejected swapped;
- scale100:   sends 100 x its honest update;
- sign-flip:  sends -10 x its honest update.
"""

from __future__ import annotations

from federation.agreement import Agreement
from federation.codec import Arrays
from node.federated import NodeParticipant
from node.rm.data import PreferencePair, tokenize_pairs

ATTACKS = ("none", "label-flip", "scale100", "sign-flip")
FACTORS = {"scale100": 100.0, "sign-flip": -10.0}
SCREENED = "+screen"  # benchmark rule names: RULE+screen is RULE with the agreement's outlier screen on
"""What the update (local - global) is multiplied by before it is sent."""


class Attacker:
    """Wraps an honest participant and poisons what it sends (the signature is still valid: an insider)."""

    def __init__(self, honest: NodeParticipant, attack: str) -> None:
        if attack not in ATTACKS[1:]:
            raise ValueError(f"attack {attack!r} is unknown; use one of {', '.join(ATTACKS[1:])}")
        self.honest, self.attack = honest, attack
        self.identity = honest.identity
        self.flipped: list[PreferencePair] | None = None

    @property
    def agreement(self) -> Agreement:
        return self.honest.agreement

    def train(self, global_arrays: Arrays, round: int) -> tuple[Arrays, int, dict[str, float]]:
        if self.attack == "label-flip":
            saved = self.honest.data
            if self.flipped is None:
                self.flipped = [PreferencePair(p.prompt, p.rejected, p.chosen) for p in self.honest.pairs]
            self.honest.data = tokenize_pairs(self.flipped, self.honest.encoder)
            try:
                return self.honest.train(global_arrays, round)
            finally:
                self.honest.data = saved
        local, n, metrics = self.honest.train(global_arrays, round)
        factor = FACTORS[self.attack]
        return {k: global_arrays[k] + factor * (local[k] - global_arrays[k]) for k in local}, n, metrics

    def finalize(self, global_arrays: Arrays, chain: list[str]) -> str:
        return ""


def participant(honest: NodeParticipant, attack: str) -> NodeParticipant | Attacker:
    """`honest` itself for attack "none", else an Attacker wrapping it."""
    return honest if attack == "none" else Attacker(honest, attack)
