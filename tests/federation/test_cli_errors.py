"""`federation create` and `join` refuse bad input with one line naming the flag and the fix, and a refused
command leaves nothing written and nothing stored changed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from federation.agreement import AGREEMENT_TYPE, Agreement, verify_agreement
from federation.errors import FederationError
from protocol.canonical import canonical_json
from protocol.envelope import sign_envelope
from protocol.identity import Identity
from tests.federation.conftest import cli

COORDINATOR = "127.0.0.1:9093"


@pytest.fixture
def homes(tmp_path: Path) -> tuple[Path, Path, str]:
    """A coordinator home and a member home (no federation yet), and the member's public key."""
    coord, member = tmp_path / "coord", tmp_path / "member"
    assert cli("--home", str(coord), "init", "--name", "coord") == 0
    assert cli("--home", str(member), "init", "--name", "member") == 0
    return coord, member, Identity.load(member / "identity.key").public_key_hex


def create(coord: Path, key: str, bert_dir: Path, *extra: str, name: str = "fed") -> int:
    return cli("--home", str(coord), "federation", "create", name, "--member", key, "--base-model", str(bert_dir),
               "--max-length", "32", *extra)


def join(member: Path, *extra: str, name: str = "fed") -> int:
    return cli("--home", str(member), "federation", "join", name, *extra)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (names relative to it) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def joined(homes: tuple[Path, Path, str], bert_dir: Path) -> tuple[Path, Path]:
    """The member has joined federation "fed" with the coordinator's CA; returns (coordinator, member)."""
    coord, member, key = homes
    assert create(coord, key, bert_dir) == 0
    fed = coord / "federation" / "fed"
    assert join(member, "--coordinator", COORDINATOR, "--agreement", str(fed / "agreement.json"),
                "--ca", str(fed / "tls" / "ca.pem")) == 0
    return coord, member


# --- create: every numeric setting is checked, and the message names the flag ---------------------------


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--learning-rate", "-1", "--learning-rate -1: must be > 0"),
    ("--learning-rate", "nan", "--learning-rate nan: must be a finite number"),
    ("--batch-size", "0", "--batch-size 0: must be >= 1"),
    ("--max-length", "2", "--max-length 2: must be >= 8"),
    ("--clip-norm", "-1", "--clip-norm -1: is negative"),
    ("--dp-clip-norm", "-0.5", "--dp-clip-norm -0.5: is negative"),
    ("--dp-noise-multiplier", "-2", "--dp-noise-multiplier -2: is negative"),
    ("--dp-noise-multiplier", "1", "--dp-noise-multiplier 1: adds no noise without client-side clipping"),
    ("--round-timeout", "-5", "--round-timeout -5: must be > 0"),
    ("--rounds", "0", "--rounds 0: must be >= 1"),
    ("--local-epochs", "0", "--local-epochs 0: must be >= 1"),
    ("--min-participants", "0", "--min-participants 0: must be >= 1"),
    ("--lora-r", "0", "--lora-r 0: must be >= 1"),
    ("--lora-alpha", "-16", "--lora-alpha -16: must be >= 1"),
    ("--outlier-norm-ratio", "1", "--outlier-norm-ratio 1: must be > 1"),
    ("--outlier-min-cosine", "1.5", "--outlier-min-cosine 1.5: must lie in [-1, 1)"),
])
def test_create_refuses_an_out_of_range_setting_naming_its_flag(homes, bert_dir, capsys, flag, value, says) -> None:
    coord, _, key = homes
    assert create(coord, key, bert_dir, flag, value) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not (coord / "federation" / "fed").exists()  # nothing signed, no TLS made


def test_create_writes_the_lora_settings_it_is_given(homes, bert_dir, capsys) -> None:
    coord, _, key = homes
    assert create(coord, key, bert_dir, "--lora-targets", "all-linear", "--lora-r", "16", "--lora-alpha", "32") == 0
    agreement = verify_agreement((coord / "federation" / "fed" / "agreement.json").read_bytes())
    assert (agreement.lora_targets, agreement.lora_r, agreement.lora_alpha) == ("all-linear", 16, 32)
    capsys.readouterr()
    assert cli("--home", str(coord), "federation", "status", "fed", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["federation_id"] == agreement.federation_id and status["rounds_done"] == 0
    assert (status["share"], status["lora_targets"], status["lora_r"]) == ("lora", "all-linear", 16)


def test_create_writes_the_outlier_screen_it_is_given(homes, bert_dir, capsys) -> None:
    coord, _, key = homes
    assert create(coord, key, bert_dir, "--strategy", "median", "--screen-outliers", "--outlier-norm-ratio", "5",
                  "--outlier-min-cosine", "-0.5") == 0
    assert "median after leaving out outliers (norm > 5x the median, cosine < -0.5)" in capsys.readouterr().out
    agreement = verify_agreement((coord / "federation" / "fed" / "agreement.json").read_bytes())
    assert (agreement.screen_outliers, agreement.outlier_norm_ratio, agreement.outlier_min_cosine) == (True, 5.0, -0.5)
    assert cli("--home", str(coord), "federation", "status", "fed", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["strategy"], status["outlier_norm_ratio"], status["outlier_min_cosine"]) == ("median", 5.0, -0.5)


def test_create_min_participants_above_the_member_count_says_how_many_members(homes, bert_dir, capsys) -> None:
    coord, _, key = homes
    assert create(coord, key, bert_dir, "--min-participants", "5") == 2
    assert ("--min-participants 5: the federation has 1 member; give at most 1, or add members with --member"
            in capsys.readouterr().err)
    assert not (coord / "federation" / "fed").exists()


def test_create_refuses_max_length_beyond_the_base_models_positions(homes, bert_dir, capsys) -> None:
    coord, _, key = homes  # the tiny BERT has 64 position embeddings
    assert create(coord, key, bert_dir, "--max-length", "65") == 2
    err = capsys.readouterr().err
    assert "--max-length 65: the base model" in err and "at most 64 tokens" in err
    assert not (coord / "federation" / "fed").exists()
    assert create(coord, key, bert_dir, "--max-length", "64") == 0


# --- an agreement from a peer is checked the same way -------------------------------------------------


def _signed_with(coord: Path, member_key: str, bert_dir: Path, **bad: object) -> bytes:
    """An agreement signed by the coordinator whose settings skip `Agreement`'s checks (a buggy or hostile peer)."""
    from node.federated import base_model_sha256

    identity = Identity.load(coord / "identity.key")
    values = Agreement(name="fed", coordinator=identity.public_key_hex, members=(member_key,),
                       base_model=str(bert_dir), base_model_sha256=base_model_sha256(str(bert_dir)),
                       min_participants=1, max_length=32).to_dict()
    values.update(bad)
    return sign_envelope(identity, AGREEMENT_TYPE, canonical_json(values)).to_bytes()


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"learning_rate": -1.0}, {"rounds": 1.5},
                                 {"round_timeout_s": -5.0}, {"min_participants": 2}])
def test_join_refuses_a_signed_agreement_with_a_bad_setting(homes, bert_dir, tmp_path, capsys, bad) -> None:
    coord, member, key = homes
    data = _signed_with(coord, key, bert_dir, **bad)
    with pytest.raises(FederationError, match=f"invalid setting: {next(iter(bad))} = "):
        verify_agreement(data)
    path = tmp_path / "agreement.json"
    path.write_bytes(data)
    assert join(member, "--coordinator", COORDINATOR, "--agreement", str(path)) == 1
    err = capsys.readouterr().err
    assert f"invalid setting: {next(iter(bad))}" in err and "the coordinator must re-create the federation" in err
    assert not (member / "federation").exists()


def test_a_stored_agreement_with_a_bad_setting_is_refused_when_loaded(joined, bert_dir, capsys) -> None:
    coord, member = joined
    key = Identity.load(member / "identity.key").public_key_hex
    (member / "federation" / "fed" / "agreement.json").write_bytes(_signed_with(coord, key, bert_dir, batch_size=0))
    assert cli("--home", str(member), "federation", "status", "fed") == 1
    err = capsys.readouterr().err
    assert "agreement.json: the agreement file has an invalid setting: batch_size = 0" in err


def test_a_tampered_agreement_fails_on_its_signature_before_its_settings(homes, bert_dir, tmp_path) -> None:
    coord, _, key = homes
    import dataclasses

    from protocol.envelope import Envelope

    env = Envelope.from_bytes(_signed_with(coord, key, bert_dir))
    payload = env.payload.replace(b'"batch_size":8', b'"batch_size":0')
    assert payload != env.payload
    with pytest.raises(FederationError, match="does not verify"):
        verify_agreement(dataclasses.replace(env, payload=payload).to_bytes())


# --- join: everything is checked before anything is written --------------------------------------------


def test_join_with_a_file_that_is_not_a_certificate_keeps_the_stored_ca(joined, tmp_path, capsys) -> None:
    coord, member = joined
    before = snapshot(member / "federation")
    junk = tmp_path / "not-a-cert.jsonl"
    junk.write_text('{"x": 1}\n')
    agreement = coord / "federation" / "fed" / "agreement.json"
    assert join(member, "--coordinator", "10.0.0.5:9093", "--agreement", str(agreement), "--ca", str(junk)) == 2
    assert "not a PEM X.509 certificate" in capsys.readouterr().err
    assert snapshot(member / "federation") == before


def test_join_with_a_missing_ca_file_writes_nothing(homes, bert_dir, tmp_path, capsys) -> None:
    coord, member, key = homes
    assert create(coord, key, bert_dir) == 0
    agreement = coord / "federation" / "fed" / "agreement.json"
    assert join(member, "--coordinator", COORDINATOR, "--agreement", str(agreement),
                "--ca", str(tmp_path / "missing.pem")) == 2
    assert "missing.pem: no such file" in capsys.readouterr().err
    assert not (member / "federation").exists()


@pytest.mark.parametrize("address", ["nothostport", "127.0.0.1:99999", "127.0.0.1:0", ":9093", "host:",
                                     "host:80x", "::1:9093", "http://host:9093"])
def test_join_refuses_a_coordinator_that_is_not_host_port(joined, capsys, address) -> None:
    _, member = joined
    before = snapshot(member / "federation")
    assert join(member, "--coordinator", address) == 2
    assert f"--coordinator {address}: give the coordinator's SuperLink address as HOST:PORT" in capsys.readouterr().err
    assert snapshot(member / "federation") == before


def test_join_accepts_a_bracketed_ipv6_coordinator(joined) -> None:
    _, member = joined
    assert join(member, "--coordinator", "[::1]:9093") == 0
    assert '"coordinator": "[::1]:9093"' in (member / "federation" / "fed" / "join.json").read_text()


def test_join_with_a_missing_agreement_file_says_the_file_does_not_exist(homes, tmp_path, capsys) -> None:
    _, member, _ = homes
    assert join(member, "--coordinator", COORDINATOR, "--agreement", str(tmp_path / "missing.json"), name="g1") == 2
    err = capsys.readouterr().err
    assert "missing.json: no such file" in err and "no agreement for" not in err
    assert not (member / "federation").exists()


def test_a_rejoin_without_ca_keeps_tls_to_the_same_federation(joined) -> None:
    _, member = joined
    assert join(member, "--coordinator", "10.0.0.9:9093") == 0  # the coordinator moved
    join_file = (member / "federation" / "fed" / "join.json").read_text()
    assert '"ca": "ca.pem"' in join_file and "10.0.0.9:9093" in join_file


def test_replace_file_leaves_the_old_file_whole_when_the_write_fails(tmp_path, monkeypatch) -> None:
    from federation.agreement import replace_file

    path = tmp_path / "join.json"
    path.write_bytes(b"old")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        replace_file(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["join.json"]


@pytest.mark.parametrize("listen", ["10.1.2.3", "example.org"])
def test_run_refuses_a_listen_address_its_own_commands_cannot_reach(joined, capsys, listen) -> None:
    coord, _ = joined
    assert cli("--home", str(coord), "federation", "run", "fed", "--listen", listen, "--port", "1") == 1
    err = capsys.readouterr().err
    assert f"--listen {listen}" in err and "0.0.0.0" in err
    assert not (coord / "federation" / "fed" / "run").exists()  # nothing was started
