"""A poisoning member end to end: it signs a scaled-up update validly; a robust rule keeps the model.

Four members run the real ServerApp/ClientApps in process (node.federated.run_local). One member,
org3, is malicious: it multiplies its update (its arrays minus the global ones) by 100 and signs the
result with its own key, so every signature and hash checks out and only the aggregation rule can
protect the federation. The outcome asserted: with the coordinate-wise median the final model stays
next to the clean run's; with FedAvg it is dragged far away.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from federation.codec import Arrays, arrays_sha256
from node.federated import NodeParticipant, run_local
from tests.federation.conftest import build_federation

pytestmark = pytest.mark.e2e  # the end-to-end fault suite: make e2e

N_MEMBERS = 4
SCALE = 100.0


def _poison(monkeypatch: pytest.MonkeyPatch, factor: float) -> None:
    """org3 sends global + factor x (its honest update), signed with its own key."""
    honest_train = NodeParticipant.train

    def train(self: NodeParticipant, global_arrays: Arrays, round: int) -> tuple[Arrays, int, dict[str, float]]:
        arrays, n, metrics = honest_train(self, global_arrays, round)
        if self.node is not None and self.node.config.name == "org3":
            arrays = {k: (global_arrays[k] + factor * (v - global_arrays[k])).astype(np.float32)
                      for k, v in arrays.items()}
        return arrays, n, metrics

    monkeypatch.setattr(NodeParticipant, "train", train)


def _run(root: Path, bert_dir: Path, strategy: str, poisoned: bool, monkeypatch: pytest.MonkeyPatch) -> Arrays:
    if poisoned:
        _poison(monkeypatch, SCALE)
    coord, homes = build_federation(root, bert_dir, N_MEMBERS, extra=("--strategy", strategy))
    outcome = run_local(coord, homes, "fed")
    monkeypatch.undo()
    # The attack is invisible to verification: every update was signed by its sender and accepted.
    assert all(len(r.accepted) == N_MEMBERS and not r.rejected for r in outcome.rounds)
    return outcome.final


def _distance(a: Arrays, b: Arrays) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


def test_median_resists_a_scaled_update_that_fedavg_takes(tmp_path: Path, bert_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    final = {(s, p): _run(tmp_path / f"{s}-{p}", bert_dir, s, p, monkeypatch)
             for s in ("median", "fedavg") for p in (False, True)}
    median_shift = _distance(final["median", True], final["median", False])
    fedavg_shift = _distance(final["fedavg", True], final["fedavg", False])
    honest_spread = _distance(final["median", False], final["fedavg", False])  # what rule choice alone moves
    print(f"median shift {median_shift:.4f}, fedavg shift {fedavg_shift:.4f}, honest spread {honest_spread:.4f}")
    assert fedavg_shift > 10 * max(median_shift, honest_spread), (median_shift, fedavg_shift, honest_spread)
    # The attacker moves the median model less than merely choosing another rule would, and 100x less than FedAvg.
    assert median_shift < honest_spread and median_shift < 0.01 * fedavg_shift, (median_shift, honest_spread)


def test_the_outlier_screen_leaves_out_a_negated_update_every_round(tmp_path: Path, bert_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`federation create --screen-outliers`: org3's update, signed validly but negated and scaled x10, is
    left out of every round and named in every manifest; FedAvg runs over the three honest members."""
    from federation.agreement import load_agreement
    from federation.contribution import OUTLIER
    from federation.manifest import verify_chain
    from protocol.identity import Identity

    _poison(monkeypatch, -10.0)
    coord, homes = build_federation(tmp_path, bert_dir, N_MEMBERS, extra=("--screen-outliers",))
    outcome = run_local(coord, homes, "fed")
    attacker = Identity.load(homes[3] / "identity.key").public_key_hex  # org3
    for r in outcome.rounds:
        assert [(x.sender, x.reason) for x in r.rejected] == [(attacker, OUTLIER)], r.rejected
        assert len(r.accepted) == N_MEMBERS - 1 and r.valid == N_MEMBERS
        assert "cosine with the median of the others -" in r.rejected[0].detail
    manifests = verify_chain(outcome.chain, load_agreement(coord / "federation" / "fed" / "agreement.json"),
                             final_sha256=arrays_sha256(outcome.final))
    rejections = [[(x["sender"], x["reason"]) for x in m.rejections] for m in manifests]
    assert rejections == [[(attacker, OUTLIER)]] * len(outcome.rounds)
    assert all(attacker not in {x["sender"] for x in m.contributions} for m in manifests)
