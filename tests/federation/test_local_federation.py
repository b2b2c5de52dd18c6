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
from node.errors import NodeError
from node.federated import run_local, verify_model
from tests.federation.conftest import cli, secret_pairs

pytestmark = pytest.mark.e2e  # the end-to-end fault suite: make e2e


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


def test_a_member_whose_training_fails_is_named_with_its_error(make_federation, monkeypatch) -> None:
    coord, homes = make_federation(2, pairs=8, extra=("--round-timeout", "20"))
    from node.federated import NodeParticipant

    def broken(self, global_arrays, round):
        raise ValueError("the local store is unreadable")

    monkeypatch.setattr(NodeParticipant, "train", broken)
    with pytest.raises(BelowQuorum) as caught:
        run_local(coord, homes, "fed")
    message = str(caught.value)
    assert "member-error" in message and "the local store is unreadable" in message, message
    assert "fix what the failing members report" in message and "back online" not in message


class CoordinatorCrash(Exception):
    pass


def _crash_before(round_: int):
    def hook(grid, rnd: int) -> None:
        if rnd == round_:
            raise CoordinatorCrash(f"coordinator died before round {rnd}")
    return hook


def test_a_crashed_coordinator_resumes_after_its_last_saved_round(make_federation, capsys) -> None:
    coord, homes = make_federation(3, pairs=8, extra=("--rounds", "3"))
    with pytest.raises(CoordinatorCrash):
        run_local(coord, homes, "fed", before_round=_crash_before(3))
    rounds = coord / "federation" / "fed" / "rounds"
    saved = sorted(p.name for p in rounds.iterdir())
    assert saved == ["global-0001.arrays", "global-0002.arrays", "round-0001.manifest.json", "round-0002.manifest.json"]
    capsys.readouterr()

    # A plain run would start over and overwrite them: refused, nothing touched.
    member_args = [a for h in homes for a in ("--member-home", str(h))]
    assert cli("--home", str(coord), "federation", "run", "fed", "--engine", "local", *member_args) != 0
    err = capsys.readouterr().err
    assert "2 finished round(s)" in err and "--resume" in err and "--restart" in err
    assert sorted(p.name for p in rounds.iterdir()) == saved
    before = {name: (rounds / name).read_bytes() for name in saved}

    assert cli("--home", str(coord), "federation", "run", "fed", "--engine", "local", "--resume", *member_args) == 0
    assert all((rounds / name).read_bytes() == data for name, data in before.items())  # rounds 1-2 not re-run
    out = capsys.readouterr().out
    assert "resuming federation 'fed' after round 2 of 3" in out and "3 round(s)" in out
    from federation.codec import arrays_sha256, decode_arrays
    from federation.manifest import verify_chain
    from node.federated import agreement_for
    chain = [(rounds / f"round-{i:04d}.manifest.json").read_text().strip() for i in (1, 2, 3)]
    third = verify_chain(chain, agreement_for(coord, "fed"))[2]  # round 3 continues from the saved round-2 model
    assert third.global_before_sha256 == arrays_sha256(decode_arrays((rounds / "global-0002.arrays").read_bytes()))
    for home in homes:  # every member holds the 3-round model, and its chain verifies
        with Node.open(home) as node:
            [model] = [m for m in node.store.list_models() if m.kind == "federated"]
            assert len(model.provenance["manifests"]) == 3
        assert cli("--home", str(home), "verify", model.id) == 0
    capsys.readouterr()
    assert cli("--home", str(coord), "federation", "run", "fed", "--engine", "local", *member_args) != 0
    assert "all 3 rounds are done" in capsys.readouterr().err


def test_resume_refuses_tampered_rounds_and_restart_keeps_them_aside(make_federation, capsys) -> None:
    coord, homes = make_federation(2, pairs=8)
    with pytest.raises(CoordinatorCrash):
        run_local(coord, homes, "fed", before_round=_crash_before(2))
    rounds = coord / "federation" / "fed" / "rounds"
    arrays = rounds / "global-0001.arrays"
    original = arrays.read_bytes()
    from federation.codec import decode_arrays, encode_arrays
    changed = {n: a + 0.5 for n, a in decode_arrays(original).items()}
    arrays.write_bytes(encode_arrays(changed))  # the saved global model was altered after round 1
    with pytest.raises(NodeError, match="cannot resume federation 'fed'.*last manifest says"):
        run_local(coord, homes, "fed", resume=True)
    member_args = [a for h in homes for a in ("--member-home", str(h))]
    capsys.readouterr()
    for engine in ("local", "deployment"):  # the CLI checks before any server starts
        assert cli("--home", str(coord), "federation", "run", "fed", "--engine", engine, "--resume", *member_args) != 0
        out, err = capsys.readouterr()
        assert "cannot resume federation 'fed'" in err and "resuming" not in out  # refused, never announced
    arrays.unlink()
    with pytest.raises(NodeError, match="global-0001.arrays is missing"):
        run_local(coord, homes, "fed", resume=True)

    assert cli("--home", str(coord), "federation", "run", "fed", "--engine", "local", "--restart", *member_args) == 0
    kept = list((coord / "federation" / "fed").glob("rounds-previous-*"))
    assert len(kept) == 1 and (kept[0] / "round-0001.manifest.json").is_file()
    assert sorted(p.name for p in rounds.glob("round-*.manifest.json")) == ["round-0001.manifest.json",
                                                                            "round-0002.manifest.json"]


def test_a_member_splitting_batches_over_threads_sends_the_same_update(make_federation) -> None:
    from node.federated import NodeParticipant, agreement_for, initial_arrays

    # adapters on the attention only: on the pooler and feed-forward layers (the defaults' all-linear) some
    # gradients are ~0, where Adam turns rounding into differences of 1% of a step
    _, [home] = make_federation(1, pairs=24, extra=("--lora-targets", "attention", "--no-mean-pool-init"))
    agreement = agreement_for(home, "fed")
    with Node.open(home) as node:
        one, two = (NodeParticipant(node, agreement, cpu_workers=n) for n in (1, 2))
    assert (one.splitter.workers, two.splitter.workers) == (1, 2)
    start = initial_arrays(agreement)
    (a, n_a, m_a), (b, n_b, m_b) = one.train(start, 1), two.train(start, 1)
    assert n_a == n_b == 24 and m_a["train-loss"] == pytest.approx(m_b["train-loss"], rel=1e-5)
    assert a.keys() == b.keys() == start.keys()
    assert any(not np.array_equal(a[k], start[k]) for k in a)  # training moved something
    # The Bradley-Terry loss depends on r_c - r_r only: the head's bias has a zero gradient up to rounding,
    # which Adam scales up to the learning rate either way, so it is left out of the comparison.
    for k in (k for k in a if not k.endswith("classifier.modules_to_save.default.bias")):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)  # Adam at lr 0.01 magnifies rounding
