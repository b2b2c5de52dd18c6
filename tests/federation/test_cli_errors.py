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


@pytest.mark.parametrize(("share", "expected"), [
    ("lora", {"lora_targets": "all-linear", "lora_r": 16, "lora_alpha": 32, "learning_rate": 5e-4,
              "batch_size": 16, "mean_pool_init": True}),
    ("full", {"lora_targets": "attention", "learning_rate": 5e-5, "batch_size": 16, "mean_pool_init": True}),
])
def test_create_without_training_flags_writes_the_measured_defaults_for_what_is_shared(
        homes, bert_dir, share, expected) -> None:
    coord, _, key = homes
    assert cli("--home", str(coord), "federation", "create", "fed", "--member", key, "--base-model",
               str(bert_dir), "--share", share) == 0
    agreement = verify_agreement((coord / "federation" / "fed" / "agreement.json").read_bytes())
    assert {k: getattr(agreement, k) for k in expected} == expected
    assert agreement.max_length == 64  # 256 by default, cut to the tiny BERT's 64 positions


def test_create_flags_override_the_defaults_and_alpha_follows_a_rank_given_alone(homes, bert_dir) -> None:
    coord, _, key = homes
    assert create(coord, key, bert_dir, "--lora-targets", "attention", "--lora-r", "8", "--no-mean-pool-init",
                  "--learning-rate", "1e-3", "--batch-size", "8") == 0
    agreement = verify_agreement((coord / "federation" / "fed" / "agreement.json").read_bytes())
    assert (agreement.lora_targets, agreement.lora_r, agreement.lora_alpha, agreement.mean_pool_init,
            agreement.learning_rate, agreement.batch_size, agreement.max_length) == (
        "attention", 8, 16, False, 1e-3, 8, 32)
    # the settings an older agreement file lacks still read as they did: its federation id is unchanged
    legacy = {k: v for k, v in agreement.to_dict().items() if k not in ("lora_targets", "mean_pool_init")}
    assert Agreement.from_dict(legacy).federation_id == agreement.federation_id


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


# --- join: TLS is not optional ---------------------------------------------------------------------------


def test_join_without_ca_is_refused_and_writes_nothing(homes, bert_dir, capsys) -> None:
    """The coordinator's SuperLink always uses TLS and members authenticate: a join without the CA would
    leave a member that can never connect."""
    coord, member, key = homes
    assert create(coord, key, bert_dir) == 0
    assert join(member, "--coordinator", COORDINATOR, "--agreement",
                str(coord / "federation" / "fed" / "agreement.json")) == 2
    err = capsys.readouterr().err
    assert "--ca FILE is missing" in err and "federation/fed/tls/ca.pem" in err
    assert len(err.strip().splitlines()) == 1
    assert not (member / "federation").exists()


def test_a_rejoin_without_ca_after_a_ca_less_join_json_is_refused(joined, capsys) -> None:
    _, member = joined
    fed = member / "federation" / "fed"
    values = json.loads((fed / "join.json").read_text())
    del values["ca"]  # as an older rewardnode (or a gossip join that found no CA) wrote it
    (fed / "join.json").write_text(json.dumps(values))
    before = snapshot(fed)
    assert join(member, "--coordinator", COORDINATOR) == 2
    assert "--ca FILE is missing" in capsys.readouterr().err
    assert snapshot(fed) == before


def test_a_member_run_without_a_ca_fails_up_front(joined, capsys) -> None:
    _, member = joined
    fed = member / "federation" / "fed"
    (fed / "ca.pem").unlink()
    assert cli("--home", str(member), "federation", "run", "fed", "--timeout", "30") == 1
    err = capsys.readouterr().err
    assert f"no TLS CA certificate for federation 'fed' at {fed / 'ca.pem'}" in err
    assert "federation join fed --coordinator 127.0.0.1:9093 --ca FILE" in err and "tls/ca.pem" in err
    assert len(err.strip().splitlines()) == 1
    assert not (fed / "run").exists()  # no SuperNode was started


def test_a_supernode_that_authenticates_needs_tls(tmp_path) -> None:
    from federation.deployment import start_supernode

    with pytest.raises(ValueError, match="SuperNode authentication needs TLS"):
        start_supernode(tmp_path, COORDINATOR, None, {"home": str(tmp_path)}, auth_key=tmp_path / "k")
    assert not (tmp_path / "supernode.log").exists()


# --- join.json: a damaged file is refused by name, before any model is loaded ------------------------


@pytest.mark.parametrize(("content", "says"), [
    (b"{bad", "invalid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[]", "a JSON list, not an object"),
    (b"{}", "no coordinator address"),
    (b'{"coordinator": 9093}', "no coordinator address"),
    (b'{"coordinator": "127.0.0.1:9093", "ca": 1}', "ca is not a non-empty string"),
    (b'{"coordinator": "127.0.0.1:9093", "ca": "../../etc/ca.pem"}', "ca '../../etc/ca.pem' is not a file name"),
    (b'{"coordinator": "127.0.0.1:9093", "federation_id": ""}', "federation_id is not a non-empty string"),
])
def test_a_damaged_join_file_is_refused_naming_it_and_the_fix(joined, capsys, content, says) -> None:
    coord, member = joined
    fed = member / "federation" / "fed"
    (fed / "join.json").write_bytes(content)
    assert cli("--home", str(member), "federation", "run", "fed", "--timeout", "30") == 1
    err = capsys.readouterr().err
    assert f"{fed / 'join.json'} is damaged ({says}" in err, err
    assert "run `rewardnode federation join fed --coordinator HOST:PORT --agreement FILE --ca CA`" in err
    assert "send the bytes" not in err and len(err.strip().splitlines()) == 1
    assert not (fed / "run").exists()  # refused before the worker (and its model) started
    # a join with the CA writes it again
    ca = coord / "federation" / "fed" / "tls" / "ca.pem"
    assert join(member, "--coordinator", COORDINATOR, "--ca", str(ca)) == 0
    assert json.loads((fed / "join.json").read_text())["coordinator"] == COORDINATOR


# --- create / join: a base model that is not there -----------------------------------------------------


@pytest.mark.parametrize("what", ["missing", "no-weights"])
def test_create_with_a_base_model_that_is_not_there_names_the_flag(homes, bert_dir, tmp_path, capsys,
                                                                   what) -> None:
    coord, _, key = homes
    base = tmp_path / "nonexistent"
    if what == "no-weights":
        base.mkdir()
        (base / "config.json").write_text((bert_dir / "config.json").read_text())
    assert create(coord, key, base) == 2
    err = capsys.readouterr().err
    assert f"--base-model {base}: backbone '{base}'" in err and len(err.strip().splitlines()) == 1
    assert ("no config.json there" if what == "missing" else "has no weights file") in err
    assert not (coord / "federation" / "fed").exists()


def test_join_on_a_node_without_the_base_model_says_so(homes, bert_dir, tmp_path, capsys) -> None:
    import shutil

    coord, member, key = homes
    base = tmp_path / "base"
    shutil.copytree(bert_dir, base)
    assert create(coord, key, base) == 0
    shutil.rmtree(base)  # the member's machine has no such folder
    fed = coord / "federation" / "fed"
    assert join(member, "--coordinator", COORDINATOR, "--agreement", str(fed / "agreement.json"),
                "--ca", str(fed / "tls" / "ca.pem")) == 1
    err = capsys.readouterr().err
    assert "this node cannot load the agreed base model: backbone" in err
    assert len(err.strip().splitlines()) == 1
    assert not (member / "federation").exists()


# --- admit -----------------------------------------------------------------------------------------------


def test_admit_a_folder_says_it_takes_the_key_files(joined, capsys) -> None:
    coord, member = joined
    record = member / "federation" / "fed" / "supernode-key.json"
    assert cli("--home", str(coord), "federation", "admit", "fed", str(record), str(member)) == 2
    err = capsys.readouterr().err
    assert f"{member} is a folder; `federation admit` takes the supernode-key.json files" in err
    assert not (coord / "federation" / "fed" / "supernodes").exists()  # not even the good one


# --- coordinator run: flags range-checked, a taken port, the timeout -----------------------------------


@pytest.fixture
def admitted(joined) -> tuple[Path, Path]:
    """`joined`, and the coordinator admitted the member's SuperNode (so `run` would start the SuperLink)."""
    coord, member = joined
    assert cli("--home", str(coord), "federation", "admit", "fed",
               str(member / "federation" / "fed" / "supernode-key.json")) == 0
    return coord, member


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--port", "0", "--port 0: give the SuperLink's port in 1-65535"),
    ("--port", "-1", "--port -1: give the SuperLink's port in 1-65535"),
    ("--port", "70000", "--port 70000: give the SuperLink's port in 1-65535"),
    ("--timeout", "-5", "--timeout -5: give a number of seconds > 0"),
    ("--timeout", "0", "--timeout 0: give a number of seconds > 0"),
    ("--timeout", "nan", "--timeout nan: give a number of seconds > 0"),
    ("--straggler-wait", "nan", "--straggler-wait nan: give a number of seconds >= 0"),
])
def test_run_range_checks_its_flags_before_anything_starts(admitted, capsys, flag, value, says) -> None:
    coord, _ = admitted
    assert cli("--home", str(coord), "federation", "run", "fed", flag, value) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
    assert not (coord / "federation" / "fed" / "run").exists()


def test_run_on_a_port_another_process_listens_on_starts_no_superlink(admitted, capsys) -> None:
    import socket

    coord, _ = admitted
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        assert cli("--home", str(coord), "federation", "run", "fed", "--port", str(port)) == 1
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "another process listens there" in err
    assert len(err.strip().splitlines()) == 1
    assert not (coord / "federation" / "fed" / "run" / "superlink.log").exists()


def test_waiting_for_a_port_stops_when_the_process_exited(tmp_path) -> None:
    import sys

    from federation.deployment import Proc, free_port, wait_for_port

    script = "import sys; print('INFO starting'); print('ERROR [Errno 98] address already in use'); exit(1)"
    proc = Proc([sys.executable, "-c", script], dict(os.environ), tmp_path / "superlink.log")
    try:
        with pytest.raises(FederationError, match=r"exited \(1\) before anything listened .*already in use"):
            wait_for_port(free_port(), 30, proc=proc)
    finally:
        proc.stop()


def test_run_that_times_out_stops_the_superlink_and_says_so(admitted, capsys, monkeypatch) -> None:
    import subprocess

    import federation.deployment as deployment

    coord, _ = admitted
    stopped: list[bool] = []

    class SuperLink:
        def stop(self) -> None:
            stopped.append(True)

    def flwr_run(workdir: Path, app_dir: Path, run_config: dict[str, str], timeout_s: float) -> None:
        raise subprocess.TimeoutExpired(["flwr", "run"], timeout_s, output=b"partial output", stderr=b"")

    monkeypatch.setattr(deployment, "start_superlink", lambda *a, **k: SuperLink())
    monkeypatch.setattr(deployment, "register_supernode", lambda *a, **k: 1)
    monkeypatch.setattr(deployment, "pin_run", lambda *a, **k: "0" * 64)
    monkeypatch.setattr(deployment, "flwr_run", flwr_run)
    assert cli("--home", str(coord), "federation", "run", "fed", "--port", "9093", "--timeout", "8") == 1
    err = capsys.readouterr().err
    assert "no outcome within --timeout 8 s (0 of 3 round(s) done" in err and "stopped the SuperLink" in err
    assert "a longer --timeout" in err and len(err.strip().splitlines()) == 1
    assert stopped == [True]
    assert (coord / "federation" / "fed" / "run" / "flwr-run.log").read_text() == "partial output"
