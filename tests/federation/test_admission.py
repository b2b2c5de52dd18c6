"""SuperNode admission: a member's P-384 SuperNode key is admitted only through a record signed by a member
of the agreement, for this federation; the CLI keeps nothing it refused."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from federation.admission import (
    SUPERNODE_KEY_TYPE,
    ensure_supernode_key,
    sign_supernode_key,
    verify_supernode_key,
)
from federation.agreement import Agreement, load_agreement
from federation.errors import FederationError
from protocol.canonical import canonical_json
from protocol.envelope import sign_envelope
from protocol.identity import Identity
from tests.federation.conftest import cli


@pytest.fixture()
def parties() -> tuple[Agreement, Identity, Identity]:
    coordinator, member, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    agreement = Agreement(name="fed", coordinator=coordinator.public_key_hex, members=(member.public_key_hex,),
                          base_model="minilm", base_model_sha256="0" * 64, min_participants=1)
    return agreement, member, stranger


def test_key_is_made_once_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "fed" / "supernode.key"
    public = ensure_supernode_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert public.startswith(b"ecdsa-sha2-nistp384 ")
    assert ensure_supernode_key(path) == public  # loaded, not replaced


def test_member_record_verifies(tmp_path: Path, parties) -> None:
    agreement, member, _ = parties
    public = ensure_supernode_key(tmp_path / "k")
    key = verify_supernode_key(sign_supernode_key(member, agreement.federation_id, public).to_bytes(), agreement)
    assert (key.member, key.federation_id, key.public_key_ssh) == (member.public_key_hex, agreement.federation_id,
                                                                    public)


def test_refusals_name_the_cause(tmp_path: Path, parties) -> None:
    agreement, member, stranger = parties
    public = ensure_supernode_key(tmp_path / "k")
    other = ensure_supernode_key(tmp_path / "other")
    with pytest.raises(FederationError, match="not in this node's allowlist"):
        verify_supernode_key(sign_supernode_key(stranger, agreement.federation_id, public).to_bytes(), agreement)
    with pytest.raises(FederationError, match="another version of the agreement"):
        verify_supernode_key(sign_supernode_key(member, "f" * 64, public).to_bytes(), agreement)
    # Swap the key inside a genuine record: the payload no longer matches the signed hash.
    env = sign_supernode_key(member, agreement.federation_id, public)
    forged = dataclasses.replace(env, payload=env.payload.replace(public, other))
    with pytest.raises(FederationError, match="altered"):
        verify_supernode_key(forged.to_bytes(), agreement)
    # A record of another type (e.g. a contribution re-sent as a key record) is refused.
    payload = canonical_json({"federation_id": agreement.federation_id, "supernode_public_key": public.decode()})
    with pytest.raises(FederationError, match="was expected"):
        verify_supernode_key(sign_envelope(member, "rewardnode/other", payload).to_bytes(), agreement)
    assert SUPERNODE_KEY_TYPE != "rewardnode/other"


def test_only_nist_curve_keys(parties) -> None:
    agreement, member, _ = parties
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                          serialization.PublicFormat.OpenSSH)
    with pytest.raises(FederationError, match="NIST"):
        sign_supernode_key(member, agreement.federation_id, ed)
    payload = canonical_json({"federation_id": agreement.federation_id, "supernode_public_key": ed.decode()})
    with pytest.raises(FederationError, match="NIST"):
        verify_supernode_key(sign_envelope(member, SUPERNODE_KEY_TYPE, payload).to_bytes(), agreement)
    with pytest.raises(FederationError, match="not an OpenSSH public key"):
        sign_supernode_key(member, agreement.federation_id, b"not a key")


def test_cli_join_writes_a_record_the_coordinator_admits(make_federation, tmp_path: Path) -> None:
    coord, homes = make_federation(2, pairs=4)
    admitted = coord / "federation" / "fed" / "supernodes"
    records = [h / "federation" / "fed" / "supernode-key.json" for h in homes]
    assert all(r.is_file() for r in records)
    assert (homes[0] / "federation" / "fed" / "supernode.key").is_file()

    # A stranger's node joins nothing, but signs a record for this federation: refused, nothing kept.
    stranger = tmp_path / "stranger"
    assert cli("--home", str(stranger), "init", "--name", "stranger") == 0
    agreement = load_agreement(coord / "federation" / "fed" / "agreement.json")
    bad = tmp_path / "stranger-record.json"
    bad.write_bytes(sign_supernode_key(Identity.load(stranger / "identity.key"), agreement.federation_id,
                                       ensure_supernode_key(tmp_path / "sk")).to_bytes())
    assert cli("--home", str(coord), "federation", "admit", "fed", str(bad)) == 1
    assert not admitted.exists() or not list(admitted.iterdir())
    assert cli("--home", str(coord), "federation", "admit", "fed", str(tmp_path / "missing.json")) == 2

    assert cli("--home", str(coord), "federation", "admit", "fed", *map(str, records)) == 0
    keys = {Identity.load(h / "identity.key").public_key_hex for h in homes}
    assert {p.stem for p in admitted.glob("*.json")} == keys


def test_members_run_only_rewardnodes_clientapp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever app bundle a SuperLink sends, a member's SuperNode neither installs nor loads it."""
    import flwr.supernode.runtime.run_clientapp as runtime

    from federation.deployment import _pin_clientapp
    from federation.worker import client_app

    for name in ("install_from_fab", "get_load_client_app_fn"):
        monkeypatch.setattr(runtime, name, getattr(runtime, name))  # restored after the test
    _pin_clientapp()
    assert runtime.install_from_fab(b"PK\x03\x04 any bundle", skip_prompt=True) is None
    load = runtime.get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
    assert load("evil/app", "6.6.6", "f" * 64) is client_app
