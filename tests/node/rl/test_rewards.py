"""Reward sources: an HTTP reward against the real /v1/score app in-process, ensembles, and what a reward
folder must hold."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence
from pathlib import Path

import pytest
from transformers import BertConfig, BertForSequenceClassification

from node.demo_models import wordpiece_tokenizer
from node.http import ScorerRegistry, ServerConfig, create_app
from node.rl.rewards import (
    BLANK_FLOOR,
    SERVER_MAX_BODY_BYTES,
    SERVER_MAX_ITEMS,
    EnsembleReward,
    FunctionReward,
    HttpReward,
    ModelReward,
)
from node.rm.artifact import NotARewardModelError, RewardScorer
from tests.node.rl.conftest import corpus


class Recording:
    """A scorer for the server that records the responses of every call; r = len(response)."""

    def __init__(self, inner: object | None = None) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        self.calls.append(list(responses))
        if self.inner is not None:
            return self.inner.score(prompts, responses)  # type: ignore[attr-defined, no-any-return]
        return [float(len(r)) for r in responses]


async def _url(aiohttp_server, scorer: Recording) -> str:
    app = create_app(ServerConfig(require_auth=False), scorers=ScorerRegistry.from_scorers({"m": scorer}))
    server = await aiohttp_server(app)
    return str(server.make_url("/v1/score"))


def test_the_http_limits_mirror_the_servers_defaults() -> None:
    assert SERVER_MAX_ITEMS == ServerConfig().max_items
    assert SERVER_MAX_BODY_BYTES == ServerConfig().max_body_bytes


async def test_http_reward_splits_a_large_batch_into_requests_the_server_accepts(aiohttp_server) -> None:
    """280 items (70 prompts x 4) used to be one request, refused with 422 (more than 256 items)."""
    scorer = Recording()
    reward = HttpReward(await _url(aiohttp_server, scorer), token="")
    responses = [f"answer {i} " + "x" * (i % 7) for i in range(280)]
    scored = await asyncio.to_thread(reward.score, ["a prompt"] * 280, responses)
    assert scored.scores == [float(len(r)) for r in responses]  # in order, concatenated
    assert [len(c) for c in scorer.calls] == [256, 24]
    # long texts: 200 items of 6,000 characters are over the 1 MiB body limit in one request
    scorer.calls.clear()
    long = [f"{i} " + "y" * 6000 for i in range(200)]
    scored = await asyncio.to_thread(reward.score, ["p"] * 200, long)
    assert scored.scores == [float(len(r)) for r in long]
    assert len(scorer.calls) > 1 and sum(len(c) for c in scorer.calls) == 200


async def test_http_reward_scores_blank_responses_without_sending_them(aiohttp_server, rm_dir: Path) -> None:
    """The server refuses blank responses (422); the local path scores them. Blank ones are not sent and get
    the lowest score of the batch; the others score as the same model scores them locally."""
    local = ModelReward(rm_dir)
    scorer = Recording(local.scorer)
    reward = HttpReward(await _url(aiohttp_server, scorer), token="")
    prompts = ["good cat", "bad dog", "sun", "rain", "tree"]
    responses = ["good dog leaf", "", "  \n\t", "bad cat rain", "red"]
    remote = await asyncio.to_thread(reward.score, prompts, responses)
    assert all(r.strip() for call in scorer.calls for r in call) and sum(map(len, scorer.calls)) == 3
    assert len(local.score(prompts, responses).scores) == 5  # the folder scores the blank ones itself
    sent = local.score([prompts[i] for i in (0, 3, 4)], [responses[i] for i in (0, 3, 4)]).scores
    assert [remote.scores[i] for i in (0, 3, 4)] == pytest.approx(sent, abs=1e-5)
    assert remote.scores[1] == remote.scores[2] == min(remote.scores[i] for i in (0, 3, 4))
    scorer.calls.clear()
    blank = await asyncio.to_thread(reward.score, ["p", "q"], ["", " "])
    assert blank.scores == [BLANK_FLOOR, BLANK_FLOOR] and scorer.calls == []


def test_an_ensemble_reports_its_members_raw_mean() -> None:
    """Standardized over the batch, the ensemble's scores average 0 whatever the responses: what it reports
    (the log's reward, the audit guard's input) is the mean of the members' raw scores."""
    ensemble = EnsembleReward([FunctionReward(lambda _p, r: [len(x) for x in r], "len"),
                               FunctionReward(lambda _p, r: [10.0 + x.count("good") for x in r], "good")])
    scored = ensemble(["p"] * 3, ["good", "good good cat", "dog"])
    assert statistics.fmean(scored.scores) == pytest.approx(0.0, abs=1e-9)
    assert scored.unstandardized == pytest.approx([(4 + 11) / 2, (13 + 12) / 2, (3 + 10) / 2])
    assert scored.reported == scored.unstandardized
    single = FunctionReward(lambda _p, r: [1.0] * len(r))(["p"], ["x"])
    assert single.reported == single.scores == [1.0]


def _classifier(out: Path, num_labels: int) -> Path:
    """A plain Hugging Face sequence classifier (no model card), as TRL or others save one."""
    tokenizer = wordpiece_tokenizer(list(corpus(3)), 80)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128,
                        pad_token_id=tokenizer.pad_token_id, num_labels=num_labels)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_folder_must_hold_a_reward_model(policy_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NotARewardModelError, match="holds a LlamaForCausalLM, not a reward model; pass a"):
        RewardScorer(policy_dir)
    with pytest.raises(ValueError, match="holds a classifier with 2 labels, not a reward model"):
        RewardScorer(_classifier(tmp_path / "two", 2))
    plain = RewardScorer(_classifier(tmp_path / "one", 1))  # one output, no model_card.json: a reward model
    assert plain.card == {}
    scores = plain.score(["good cat", "bad dog"], ["good", ""])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
