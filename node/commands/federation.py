"""Federation commands: `federation create|join|admit|run|status` and `verify MODEL`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from node.errors import NodeError, UsageError

COMMANDS: dict[str, str] = {
    "federation": "create, join, admit members to, run or inspect a federation (signed agreement, Flower rounds)",
    "verify": "re-check a federated model's hashes, agreement and signed manifest chain",
}

STRATEGY_CHOICES = ("fedavg", "median", "trimmed-mean", "krum")  # federation.aggregation.STRATEGIES
LORA_TARGET_CHOICES = ("attention", "all-linear")  # federation.agreement.LORA_TARGET_SETS
FLAGS: dict[str, str] = {
    "rounds": "--rounds", "min_participants": "--min-participants", "local_epochs": "--local-epochs",
    "learning_rate": "--learning-rate", "batch_size": "--batch-size", "max_length": "--max-length",
    "clip_norm": "--clip-norm", "dp_clip_norm": "--dp-clip-norm", "dp_noise_multiplier": "--dp-noise-multiplier",
    "round_timeout_s": "--round-timeout", "lora_r": "--lora-r", "lora_alpha": "--lora-alpha",
    "lora_targets": "--lora-targets", "outlier_norm_ratio": "--outlier-norm-ratio",
    "outlier_min_cosine": "--outlier-min-cosine",
}
"""`federation create` flag of each agreement setting, for error messages."""
CA_FILE = "ca.pem"


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "verify":
        parser.add_argument("model", metavar="MODEL", help="registry id (or unique prefix) of a federated model")
        parser.add_argument("--no-merge-check", action="store_true",
                            help="skip re-deriving the merged weights from base + shared arrays")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        return
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser("create", help="write and sign a federation agreement (this node coordinates)")
    create.add_argument("name", metavar="NAME")
    create.add_argument("--member", metavar="KEY", action="append", required=True,
                        help="a member's Ed25519 public key (hex, from `rewardnode identity --json`); repeat")
    create.add_argument("--strategy", choices=STRATEGY_CHOICES, default="fedavg",
                        help="how the coordinator combines the round's updates (default fedavg)")
    create.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    create.add_argument("--min-participants", type=int, default=None, help="default: every member")
    create.add_argument("--local-epochs", type=int, default=1,
                        help="epochs over its own pairs each member trains per round (default 1)")
    create.add_argument("--base-model", default="minilm", help='"minilm" or a local model folder')
    create.add_argument("--share", choices=("lora", "full"), default="lora",
                        help="what leaves a node: LoRA adapters + head (default) or all weights")
    create.add_argument("--lora-targets", choices=LORA_TARGET_CHOICES,
                        help="with --share lora: adapt every linear layer (default) or the attention's "
                             "query/value")
    create.add_argument("--lora-r", type=int, help="LoRA rank (default 16)")
    create.add_argument("--lora-alpha", type=int, help="LoRA scale numerator (default twice the rank)")
    create.add_argument("--learning-rate", type=float,
                        help="members' peak learning rate (default 5e-4 with --share lora, 5e-5 with full)")
    create.add_argument("--batch-size", type=int, help="pairs per optimizer step (default 16)")
    create.add_argument("--max-length", type=int,
                        help="tokens per (prompt, response); longer ones are truncated (default 256, or "
                             "the base model's positions if fewer)")
    create.add_argument("--clip-norm", type=float, default=0.0, help="server-side update norm bound (0 = off)")
    create.add_argument("--screen-outliers", action="store_true",
                        help="leave out of each round the updates whose norm or direction is an outlier among the "
                             "round's (recorded in its manifest), then aggregate the rest with --strategy")
    create.add_argument("--outlier-norm-ratio", type=float, default=3.0, metavar="X",
                        help="(--screen-outliers) leave out updates over X times the round's median norm (default 3)")
    create.add_argument("--outlier-min-cosine", type=float, default=-0.5, metavar="C",
                        help="(--screen-outliers, four updates or more) leave out updates whose cosine with the "
                             "coordinate-wise median of the round's other updates is below C (default -0.5; -1 "
                             "turns the check off)")
    create.add_argument("--dp-clip-norm", type=float, default=0.0, help="client-side DP clipping (0 = off)")
    create.add_argument("--dp-noise-multiplier", type=float, default=0.0,
                        help="client-side DP: Gaussian noise std as a multiple of --dp-clip-norm (default 0)")
    create.add_argument("--round-timeout", type=float, default=600.0,
                        help="seconds to wait for a round's replies (default 600)")
    create.add_argument("--mean-pool-init", action=argparse.BooleanOptionalAction,
                        help="start the reward from the mean of the tokens (default) instead of the "
                             "pretrained [CLS] vector (as train --mean-pool-init)")
    join = sub.add_parser("join", help="join a federation: check the signed agreement, record the coordinator")
    join.add_argument("name", metavar="NAME")
    join.add_argument("--coordinator", metavar="HOST:PORT", required=True, help="the coordinator's SuperLink")
    join.add_argument("--agreement", metavar="FILE", help="agreement.json the coordinator sent (needed once)")
    join.add_argument("--ca", metavar="FILE",
                      help="the coordinator's CA certificate, its federation/NAME/tls/ca.pem (TLS; needed "
                           "unless an earlier join of this federation kept one)")
    admit = sub.add_parser("admit", help="(coordinator) admit members' SuperNodes: check and keep the "
                                         "supernode-key.json each member's join wrote")
    admit.add_argument("name", metavar="NAME")
    admit.add_argument("files", metavar="FILE", nargs="+", help="a member's supernode-key.json; repeat")
    run = sub.add_parser("run", help="run the rounds (coordinator) or serve them (member)")
    run.add_argument("name", metavar="NAME")
    run.add_argument("--engine", choices=("local", "deployment"), default="deployment",
                     help="local: every member home is on this machine, one process; deployment: Flower SuperLink/"
                          "SuperNodes over TLS")
    run.add_argument("--member-home", metavar="DIR", action="append", default=[],
                     help="(--engine local) a member's node home; repeat")
    run.add_argument("--port", type=int, default=9093, help="(coordinator) SuperLink port (default 9093)")
    run.add_argument("--listen", default="127.0.0.1", help="(coordinator) SuperLink bind address")
    run.add_argument("--no-supernode-auth", action="store_true",
                     help="(coordinator) let any SuperNode that trusts the CA connect, admitted or not "
                          "(contributions are still checked for members' signatures)")
    run.add_argument("--straggler-wait", type=float, default=10.0, metavar="S",
                     help="(coordinator) once min-participants replied, wait at most S more seconds for the others "
                          "(default 10; a dead member would otherwise cost the whole round timeout)")
    run.add_argument("--resume", action="store_true",
                     help="(coordinator) continue after the rounds an earlier run finished (a crash, say): their "
                          "signed manifests and global model are checked first")
    run.add_argument("--restart", action="store_true",
                     help="(coordinator) keep an earlier run's rounds aside (rounds-previous-*) and start at round 1")
    run.add_argument("--serve", action="store_true",
                     help="(member) keep serving after the federated model landed (default: exit then)")
    run.add_argument("--timeout", type=float, default=3600.0,
                     help="give up after this many seconds (default 3600)")
    status = sub.add_parser("status", help="agreement, rounds done and registered federated models")
    status.add_argument("name", metavar="NAME")
    status.add_argument("--json", action="store_true")
    for action_parser in (create, join, admit, run, status):  # --home/--db also after the action
        action_parser.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS, help="node home")
        action_parser.add_argument("--db", metavar="URL", default=argparse.SUPPRESS, help="database URL")


def run_federation(args: argparse.Namespace) -> int:
    from federation.errors import FederationError

    try:
        return {"create": _create, "join": _join, "admit": _admit, "run": _run,
                "status": _status}[args.action](args)
    except FederationError as exc:
        raise NodeError(str(exc)) from None


def _create(args: argparse.Namespace) -> int:
    from federation.agreement import Agreement, InvalidSetting, save_agreement, show_value
    from federation.errors import FederationError
    from node.app import Node
    from node.federated import AGREEMENT_FILE, base_model_sha256, federation_dir
    from node.flower import prepare_tls
    from protocol.identity import PublicKey

    with Node.open(args.home, db=args.db) as node:
        target = federation_dir(node.config.home, args.name) / AGREEMENT_FILE
        if target.exists():
            raise NodeError(f"federation {args.name!r} already exists at {target}; pick another name")
        try:
            members = tuple(PublicKey.parse(k).hex for k in args.member)
        except ValueError as exc:
            raise UsageError(f"--member: {exc}") from None
        trained = _training_settings(args)
        settings = dict(
            strategy=args.strategy, rounds=args.rounds,
            min_participants=len(members) if args.min_participants is None else args.min_participants,
            local_epochs=args.local_epochs, clip_norm=args.clip_norm, dp_clip_norm=args.dp_clip_norm,
            dp_noise_multiplier=args.dp_noise_multiplier, round_timeout_s=args.round_timeout,
            screen_outliers=args.screen_outliers, outlier_norm_ratio=args.outlier_norm_ratio,
            outlier_min_cosine=args.outlier_min_cosine, **trained)
        try:  # the settings first: a typo should not wait for the base model to be hashed
            Agreement(name=args.name, coordinator=node.identity.public_key_hex, members=members,
                      base_model=args.base_model, base_model_sha256="0" * 64, share=args.share, **settings)
        except InvalidSetting as exc:
            flag = FLAGS.get(exc.field, exc.field)
            text = f"{exc.problem}; {exc.fix}".replace("dp_clip_norm", "--dp-clip-norm")
            raise UsageError(f"{flag} {show_value(exc.value)}: {text}") from None
        except (FederationError, ValueError) as exc:
            raise UsageError(str(exc)) from None
        if args.max_length is not None:
            _check_max_length(args.base_model, args.max_length)
        else:  # the default, within the base model's positions
            settings["max_length"] = _default_max_length(args.base_model, settings["max_length"])
        try:
            base_sha256 = base_model_sha256(args.base_model)
        except (ValueError, NodeError) as exc:  # no model folder there, or no weights in it
            raise UsageError(f"--base-model {args.base_model}: {exc}") from None
        agreement = Agreement(
            name=args.name, coordinator=node.identity.public_key_hex, members=members, base_model=args.base_model,
            base_model_sha256=base_sha256, share=args.share, **settings)
        ca = prepare_tls(node.config.home, args.name)  # before the agreement: a failure leaves no CA-less federation
        save_agreement(target, agreement.sign(node.identity))
    screen = (f" after leaving out outliers (norm > {agreement.outlier_norm_ratio:g}x the median, cosine < "
              f"{agreement.outlier_min_cosine:g})" if agreement.screen_outliers else "")
    print(f"created federation {args.name!r} ({agreement.federation_id[:16]}...): {len(members)} member(s), "
          f"{agreement.strategy}{screen}, {agreement.rounds} round(s)")
    print(f"  agreement  {target}  (send it to every member: rewardnode federation join {args.name} "
          "--coordinator HOST:PORT --agreement FILE --ca CA)")
    print(f"  TLS CA     {ca}")
    return 0


def _training_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The agreement's training settings: the flags given, else what `create` writes for what is shared."""
    from federation.agreement import TRAINING_SETTINGS, create_settings

    return create_settings(args.share, {k: getattr(args, k) for k in TRAINING_SETTINGS})


def _default_max_length(base_model: str, max_length: int) -> int:
    """`max_length`, or the base model's positions where it has fewer."""
    from node.rm.preflight import backbone_positions

    limit = backbone_positions(base_model)
    return max_length if limit is None else min(max_length, limit)


def _check_max_length(base_model: str, max_length: int) -> None:
    """Refuse a --max-length beyond the base model's position embeddings (every member would fail)."""
    from node.rm.preflight import backbone_positions

    limit = backbone_positions(base_model)  # None: base_model_sha256 reports a missing or unreadable model
    if limit is not None and max_length > limit:
        raise UsageError(f"--max-length {max_length}: the base model {base_model!r} takes at most {limit} tokens; "
                         f"give at most {limit}")


def _join(args: argparse.Namespace) -> int:
    from federation.agreement import replace_file, verify_agreement
    from federation.errors import FederationError
    from node.app import Node
    from node.federated import AGREEMENT_FILE, base_model_sha256, federation_dir, read_join, write_join
    from node.flower import prepare_supernode_key

    coordinator = _check_coordinator(args.coordinator)
    ca_pem = _read_ca(Path(args.ca)) if args.ca else None
    with Node.open(args.home, db=args.db) as node:
        home = node.config.home
        fed = federation_dir(home, args.name)
        target = fed / AGREEMENT_FILE
        if args.agreement:
            source = Path(args.agreement)
            if not source.is_file():
                raise UsageError(f"--agreement {source}: no such file; pass the agreement.json the coordinator "
                                 "sent you")
        elif target.is_file():
            source = target
        else:
            raise UsageError(f"no agreement for {args.name!r} yet; pass --agreement FILE (the coordinator's "
                             "agreement.json)")
        raw = source.read_bytes()
        try:
            agreement = verify_agreement(raw)
        except FederationError as exc:
            raise NodeError(f"{source}: {exc}") from None
        if agreement.name != args.name:
            raise UsageError(f"the agreement is for federation {agreement.name!r}, not {args.name!r}")
        if node.identity.public_key_hex not in agreement.members:
            raise NodeError(f"this node ({node.identity.short_fingerprint}) is not a member of {args.name!r}; ask the "
                            "coordinator to add its key (rewardnode identity --json) and re-create the agreement")
        try:
            mine = base_model_sha256(agreement.base_model)
        except ValueError as exc:  # no model folder there
            raise NodeError(f"this node cannot load the agreed base model: {exc}") from None
        if mine != agreement.base_model_sha256:
            raise NodeError(f"this node's {agreement.base_model!r} differs from the agreed base model; install it")
        join: dict[str, str] = {"coordinator": coordinator, "federation_id": agreement.federation_id}
        kept_ca = False
        if ca_pem is not None:
            join["ca"] = CA_FILE
        elif (fed / CA_FILE).is_file():  # a re-join without --ca keeps TLS to the same federation
            try:
                before: object = read_join(home, args.name)
            except (NodeError, ValueError):
                before = None
            if isinstance(before, dict) and before.get("ca") == CA_FILE and \
                    before.get("federation_id") == agreement.federation_id:
                join["ca"], kept_ca = CA_FILE, True
        if "ca" not in join:  # the coordinator's SuperLink always uses TLS: no SuperNode gets in without it
            raise UsageError(f"--ca FILE is missing: pass the coordinator's CA certificate, the federation/"
                             f"{args.name}/tls/ca.pem its `federation create` wrote (sent with the "
                             "agreement)")
        # Everything is checked: write. The SuperNode key first (a damaged key file fails before any other
        # write), then each file whole through a temporary file, so a failed join changes nothing stored.
        record = prepare_supernode_key(home, node.identity, agreement)
        if source.resolve() != target.resolve():
            replace_file(target, raw)
        if ca_pem is not None:
            replace_file(fed / CA_FILE, ca_pem)
        write_join(home, args.name, join)
    print(f"joined federation {args.name!r} ({agreement.federation_id[:16]}...) coordinated by "
          f"{agreement.coordinator[:16]}... at {coordinator}")
    if kept_ca:
        print(f"  TLS CA                {fed / CA_FILE}  (kept from the earlier join; pass --ca FILE to replace it)")
    print(f"  SuperNode key record  {record}  (send it to the coordinator: rewardnode federation admit "
          f"{args.name} FILE)")
    return 0


def _check_coordinator(address: str) -> str:
    """The coordinator's SuperLink address as HOST:PORT (an IPv6 host in brackets), port 1-65535."""
    host, sep, port = address.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ok = bool(sep) and bool(bare) and not any(c.isspace() or c in "/[]" for c in bare) and port.isascii() and port.isdigit()
    if not ok or not 1 <= int(port) <= 65535 or (":" in bare and bare == host):
        raise UsageError(f"--coordinator {address}: give the coordinator's SuperLink address as HOST:PORT with a "
                         "port in 1-65535, e.g. 10.0.0.5:9093 ([::1]:9093 for IPv6)")
    return address


def _read_ca(path: Path) -> bytes:
    """The bytes of `path` if it holds a PEM X.509 certificate (the coordinator's tls/ca.pem)."""
    from cryptography import x509

    hint = "pass the tls/ca.pem that the coordinator's `federation create` wrote"
    if not path.is_file():
        raise UsageError(f"--ca {path}: no such file; {hint}")
    data = path.read_bytes()
    try:
        x509.load_pem_x509_certificate(data)
    except ValueError:
        raise UsageError(f"--ca {path}: not a PEM X.509 certificate; {hint}") from None
    return data


def _admit(args: argparse.Namespace) -> int:
    from node.app import Node
    from node.flower import admit_supernode

    with Node.open(args.home, db=args.db) as node:
        home = node.config.home
    paths = [Path(name) for name in args.files]
    for path in paths:  # all of them before admitting any
        if path.is_dir():
            raise UsageError(f"{path} is a folder; `federation admit` takes the supernode-key.json files the "
                             f"members send (each member's join writes federation/{args.name}/"
                             "supernode-key.json)")
        if not path.is_file():
            raise UsageError(f"{path}: no such file; pass the supernode-key.json a member's join wrote")
    for path in paths:
        key = admit_supernode(home, args.name, path.read_bytes())
        print(f"admitted the SuperNode of member {key.member[:16]}... to {args.name!r} (from {path})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from federation.errors import BelowQuorum
    from node.app import Node
    from node.federated import agreement_for, coordinator_state, prepare_rounds, run_local

    _check_run_flags(args)  # before anything starts or moves
    with Node.open(args.home, db=args.db) as node:
        home = node.config.home
        agreement = agreement_for(home, args.name)
        is_coordinator = node.identity.public_key_hex == agreement.coordinator
    if (args.resume or args.restart) and not is_coordinator:
        raise UsageError("--resume and --restart are for the coordinator; a member just runs again")

    def resuming(done: int) -> None:
        print(f"resuming federation {args.name!r} after round {done} of {agreement.rounds}")

    if is_coordinator:
        done = prepare_rounds(home, args.name, resume=args.resume, restart=args.restart)
        if done and args.engine != "local":  # run_local checks them itself and then calls resuming()
            with Node.open(home, db=args.db) as node:  # check the saved rounds here, before any server starts
                coordinator_state(node, agreement, resume=True)
            resuming(done)
    if args.engine == "local":
        if not is_coordinator:
            raise UsageError("--engine local runs on the coordinator; pass the members' homes with --member-home")
        if not args.member_home:
            raise UsageError("--engine local needs --member-home DIR for every member on this machine")
        try:
            outcome = run_local(home, [Path(h) for h in args.member_home], args.name, resume=args.resume,
                                on_resume=resuming)
        except BelowQuorum as exc:
            raise NodeError(str(exc)) from None
        print(f"federation {args.name!r}: {len(outcome.chain)} round(s); "
              f"registered on {len(outcome.registered)} member(s): {sorted(set(outcome.registered.values()))}")
        return 0
    from node.flower import run_coordinator, run_member

    if is_coordinator:
        outcome = run_coordinator(home, args.name, port=args.port, host=args.listen, timeout_s=args.timeout,
                                  supernode_auth=not args.no_supernode_auth, straggler_s=args.straggler_wait,
                                  resume=args.resume)
        print(f"federation {args.name!r}: {outcome['rounds']} round(s), accepted per round {outcome['accepted']}, "
              f"round seconds {[round(x, 2) for x in outcome['round_seconds']]}; registered on "
              f"{len(outcome['registered'])} member(s)")
        return 0
    model_id = run_member(home, args.name, serve=args.serve, timeout_s=args.timeout)
    if model_id:
        print(f"federated model {model_id} registered (verify it: rewardnode verify {model_id})")
    return 0


def _check_run_flags(args: argparse.Namespace) -> None:
    """Range-check `federation run`'s numbers (a SuperLink on port 0 or 70000 never listens)."""
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: give the SuperLink's port in 1-65535 (default 9093)")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError(f"--timeout {args.timeout:g}: give a number of seconds > 0 (default 3600)")
    if not (math.isfinite(args.straggler_wait) and args.straggler_wait >= 0):
        raise UsageError(f"--straggler-wait {args.straggler_wait:g}: give a number of seconds >= 0")


def _status(args: argparse.Namespace) -> int:
    from node.app import Node
    from node.federated import MODEL_KIND, agreement_for, federation_dir

    with Node.open(args.home, db=args.db) as node:
        agreement = agreement_for(node.config.home, args.name)
        rounds = sorted((federation_dir(node.config.home, args.name) / "rounds").glob("round-*.manifest.json"))
        models = [m for m in node.store.list_models()
                  if m.kind == MODEL_KIND and m.provenance.get("federation_id") == agreement.federation_id]
        info = {"name": agreement.name, "federation_id": agreement.federation_id,
                "coordinator": agreement.coordinator, "members": list(agreement.members),
                "base_model": agreement.base_model, "share": agreement.share,
                **({"lora_targets": agreement.lora_targets, "lora_r": agreement.lora_r} if agreement.share == "lora"
                   else {}),
                "strategy": agreement.strategy,
                **({"outlier_norm_ratio": agreement.outlier_norm_ratio,
                    "outlier_min_cosine": agreement.outlier_min_cosine} if agreement.screen_outliers else {}),
                "rounds": agreement.rounds, "rounds_done": len(rounds),
                "min_participants": agreement.min_participants, "models": [m.id for m in models]}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:17} {value}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from federation.errors import ChainBroken
    from node.app import Node
    from node.federated import verify_model

    with Node.open(args.home, db=args.db) as node:
        try:
            result = verify_model(node, args.model, check_merge=not args.no_merge_check)
        except ChainBroken as exc:
            raise NodeError(f"model {args.model} does not verify: {exc}") from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"model {result['model']} verifies: federation {result['federation']!r}, {result['rounds']} round(s), "
              f"{len(result['contributors'])} contributor(s), {result['rejections']} rejection(s) recorded")
    if not result["files_checked"]:
        print(f"note: model {result['model']} was registered without per-file hashes: only its weights file "
              "was checked, not its tokenizer, config or card", file=sys.stderr)
    return 0
