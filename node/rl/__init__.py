"""RL fine-tuning of the owner's LLM against the node's reward model(s), with reward-hacking guards.

    from node.rl.config import RLConfig; from node.rl.policy import load_policy, PolicyWithValue
    from node.rl.rewards import resolve_reward; from node.rl.ppo import train
    model, tokenizer = load_policy("default")                      # SmolLM2-135M-Instruct (from GGUF, cached)
    policy = PolicyWithValue(model, lora=True)
    result = train(policy, tokenizer, resolve_reward("personal", store), prompts, RLConfig(algo="ppo"))

torch and transformers are imported by the submodules; import them directly to keep this light.
"""

from node.rl.config import RLConfig

__all__ = ["RLConfig"]
