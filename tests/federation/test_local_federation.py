"""The real ServerApp loop and ClientApps on an in-process Flower Grid: 3 nodes, tiny BERT, 2 rounds.

This is the same federation/apps.py code the deployment engine runs, minus the SuperLink's gRPC hop.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from federation.errors import BelowQuorum
from node.app import Node
from node.federated import run_local, verify_model
from tests.federation.conftest import cli, secret_pairs


def _payload_bytes(message) -> bytes:  # every byte a ClientApp reply carries
    chunks: list[bytes] = []
    for record in message.content.values():
        chunks.append(record.deflate())
        for value in getattr(record, "values", lambda: [])():
            data = getattr(value, "data", None)
            chunks.append(data if isinstance(data, bytes) else str(value).encode())
    return b"".join(chunks)


def test_federated_model_lands_in_every_registry_with_a_verifiable_chain(make_federation, capsys) -> None:
    coord, homes = make_federation(3)
    sent: list[tuple[int, bytes]] = []
    outcome = run_local(coord, homes, "fed", on_reply=lambda node, msg: sent.append((node, _payload_bytes(msg))))
    assert len(outcome.rounds) == 2 and len(outcome.chain) == 2
    assert all(len(r.accepted) == 3 and not r.rejected for r in outcome.rounds)
    assert len(set(outcome.registered.values())) == 1 and len(outcome.registered) == 3
    model_id = next(iter(outcome.registered.values()))
    for home in homes:
        with Node.open(home) as node:
            [entry] = [m for m in node.store.list_models() if m.kind == "federated"]
            assert entry.id == model_id and len(entry.provenance["manifests"]) == 2
            result = verify_model(node, model_id)
            assert result["rounds"] == 2 and len(result["contributors"]) == 3
    # Ensemble: the same model twice never disagrees; the untrained start vs the federated model does.
    from node.federated import EnsembleScorer, agreement_for, build_model, initial_arrays, load_shared
    from node.rm.artifact import save_reward_model

    fed_path = outcome_path(homes[0], model_id)
    agreement = agreement_for(coord, "fed")
    start, tok = build_model(agreement)
    load_shared(start, initial_arrays(agreement))
    personal = save_reward_model(start, tok, homes[0] / "personal", {"scoring": {"max_length": 32}}) and homes[0] / "personal"
    prompts, chosen = ["tag0x secret0 w1 w2", "w3 w4"], ["w1 excellent w2", "w5 wonderful"]
    same = EnsembleScorer(fed_path, fed_path).score(prompts, chosen)
    assert all(s.disagreement < 1e-6 and s.personal == s.federated for s in same)
    mixed = EnsembleScorer(personal, fed_path, personal_weight=0.25).score(prompts, chosen)
    assert len(mixed) == 2 and all(np.isfinite(s.reward) for s in mixed)

    # CLI: verify, then tamper with the chain in the registry's copy -> non-zero exit naming the break.
    capsys.readouterr()
    assert cli("--home", str(homes[0]), "verify", model_id) == 0
    assert "verifies" in capsys.readouterr().out
    assert cli("--home", str(homes[0]), "federation", "status", "fed", "--json") == 0
    assert json.loads(capsys.readouterr().out)["models"] == [model_id]
    arrays = Path(outcome_path(homes[0], model_id)) / "shared.arrays"
    data = bytearray(arrays.read_bytes())
    data[-1] ^= 1
    arrays.write_bytes(bytes(data))
    assert cli("--home", str(homes[0]), "verify", model_id) == 1
    assert "shared.arrays" in capsys.readouterr().err

    # Privacy: no prompt or response text of any node's store is in any reply payload.
    assert len(sent) == 3 * 2 + 3  # 2 training rounds + finalize, 3 nodes
    for i, _home in enumerate(homes):
        texts = [t for p in secret_pairs(16, seed=i, tag=f"tag{i}x") for t in p.values()]
        needles = {f"tag{i}x".encode(), *(t.encode() for t in texts)}
        for _node, blob in sent:
            assert not any(n in blob for n in needles)
    assert any(b"rewardnode/federation/contribution" in blob or b"envelope" in blob for _, blob in sent)


def outcome_path(home: Path, model_id: str) -> str:
    with Node.open(home) as node:
        return node.store.get_model(model_id).path


def test_a_killed_member_is_dropped_and_the_round_completes(make_federation) -> None:
    coord, homes = make_federation(3, pairs=8, extra=("--min-participants", "2", "--round-timeout", "20"))

    def kill_in_round_2(grid, rnd: int) -> None:
        if rnd == 2:
            grid.kill(3)

    outcome = run_local(coord, homes, "fed", before_round=kill_in_round_2)
    assert [len(r.accepted) for r in outcome.rounds] == [3, 2]
    assert len(outcome.registered) == 2


def test_below_min_participants_aborts_cleanly(make_federation) -> None:
    coord, homes = make_federation(2, pairs=8, extra=("--round-timeout", "20"))

    def kill_in_round_2(grid, rnd: int) -> None:
        if rnd == 2:
            grid.kill(2)

    with pytest.raises(BelowQuorum, match="fewer than min_participants = 2"):
        run_local(coord, homes, "fed", before_round=kill_in_round_2)
    rounds = sorted((coord / "federation" / "fed" / "rounds").glob("round-*.manifest.json"))
    assert [p.name for p in rounds] == ["round-0001.manifest.json"]  # round 1 kept, round 2 left no trace
    with Node.open(homes[0]) as node:
        assert not [m for m in node.store.list_models() if m.kind == "federated"]
