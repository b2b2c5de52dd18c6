"""Node-side federation glue: local training on this node's store, the federated model in the registry,
`verify` of its manifest chain, and an ensemble scorer (personal + federated, with disagreement).

Only the shared arrays (LoRA adapters + reward head, or every weight) ever leave the node, as
signed updates; the pairs are read here and stay here.

Files under the node home:

    federation/<name>/agreement.json   signed agreement (coordinator's envelope)
    federation/<name>/join.json        coordinator address (members)
    federation/<name>/rounds/          coordinator: round-NNNN.manifest.json + global-NNNN.arrays
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from federation.agreement import Agreement, load_agreement, replace_file
from federation.codec import Arrays, arrays_sha256, decode_arrays, encode_arrays
from federation.errors import ChainBroken, FederationError
from federation.manifest import verify_chain
from node.app import Node
from node.errors import NodeError
from node.rm.artifact import README_FILE, WEIGHTS_FILE, RewardScorer, file_sha256, save_reward_model
from node.rm.data import LengthGroupedBatchSampler, PairCollator, PairEncoder, PreferencePair, tokenize_pairs
from node.rm.model import disable_dropout, load_backbone, resolve_backbone_path
from node.rm.parallel import BatchSplitter, resolve_workers
from node.rm.train import can_fuse, pairs_loss
from protocol.canonical import parse_json
from protocol.identity import Identity

log = logging.getLogger(__name__)

FEDERATION_DIR = "federation"
AGREEMENT_FILE = "agreement.json"
JOIN_FILE = "join.json"
ROUNDS_DIR = "rounds"
SHARED_ARRAYS_FILE = "shared.arrays"
MODEL_KIND = "federated"
FILES_KEY = "files_sha256"
"""Provenance key of a federated model: {relative path: sha256} of its artifact files when registered."""
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def federation_dir(home: Path, name: str) -> Path:
    if not _NAME_RE.fullmatch(name):
        raise NodeError(f"federation name {name!r} is invalid; use 1-64 characters of [A-Za-z0-9._-]")
    return home / FEDERATION_DIR / name


def base_model_sha256(base_model: str) -> str:
    """SHA-256 of the backbone's weights file: what every member must start from."""
    path = Path(resolve_backbone_path(base_model))
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        raise NodeError(f"backbone {base_model!r} has no weights file in {path}; point at a model folder")
    return file_sha256(files[0])


def build_model(agreement: Agreement) -> tuple[nn.Module, Any]:
    """The backbone with the agreement's LoRA/head setup; seeded so every node builds the same one."""
    torch.manual_seed(agreement.seed)
    model, tokenizer = load_backbone(agreement.base_model, lora=agreement.share == "lora",
                                     lora_r=agreement.lora_r, lora_alpha=agreement.lora_alpha,
                                     lora_targets=agreement.lora_targets,
                                     mean_pool_init=agreement.mean_pool_init)
    disable_dropout(model)
    return model, tokenizer


def scoring_config(agreement: Agreement) -> dict[str, int]:
    """How federated training truncates (prompt, response) pairs: the model card's "scoring" entry."""
    return {"max_length": agreement.max_length, "min_prompt_tokens": min(16, agreement.max_length // 4)}


def pair_encoder(agreement: Agreement, tokenizer: Any) -> PairEncoder:
    """The PairEncoder of federated training (and of evaluating its models as they were trained)."""
    scoring = scoring_config(agreement)
    return PairEncoder(tokenizer, scoring["max_length"], scoring["min_prompt_tokens"])


def shared_margins(agreement: Agreement, arrays: Arrays, pairs: list[PreferencePair],
                   batch_size: int = 32) -> torch.Tensor:
    """r_chosen - r_rejected (N,) of each pair, in order, under the model that `arrays` make of the agreement's
    base, truncated as federated training truncates (the benchmarks' view of a round's model)."""
    from node.rm.evaluate import score_pairs

    model, tokenizer = build_model(agreement)
    load_shared(model, arrays)
    _, r_c, r_r = score_pairs(model, pairs, pair_encoder(agreement, tokenizer), batch_size)
    return r_c - r_r


def shared_arrays(model: nn.Module) -> Arrays:
    """What leaves the node: every trainable parameter (adapters + head under LoRA), as float32."""
    return {n: p.detach().cpu().numpy().astype(np.float32) for n, p in model.named_parameters() if p.requires_grad}


def load_shared(model: nn.Module, arrays: Arrays) -> None:
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(arrays) != expected:
        raise FederationError(f"shared arrays do not match this model ({len(set(arrays) ^ expected)} names differ); "
                              "every member must use the agreement's base model and share setting")
    with torch.no_grad():
        for n, a in arrays.items():
            params[n].copy_(torch.from_numpy(np.asarray(a, dtype=np.float32)))


def initial_arrays(agreement: Agreement) -> Arrays:
    """Round 0's global arrays (fresh adapters + head from the agreement's seed)."""
    return shared_arrays(build_model(agreement)[0])


def local_pairs(node: Node) -> list[PreferencePair]:
    """This node's preference pairs, from a fresh snapshot of its store."""
    from node.rm.pipeline import snapshot_pairs

    snapshot = node.store.create_snapshot()
    return snapshot_pairs(node.store, snapshot.id)[1]


class NodeParticipant:
    """A member: trains the shared arrays on its own pairs; registers the final federated model.

    cpu_workers: pieces per batch on CPU threads (`node.rm.parallel`; 0: the automatic choice). The default 1
    keeps one multi-threaded pass, which members sharing a process (the in-process engine) need;
    a member alone in its process (the deployment engine's worker) passes 0.
    """

    def __init__(self, node: Node | None, agreement: Agreement, *, pairs: list[PreferencePair] | None = None,
                 identity: Identity | None = None, cpu_workers: int = 1) -> None:
        if node is None and (pairs is None or identity is None):
            raise ValueError("without a node, pass both pairs and identity (benchmarks and simulations do)")
        self.node = node
        self.agreement = agreement
        self.identity = identity or node.identity  # type: ignore[union-attr]
        mine = base_model_sha256(agreement.base_model)
        if mine != agreement.base_model_sha256:
            raise FederationError(f"this node's copy of {agreement.base_model!r} hashes to {mine[:16]}..., the "
                                  f"agreement says {agreement.base_model_sha256[:16]}...; install the agreed backbone")
        self.pairs = pairs if pairs is not None else local_pairs(node)  # type: ignore[arg-type]
        if not self.pairs:
            raise FederationError("this node has no preference pairs to train on; import comparisons first")
        self.model, self.tokenizer = build_model(agreement)
        self.encoder = pair_encoder(agreement, self.tokenizer)
        self.data = tokenize_pairs(self.pairs, self.encoder)
        self.collator = PairCollator(self.encoder.pad_token_id)
        self.splitter = BatchSplitter(resolve_workers(cpu_workers, torch.device("cpu"), self.model,
                                                      agreement.batch_size))

    def train(self, global_arrays: Arrays, round: int) -> tuple[Arrays, int, dict[str, float]]:
        """`local_epochs` of AdamW on this node's pairs, from the global arrays."""
        a = self.agreement
        load_shared(self.model, global_arrays)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=a.learning_rate, weight_decay=0.0, fused=can_fuse(trainable))
        sampler = LengthGroupedBatchSampler(self.data.lengths, a.batch_size, seed=a.seed + round)
        loss_of = functools.partial(pairs_loss, self.model, self.data, self.collator)
        self.model.train()
        total, steps = 0.0, 0
        for epoch in range(a.local_epochs):
            sampler.set_epoch(epoch)
            for idx in sampler:
                loss = self.splitter.backward(loss_of, idx, trainable, self.data.weight)
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                total += float(loss)
                steps += 1
        self.model.eval()
        return shared_arrays(self.model), len(self.pairs), {"train-loss": total / max(steps, 1)}

    def finalize(self, global_arrays: Arrays, chain: list[str]) -> str:
        """Verify the chain against the final arrays, save the model, register it as "federated"."""
        verify_chain(chain, self.agreement, final_sha256=arrays_sha256(global_arrays))
        if self.node is None:
            raise FederationError("this participant has no node to register the model in")
        return str(register_federated(self.node, self.agreement, global_arrays, chain).id)


def register_federated(node: Node, agreement: Agreement, global_arrays: Arrays, chain: list[str]) -> Any:
    """Save the merged federated model under models_dir and register it with its manifest chain."""
    model, tokenizer = build_model(agreement)
    load_shared(model, global_arrays)
    model.eval()
    digest = arrays_sha256(global_arrays)
    out = node.config.models_dir / f"federated-{agreement.name}-{digest[:12]}"
    card = {"kind": MODEL_KIND, "federation": agreement.name, "federation_id": agreement.federation_id,
            "rounds": len(chain), "scoring": scoring_config(agreement)}
    if not out.exists():
        save_reward_model(model, tokenizer, out, card)
        (out / SHARED_ARRAYS_FILE).write_bytes(encode_arrays(global_arrays))
    files = artifact_files_sha256(out)
    sha = files[WEIGHTS_FILE]
    agreement_env = (federation_dir(node.config.home, agreement.name) / AGREEMENT_FILE).read_text()
    return node.store.register_model(
        name=f"federated-{agreement.name}", kind=MODEL_KIND, path=str(out), sha256=sha,
        base_model=agreement.base_model, snapshot_id=None,
        metrics={"rounds": len(chain)},
        provenance={"federation": agreement.name, "federation_id": agreement.federation_id,
                    "agreement": agreement_env, "manifests": list(chain), "shared_arrays_sha256": digest,
                    FILES_KEY: files, "registered_at": int(time.time())},
    )


def artifact_files_sha256(folder: Path) -> dict[str, str]:
    """sha256 of every file in an artifact folder, by relative path; hidden files and folders are left out,
    and so is README.md: it is rendered from model_card.json (which is hashed) for people to read."""
    out = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name != README_FILE and not any(p.startswith(".") for p in name.split("/")):
            out[name] = file_sha256(path)
    return out


def changed_files(now: dict[str, str], registered: dict[str, str]) -> list[str]:
    """What differs between an artifact folder's files (`artifact_files_sha256` now) and their sha256 at
    registration, one item per file: "changed NAME", "missing NAME" or "added NAME" (empty when nothing did)."""
    return ([f"changed {n}" for n in sorted(set(now) & set(registered)) if now[n] != registered[n]]
            + [f"missing {n}" for n in sorted(set(registered) - set(now))]
            + [f"added {n}" for n in sorted(set(now) - set(registered))])


def verify_model(node: Node, model_id: str, *, check_merge: bool = True) -> dict[str, Any]:
    """Re-check a federated model: weights hash, every file of the artifact (tokenizer, config, card, ...),
    agreement, every manifest and contribution signature, the shared arrays against the last manifest and
    (check_merge) the weights against the arrays. Raises `ChainBroken` naming the first break.

    A model registered before per-file hashes were recorded has only its weights checked: the result's
    "files_checked" is False for it."""
    from federation.agreement import verify_agreement

    entry = node.store.get_model(model_id)
    if entry.kind != MODEL_KIND:
        raise ChainBroken(f"model {entry.id} is {entry.kind!r}, not federated: it has no manifest chain to verify; "
                          "only federated models carry one: `rewardnode models` lists them (kind 'federated')")
    path = Path(entry.path)
    weights = path / WEIGHTS_FILE
    prov = entry.provenance
    files = prov.get(FILES_KEY)  # None: registered before per-file hashes; the result's "files_checked" says so
    now = artifact_files_sha256(path) if files is not None else {}  # the weights are hashed once
    weights_sha = now.get(WEIGHTS_FILE) or (file_sha256(weights) if weights.is_file() else None)
    if weights_sha != entry.sha256:
        raise ChainBroken(f"{weights} is missing or does not hash to the registered sha256 {entry.sha256[:16]}...")
    if files is not None and (not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values())):
        raise ChainBroken(f"the registry's {FILES_KEY} of model {entry.id} is not a {{file: sha256}} object; "
                          "the registry entry was altered: restore the node's store from a backup")
    if files is not None:
        changed = changed_files(now, files)
        if changed:
            raise ChainBroken(f"files of {path} differ from those registered: {', '.join(changed)}; the "
                              "artifact was altered after registration: restore it from a trusted copy "
                              "(or fetch it again)")
    try:
        agreement = verify_agreement(str(prov["agreement"]).encode("utf-8"))
    except (KeyError, FederationError) as exc:
        raise ChainBroken(f"the model's agreement does not verify: {exc}") from None
    if agreement.federation_id != prov.get("federation_id"):
        raise ChainBroken("the provenance names another federation than its signed agreement")
    arrays_file = path / SHARED_ARRAYS_FILE
    try:
        arrays = decode_arrays(arrays_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ChainBroken(f"{arrays_file} is missing or damaged: {exc}") from None
    digest = arrays_sha256(arrays)
    if digest != prov.get("shared_arrays_sha256"):
        raise ChainBroken(f"{arrays_file} hashes to {digest[:16]}..., the registry recorded "
                          f"{str(prov.get('shared_arrays_sha256'))[:16]}...")
    manifests = verify_chain(list(prov.get("manifests", [])), agreement, final_sha256=digest)
    if check_merge:
        from safetensors.torch import load_file

        model, _ = build_model(agreement)
        load_shared(model, arrays)
        merge = getattr(model, "merge_and_unload", None)
        merged = merge() if callable(merge) else model
        saved = load_file(str(weights))
        state = merged.state_dict()
        for key, tensor in saved.items():
            if key in state and not torch.allclose(state[key].float(), tensor.float(), atol=1e-5):
                raise ChainBroken(f"weight {key} of {weights} differs from base + the federated shared arrays")
    return {"model": entry.id, "federation": agreement.name, "rounds": len(manifests),
            "files": sorted(files) if isinstance(files, dict) else [WEIGHTS_FILE],
            "files_checked": isinstance(files, dict),
            "contributors": sorted({c["sender"] for m in manifests for c in m.contributions}),
            "rejections": sum(len(m.rejections) for m in manifests)}


# --- ensemble ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnsembleScore:
    """One (prompt, response) scored by both models."""

    reward: float
    """Weighted mean of the standardized personal and federated rewards."""
    personal: float
    federated: float
    disagreement: float
    """|z_personal - z_federated|: large when the node's own preferences and the federation's differ."""


class EnsembleScorer:
    """Personal + federated reward models; rewards are standardized per model before mixing."""

    def __init__(self, personal: str | Path, federated: str | Path, *, personal_weight: float = 0.5,
                 reference: tuple[list[str], list[str]] | None = None) -> None:
        if not 0.0 <= personal_weight <= 1.0:
            raise ValueError(f"personal_weight must be in [0, 1], got {personal_weight}")
        self.personal = RewardScorer(personal)
        self.federated = RewardScorer(federated)
        self.w = personal_weight
        self._stats: tuple[float, float, float, float] | None = None
        if reference is not None:  # fixed standardization, so a single response scores the same every time
            p, f = np.array(self.personal.score(*reference)), np.array(self.federated.score(*reference))
            self._stats = (float(p.mean()), float(p.std() or 1.0), float(f.mean()), float(f.std() or 1.0))

    def score(self, prompts: list[str], responses: list[str]) -> list[EnsembleScore]:
        p = np.array(self.personal.score(prompts, responses))
        f = np.array(self.federated.score(prompts, responses))
        mp, sp, mf, sf = self._stats or (float(p.mean()), float(p.std() or 1.0), float(f.mean()), float(f.std() or 1.0))
        zp, zf = (p - mp) / sp, (f - mf) / sf
        return [EnsembleScore(float(self.w * a + (1 - self.w) * b), float(x), float(y), float(abs(a - b)))
                for a, b, x, y in zip(zp, zf, p, f, strict=True)]


def read_join(home: Path, name: str) -> dict[str, Any]:
    """What `federation join` recorded: "coordinator" (HOST:PORT), and "federation_id" and "ca" (a file
    name in the federation's folder) where present; a damaged file is refused by name."""
    path = federation_dir(home, name) / JOIN_FILE
    rejoin = (f"run `rewardnode federation join {name} --coordinator HOST:PORT --agreement FILE --ca CA` "
              f"(CA: the coordinator's federation/{name}/tls/ca.pem)")
    if not path.is_file():
        raise NodeError(f"this node has not joined federation {name!r}; {rejoin}")
    try:
        value = parse_json(path.read_bytes())
    except ValueError as exc:  # CanonicalEncodingError: not UTF-8, not JSON
        raise NodeError(f"{path} is damaged ({str(exc).split(';')[0]}); {rejoin} to write it again") from None
    problem = join_problem(value)
    if problem:
        raise NodeError(f"{path} is damaged ({problem}); {rejoin} to write it again")
    joined: dict[str, Any] = value
    return joined


def join_problem(value: Any) -> str:
    """Why `value` is not a join record (see read_join), or "" if it is one."""
    if not isinstance(value, dict):
        return f"a JSON {type(value).__name__}, not an object"
    coordinator = value.get("coordinator")
    if not isinstance(coordinator, str) or not coordinator.strip():
        return "no coordinator address (a HOST:PORT string)"
    for key in ("federation_id", "ca"):
        if key in value and not (isinstance(value[key], str) and value[key]):
            return f"{key} is not a non-empty string"
    ca = value.get("ca")
    if isinstance(ca, str) and (Path(ca).name != ca or ca in (".", "..")):
        return f"ca {ca!r} is not a file name in the federation's folder"
    return ""


def write_join(home: Path, name: str, values: dict[str, Any]) -> None:
    """Record how this node reaches federation `name`'s coordinator (written whole, atomically)."""
    text = json.dumps(values, indent=2, sort_keys=True) + "\n"
    replace_file(federation_dir(home, name) / JOIN_FILE, text.encode())


def agreement_for(home: Path, name: str) -> Agreement:
    return load_agreement(federation_dir(home, name) / AGREEMENT_FILE)


# --- running a federation ---------------------------------------------------------------------------


def coordinator_state(node: Node, agreement: Agreement, *, resume: bool = False) -> Any:
    """The coordinator's state for `agreement`: round 0 with the initial arrays from the agreement seed,
    or with resume=True after the rounds saved under federation/<name>/rounds/ (checked first)."""
    from federation.rounds import FederationState

    state = FederationState(agreement, node.identity, initial_arrays(agreement))
    done = finished_rounds(node.config.home, agreement.name)
    if not resume or not done:
        return state
    rounds = done[0].parent
    last = rounds / f"global-{len(done):04d}.arrays"
    hint = f"fix or move {rounds} aside (or run with --restart, which keeps it as rounds-previous-*)"
    if [p.name for p in done] != [f"round-{i:04d}.manifest.json" for i in range(1, len(done) + 1)]:
        raise NodeError(f"the saved rounds in {rounds} are not numbered 1..{len(done)}; {hint}")
    if not last.is_file():
        raise NodeError(f"{last} is missing: round {len(done)}'s global model cannot be resumed from; {hint}")
    try:
        state.restore([p.read_text().strip() for p in done], decode_arrays(last.read_bytes()))
    except (ChainBroken, ValueError) as exc:
        raise NodeError(f"cannot resume federation {agreement.name!r} from {rounds}: {exc}; {hint}") from None
    return state


def finished_rounds(home: Path, name: str) -> list[Path]:
    """The signed manifests of the rounds this coordinator finished, in order."""
    return sorted((federation_dir(home, name) / ROUNDS_DIR).glob("round-*.manifest.json"))


def prepare_rounds(home: Path, name: str, *, resume: bool, restart: bool) -> int:
    """Check what an earlier run left before a coordinator runs `name`; returns the rounds to resume after.

    Without resume or restart, saved rounds are refused (a new run would overwrite them); restart moves
    them aside to rounds-previous-<UTC time>/ and starts at round 1; resume continues after them.
    """
    if resume and restart:
        raise NodeError("--resume and --restart exclude each other: continue the saved rounds or start over")
    done = finished_rounds(home, name)
    if not done:
        return 0
    rounds = done[0].parent
    if restart:
        aside = rounds.with_name(f"{ROUNDS_DIR}-previous-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        rounds.rename(aside)
        log.info("moved the %d round(s) of the earlier run to %s", len(done), aside)
        return 0
    if not resume:
        total = agreement_for(home, name).rounds
        then = (f"continue with round {len(done) + 1}" if len(done) < total else
                f"send the finished model (all {total} rounds are done) to the members again")
        raise NodeError(f"federation {name!r} has {len(done)} finished round(s) from an earlier run in {rounds}: "
                        f"pass --resume to {then}, or --restart to keep them aside and start again at round 1")
    return len(done)


def save_round(node: Node, agreement: Agreement, result: Any) -> None:
    """Keep the signed manifest and the new global arrays under federation/<name>/rounds/."""
    rounds = federation_dir(node.config.home, agreement.name) / ROUNDS_DIR
    rounds.mkdir(parents=True, exist_ok=True)
    (rounds / f"round-{result.round:04d}.manifest.json").write_text(result.manifest + "\n")
    (rounds / f"global-{result.round:04d}.arrays").write_bytes(encode_arrays(result.global_arrays))


def _constant(participant: NodeParticipant) -> Any:
    return lambda _context: participant


def run_local(coordinator_home: Path, member_homes: list[Path], name: str, *,
              on_reply: Any = None, before_round: Any = None, resume: bool = False,
              on_resume: Any = None) -> Any:
    """Run federation `name` in one process: the real ServerApp loop and ClientApps on a LocalGrid.

    Each member is a node home on this machine that has joined the federation. `on_reply(node_id,
    message)` sees every reply a ClientApp sends; `before_round(grid, round)` can inject faults;
    `on_resume(rounds_done)` is called once the saved rounds of a resumed run have been checked.
    """
    from flwr.app import Context, RecordDict

    from federation.apps import make_client_app, run_federation
    from federation.local_grid import LocalGrid

    coord = Node.open(coordinator_home)
    agreement = agreement_for(coord.config.home, name)
    members = [Node.open(h) for h in member_homes]
    participants = {i + 1: NodeParticipant(m, agreement_for(m.config.home, name)) for i, m in enumerate(members)}
    nodes = {i: (make_client_app(_constant(p)), Context(run_id=1, node_id=i, node_config={}, state=RecordDict(),
                                                         run_config={}))
             for i, p in participants.items()}
    grid = LocalGrid(nodes, on_reply=on_reply)
    try:
        state = coordinator_state(coord, agreement, resume=resume)
        if on_resume is not None and state.round:
            on_resume(state.round)
        if before_round is not None and state.round < agreement.rounds:
            before_round(grid, state.round + 1)

        def after(result: Any) -> None:
            save_round(coord, agreement, result)
            if before_round is not None and result.round < agreement.rounds:
                before_round(grid, result.round + 1)

        return run_federation(grid, state, on_round=after, node_wait_s=0.0)
    finally:
        grid.shutdown()
        for n in (coord, *members):
            n.close()
