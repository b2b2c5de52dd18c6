"""One end-to-end check with a real (tiny, untrained) reward model saved as an artifact."""

from __future__ import annotations

import torch

from node.http import ScorerRegistry, create_app
from node.rm.artifact import RewardScorer, save_reward_model
from node.rm.model import load_backbone
from tests.node.rm.conftest import bert_dir  # noqa: F401 - the tiny BERT fixture

from .conftest import SCORER, make_config


async def test_server_scores_like_the_artifact_scorer(bert_dir, tmp_path, aiohttp_client) -> None:  # noqa: F811
    torch.manual_seed(0)
    model, tokenizer = load_backbone(str(bert_dir))
    path = tmp_path / "rm"
    save_reward_model(model, tokenizer, path, {"scoring": {"max_length": 48, "min_prompt_tokens": 8}})
    registry = ScorerRegistry.from_artifacts({"tiny": path}, batch_size=2)
    client = await aiohttp_client(create_app(make_config(), scorers=registry))

    models = await (await client.get("/v1/models", headers=SCORER)).json()
    assert models["models"] == [{"id": "tiny", "default": True, "loaded": False}]  # loaded on first use

    prompts = ["what is w1?", "tell me about w7 " * 30, "help"]
    responses = ["w1 is excellent", "the answer", "wonderful w3 w4 w5"]
    resp = await client.post("/v1/score", headers=SCORER, json={
        "items": [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    expected = RewardScorer(path).score(prompts, responses)
    torch.testing.assert_close(torch.tensor(body["scores"]), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert len(set(body["scores"])) == 3  # a real model, not a constant

    resp = await client.post("/v1/compare", headers=SCORER, json={"prompt": prompts[0], "responses": responses[:2]})
    compare = await resp.json()
    r = RewardScorer(path).score(prompts[:1] * 2, responses[:2])
    torch.testing.assert_close(compare["p_first_better"], torch.sigmoid(torch.tensor(r[0] - r[1])).item(),
                               rtol=1e-5, atol=1e-6)
    assert (await (await client.get("/v1/models", headers=SCORER)).json())["models"][0]["loaded"] is True
