"""Benchmark: our PPO vs TRL 1.12 PPOTrainer, our GRPO vs TRL 1.16 GRPOTrainer, same tiny models and batch.

    .venv/bin/pip install --no-deps --target /tmp/trl112 trl==1.12.0
    .venv/bin/pip install --no-deps --target /tmp/trl116 trl==1.16.0
    .venv/bin/python scripts/bench_rl.py [--steps 10] [--smollm-steps 2]

Each contender runs in its own subprocess (clean peak RSS, its own TRL on sys.path), fp32 on CPU with one
torch thread. Same policy (2-layer Llama, hidden 64), same reward model (a Llama sequence classifier with the
policy's tokenizer, since TRL's PPO scores token ids), same prompts, batch, response length, epochs and
minibatches. "reward after" = mean RM score of 32 sampled responses of the trained policy (same seed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRL = {"trl-ppo": "/tmp/trl112", "trl-grpo": "/tmp/trl116"}
RESPONSE_LEN, PPO_BATCH, GROUP, GRPO_PROMPTS, KL = 16, 8, 4, 4, 0.05


def build(folder: Path) -> tuple[Path, Path, list[str]]:
    """Tiny policy and RM folders sharing one tokenizer, plus prompts."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    sys.path.insert(0, str(ROOT))
    from tests.node.rl.conftest import prompts, save_tiny_llama

    policy = save_tiny_llama(folder / "policy")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy)
    cfg = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**cfg)).save_pretrained(policy)  # hidden 64 instead of the tests' 32
    torch.manual_seed(1)
    rm = LlamaForSequenceClassification(LlamaConfig(**cfg, num_labels=1))
    from node.rm.artifact import save_reward_model

    save_reward_model(rm, tok, folder / "rm", {"name": "bench rm", "base_model": "tiny-llama",
                                               "scoring": {"max_length": 64, "min_prompt_tokens": 8}})
    return policy, folder / "rm", prompts(64)


def evaluate(model, tok, scorer, prompts: list[str]) -> float:  # type: ignore[no-untyped-def]
    import torch

    from node.rl.generate import sample_texts

    torch.manual_seed(123)
    texts = sample_texts(model, tok, prompts[:32], 1, max_new_tokens=RESPONSE_LEN, chat_template=False)
    flat = [t[0] for t in texts]
    return sum(scorer.score(prompts[:32], flat)) / 32


def worker(name: str, folder: Path, steps: int) -> dict[str, float | str]:
    import torch

    torch.set_num_threads(1)
    os.environ["HF_HUB_OFFLINE"] = "1"
    sys.path.insert(0, str(ROOT))
    if name in TRL:
        sys.path.insert(0, TRL[name])
    from node.rm.artifact import RewardScorer
    from tests.node.rl.conftest import prompts as make_prompts

    policy_dir, rm_dir, prompts = folder / "policy", folder / "rm", make_prompts(64)
    scorer = RewardScorer(rm_dir)
    if name == "smollm-ppo":
        from node.rl.config import RLConfig
        from node.rl.policy import PolicyWithValue, load_policy
        from node.rl.ppo import train

        model, tok = load_policy("default")
        policy = PolicyWithValue(model, lora=True)
        cfg = RLConfig(steps=steps, batch_prompts=4, max_new_tokens=32, num_minibatches=2, ppo_epochs=2)
        t0 = time.perf_counter()
        result = train(policy, tok, lambda p, r: scorer.score(p, r), ["Tell me about the sun."] * 4, cfg)
        per_step = (time.perf_counter() - t0) / len(result.history)
        return {"name": name, "s_per_step": per_step, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "reward_after": float("nan"), "note": "LoRA r16, 4 prompts x 32 new tokens, 2 epochs x 2 minibatches"}
    if name.startswith("ours"):
        from node.rl.config import RLConfig
        from node.rl.policy import PolicyWithValue, load_policy
        from node.rl.ppo import train

        model, tok = load_policy(policy_dir)
        algo = name.split("-")[1]
        policy = PolicyWithValue(model, lora=False, value_head=algo == "ppo")
        if algo == "ppo":
            cfg = RLConfig(steps=steps, batch_prompts=PPO_BATCH, max_new_tokens=RESPONSE_LEN, num_minibatches=2,
                           ppo_epochs=2, learning_rate=3e-4, kl_coef=KL, chat_template=False, whiten_rewards=False,
                           missing_eos_penalty=0.0, kl_budget=0.0, vf_coef=0.1)
        else:
            cfg = RLConfig(algo="grpo", steps=steps, batch_prompts=GRPO_PROMPTS, group_size=GROUP,
                           max_new_tokens=RESPONSE_LEN, num_minibatches=1, ppo_epochs=1, learning_rate=3e-4,
                           kl_coef=KL, kl_estimator="k3", chat_template=False, missing_eos_penalty=0.0, kl_budget=0.0)
        t0 = time.perf_counter()
        train(policy, tok, lambda p, r: scorer.score(p, r), prompts, cfg)
        per_step = (time.perf_counter() - t0) / steps
        reward = evaluate(policy.lm, tok, scorer, prompts)
    elif name == "trl-ppo":
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
        from trl.experimental.ppo import PPOConfig, PPOTrainer

        tok = AutoTokenizer.from_pretrained(policy_dir)
        tok.padding_side = "left"
        ds = Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts]})
        args = PPOConfig(output_dir=str(folder / "trl-ppo"), per_device_train_batch_size=PPO_BATCH,
                         gradient_accumulation_steps=1, num_mini_batches=2, num_ppo_epochs=2, learning_rate=3e-4,
                         total_episodes=PPO_BATCH * steps, response_length=RESPONSE_LEN, stop_token="eos",
                         kl_coef=KL, vf_coef=0.1, num_sample_generations=0, report_to=[], use_cpu=True, bf16=False,
                         fp16=False, local_rollout_forward_batch_size=PPO_BATCH, save_strategy="no",
                         logging_steps=1, seed=0, dataloader_num_workers=0)
        trainer = PPOTrainer(args=args, processing_class=tok,
                             model=AutoModelForCausalLM.from_pretrained(policy_dir),
                             ref_model=AutoModelForCausalLM.from_pretrained(policy_dir),
                             reward_model=AutoModelForSequenceClassification.from_pretrained(rm_dir),
                             value_model=AutoModelForSequenceClassification.from_pretrained(rm_dir),
                             train_dataset=ds)
        t0 = time.perf_counter()
        trainer.train()
        per_step = (time.perf_counter() - t0) / steps
        reward = evaluate(trainer.model.policy, tok, scorer, prompts)
    elif name == "trl-grpo":
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import GRPOConfig, GRPOTrainer

        tok = AutoTokenizer.from_pretrained(policy_dir)

        def rm_reward(prompts: list[str], completions: list[str], **_: object) -> list[float]:
            return scorer.score(prompts, completions)

        args = GRPOConfig(output_dir=str(folder / "trl-grpo"), per_device_train_batch_size=GRPO_PROMPTS * GROUP,
                          num_generations=GROUP, max_completion_length=RESPONSE_LEN, learning_rate=3e-4,
                          beta=KL, max_steps=steps, report_to=[], use_cpu=True, bf16=False, fp16=False,
                          save_strategy="no", logging_steps=1, seed=0, gradient_accumulation_steps=1,
                          dataloader_num_workers=0, temperature=1.0)
        trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy_dir), reward_funcs=rm_reward,
                              args=args, train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok)
        t0 = time.perf_counter()
        trainer.train()
        per_step = (time.perf_counter() - t0) / steps
        reward = evaluate(trainer.model, tok, scorer, prompts)
    else:
        raise ValueError(name)
    return {"name": name, "s_per_step": per_step, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "reward_after": reward}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--smollm-steps", type=int, default=2, help="PPO steps on SmolLM2-135M (0: skip)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, Path(args.folder), args.steps)))
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-rl-"))
    sys.path.insert(0, str(ROOT))
    build(folder)
    results: dict[str, dict] = {}
    names = ["ours-ppo", "trl-ppo", "ours-grpo", "trl-grpo"] + (["smollm-ppo"] if args.smollm_steps else [])
    for name in names:
        steps = args.smollm_steps if name == "smollm-ppo" else args.steps
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--folder", str(folder), "--steps",
                               str(steps)], capture_output=True, text=True, env=env, cwd=ROOT)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
            results[name] = {"name": name, "error": " | ".join(tail)}
        else:
            results[name] = json.loads(line[7:])
        print(json.dumps(results[name]), flush=True)
    print(f"\n| run | s/step | peak RSS MB | reward after {args.steps} steps |\n| --- | --- | --- | --- |")
    for r in results.values():
        if "error" in r:
            print(f"| {r['name']} | failed: {r['error'][:300]} | | |")
        else:
            print(f"| {r['name']} | {r['s_per_step']:.3f} | {r['peak_rss_mb']:.0f} | {r['reward_after']:.4f} |")
    for ours, theirs, target in (("ours-ppo", "trl-ppo", 1.5), ("ours-grpo", "trl-grpo", 1.0)):
        if "s_per_step" in results.get(ours, {}) and "s_per_step" in results.get(theirs, {}):
            ratio = results[theirs]["s_per_step"] / results[ours]["s_per_step"]
            print(f"{ours} is {ratio:.2f}x the step speed of {theirs} (target >= {target}x)")


if __name__ == "__main__":
    main()
