"""Three nodes on 127.0.0.1: org-a creates a federation and announces it over gossip only; org-b and
org-c learn of it through their `node/mesh.py` hook (bootstrapped through org-a), fetch and verify the
signed agreement, join, and take part in a round; the federated model lands in their registries.
A coordinator they do not trust and an agreement that does not list them are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.app import Node
from node.federated import federation_dir, read_join, run_local, verify_model
from node.mesh import MeshAdmission, MeshMember, announce_federation
from node.p2p import NodeP2P, P2PConfig
from protocol.identity import Identity
from tests.federation.conftest import cli, secret_pairs

pytest.importorskip("libp2p")
pytestmark = pytest.mark.timeout(300)
LOCAL = P2PConfig(listen=("/ip4/127.0.0.1/tcp/0",), dht=False)
WAIT_S = 60.0


def _home(tmp_path: Path, name: str, seed: int) -> tuple[Path, Identity]:
    home = tmp_path / name
    assert cli("--home", str(home), "init", "--name", name) == 0
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in secret_pairs(12, seed=seed, tag=f"{name}x")))
    assert cli("--home", str(home), "import", str(data), "--source", name) == 0
    return home, Identity.load(home / "identity.key")


def _create(home: Path, name: str, bert_dir: Path, keys: list[str]) -> None:
    args = ["--home", str(home), "federation", "create", name, "--base-model", str(bert_dir), "--rounds", "1",
            "--max-length", "32", "--learning-rate", "0.01", "--round-timeout", "60"]
    for k in keys:
        args += ["--member", k]
    assert cli(*args) == 0


def test_members_join_a_federation_heard_only_over_gossip(tmp_path: Path, bert_dir: Path) -> None:
    (a_home, a_id), (b_home, b_id), (c_home, c_id) = (_home(tmp_path, n, i) for i, n in
                                                      enumerate(("org-a", "org-b", "org-c")))
    _create(a_home, "fed", bert_dir, [a_id.public_key_hex, b_id.public_key_hex, c_id.public_key_hex])
    _create(a_home, "fed-bc", bert_dir, [a_id.public_key_hex, b_id.public_key_hex])  # org-c is not listed
    for home in (b_home, c_home):
        assert not (federation_dir(home, "fed") / "agreement.json").exists()

    with NodeP2P(a_home, "org-a", a_id, LOCAL) as a:
        boot = [a.host.addrs[0]]
        with NodeP2P(b_home, "org-b", b_id, LOCAL, extra_bootstrap=boot) as b, \
                NodeP2P(c_home, "org-c", c_id, LOCAL, extra_bootstrap=boot) as c:
            members = [MeshMember(p, trusted_coordinators={a_id.public_key_hex}).install() for p in (b, c)]
            # A stranger's node on the same network announces its own federation: nobody follows it.
            s_home = tmp_path / "stranger"
            assert cli("--home", str(s_home), "init", "--name", "stranger") == 0
            s_id = Identity.load(s_home / "identity.key")
            _create(s_home, "fed-s", bert_dir, [b_id.public_key_hex, c_id.public_key_hex])
            with NodeP2P(s_home, "stranger", s_id, LOCAL, extra_bootstrap=boot) as s:
                deadline_peers(a, 3)
                deadline_peers(s, 1)
                admission = MeshAdmission(a, "fed").install()
                fed_s = announce_federation(s, "fed-s", "127.0.0.1:9999")
                fed = announce_federation(a, "fed", "127.0.0.1:9093")
                fed_bc = announce_federation(a, "fed-bc", "127.0.0.1:9094")
                joined = [m.wait_joined(fed.federation_id, WAIT_S) for m in members]
                assert members[0].wait_joined(fed_bc.federation_id, WAIT_S).name == "fed-bc"
                for m in members:
                    wait_refused(m, fed_s.federation_id, "not one this node trusts")
                wait_refused(members[1], fed_bc.federation_id, "allowlist")
                # Both members offered their signed SuperNode key records and org-a admitted them for "fed"
                # (org-b's record for fed-bc names another federation: not admitted for this one).
                assert admission.wait_admitted(2, WAIT_S) == {b_id.public_key_hex, c_id.public_key_hex}

    assert [j.name for j in joined] == ["fed", "fed"]
    for home in (b_home, c_home):
        join = read_join(home, "fed")
        assert join["coordinator"] == "127.0.0.1:9093" and join["learned_via"] == "gossip"
        assert (federation_dir(home, "fed") / "agreement.json").read_bytes() == \
            (federation_dir(a_home, "fed") / "agreement.json").read_bytes()
        assert (federation_dir(home, "fed") / "ca.pem").is_file()
        assert (federation_dir(a_home, "fed") / "supernodes" / f"{Identity.load(home / 'identity.key').public_key_hex}.json"
                ).read_bytes() == (federation_dir(home, "fed") / "supernode-key.json").read_bytes()
    assert not (federation_dir(c_home, "fed-bc") / "agreement.json").exists()
    assert not (federation_dir(b_home, "fed-s") / "agreement.json").exists()

    # The round: org-a coordinates and takes part; b and c train on their own homes.
    outcome = run_local(a_home, [a_home, b_home, c_home], "fed")
    assert len(outcome.rounds) == 1 and len(outcome.rounds[0].accepted) == 3
    ids = set()
    for home in (a_home, b_home, c_home):
        with Node.open(home) as node:
            [entry] = [m for m in node.store.list_models() if m.kind == "federated"]
            result = verify_model(node, entry.id)
            assert result["rounds"] == 1 and len(result["contributors"]) == 3
            ids.add(entry.sha256)
    assert len(ids) == 1


def deadline_peers(node: NodeP2P, n: int) -> None:
    from tests.protocol.p2p.conftest import wait_for

    wait_for(lambda: len(node.gossip.topic_peers("rewardnode/federations/v1")) >= n, 15, "peers on the topic")
    wait_for(lambda: len(node.gossip.topic_peers("rewardnode/models/v1")) >= n, 15, "peers on the topic")


def wait_refused(member: MeshMember, federation_id: str, reason: str) -> None:
    from tests.protocol.p2p.conftest import wait_for

    wait_for(lambda: federation_id in member.refused and federation_id not in member._busy, 15, "a refusal")
    assert reason in member.refused[federation_id]
    assert federation_id not in member.joined
