"""The node's private reward model: data pipeline, losses, training, metrics and the saved artifact.

    from node.rm import TrainConfig, split_by_prompt, train_reward_model, save_reward_model, RewardScorer
    train, dev = split_by_prompt(pairs, config.dev_fraction, config.seed)
    result = train_reward_model(train, dev, config, out_dir=run_dir)
    sha = save_reward_model(result.model, result.tokenizer, model_dir, card={..., "config": config.to_dict()})
    RewardScorer(model_dir).score(prompts, responses)
"""

from node.rm.artifact import RewardScorer, read_card, save_reward_model
from node.rm.config import TrainConfig
from node.rm.data import (
    LengthGroupedBatchSampler,
    PairCollator,
    PairEncoder,
    PreferencePair,
    pairs_from_ratings,
    split_by_prompt,
    tokenize_pairs,
    truncate_pair,
)
from node.rm.evaluate import EvalReport, SliceMetrics, evaluate_pairs, report_from_rewards
from node.rm.loss import bradley_terry_loss, centering_loss, reward_loss, soft_label_loss
from node.rm.model import load_backbone
from node.rm.train import TrainResult, train_reward_model

__all__ = [
    "EvalReport",
    "LengthGroupedBatchSampler",
    "PairCollator",
    "PairEncoder",
    "PreferencePair",
    "RewardScorer",
    "SliceMetrics",
    "TrainConfig",
    "TrainResult",
    "bradley_terry_loss",
    "centering_loss",
    "evaluate_pairs",
    "load_backbone",
    "pairs_from_ratings",
    "read_card",
    "report_from_rewards",
    "reward_loss",
    "save_reward_model",
    "soft_label_loss",
    "split_by_prompt",
    "tokenize_pairs",
    "train_reward_model",
    "truncate_pair",
]
