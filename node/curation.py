"""Aggregation over the node's store: votes in, strengths, soft labels, agreement and a queue out.

The math lives in node/aggregation (pure numpy); this module maps the store's content-hash ids to
dense indices, runs it, saves the results and builds the summary the CLI prints.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from node.aggregation import REASONS, aggregate
from storage.store import AmbiguousItem, PairLabel, Store

OUTCOME_CODES = {"A": 0, "B": 1, "tie": 2, "both_bad": 3}


class _Index:
    """Dense integer ids for string keys, in first-seen order."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.keys: list[str] = []

    def __call__(self, key: str) -> int:
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.keys)
            self.keys.append(key)
        return i


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 4)


def aggregate_store(store: Store, *, top: int = 10) -> dict[str, Any]:
    """Aggregate everything stored, save the results (a new aggregation run) and summarize them."""
    rows = store.comparison_rows()
    rankings = store.ranking_rows()
    responses, prompts, annotators, sources = _Index(), _Index(), _Index(), _Index()
    response_prompt: list[int] = []

    def response(rid: str, pid: str) -> int:
        before = len(responses.keys)
        i = responses(rid)
        if len(responses.keys) > before:
            response_prompt.append(prompts(pid))
        return i

    a = np.fromiter((response(r, p) for r, p in zip(rows.response_a_id, rows.prompt_id, strict=True)), np.int64,
                    len(rows.prompt_id))
    b = np.fromiter((response(r, p) for r, p in zip(rows.response_b_id, rows.prompt_id, strict=True)), np.int64,
                    len(rows.prompt_id))
    outcome = np.fromiter((OUTCOME_CODES[o] for o in rows.outcome), np.int8, len(rows.outcome))
    annotator = np.fromiter((-1 if n is None else annotators(n) for n in rows.annotator), np.int64, len(rows.annotator))
    source = np.fromiter((sources(s) for s in rows.source), np.int64, len(rows.source))
    ranked = [np.array([response(r, rk.prompt_id) for r in rk.response_ids], np.int64) for rk in rankings]
    ranking_annotator = np.array([-1 if rk.annotator is None else annotators(rk.annotator) for rk in rankings], np.int64)
    ranking_source = np.array([sources(rk.source) for rk in rankings], np.int64)

    result = aggregate(np.asarray(response_prompt, np.int64), a, b, outcome, annotator, source,
                       ranked, ranking_annotator, ranking_source)

    rid = responses.keys
    pid = prompts.keys
    pairs = result.pairs
    labels = [PairLabel(prompt_id=pid[int(pairs.prompt[k])], response_lo_id=rid[int(pairs.lo[k])],
                        response_hi_id=rid[int(pairs.hi[k])], p_lo=None if math.isnan(pairs.p_lo[k]) else float(pairs.p_lo[k]),
                        n_votes=int(pairs.n_votes[k]), n_ties=int(pairs.n_ties[k]), n_both_bad=int(pairs.n_both_bad[k]))
              for k in range(len(pairs.lo))]
    rel = result.reliability
    reliability = [(annotators.keys[int(j)], float(rel.reliability[k]), int(rel.n_labels[k]))
                   for k, j in enumerate(rel.annotators)]
    queue = result.ambiguous
    ambiguous = [AmbiguousItem(prompt_id=pid[int(queue.prompt[k])], response_lo_id=rid[int(queue.lo[k])],
                               response_hi_id=rid[int(queue.hi[k])], reason=REASONS[int(queue.reason[k])],
                               score=float(queue.score[k]))
                 for k in range(len(queue.lo))]
    summary: dict[str, Any] = {
        "comparisons": len(rows.prompt_id),
        "rankings": len(rankings),
        "prompts": len(pid),
        "responses": len(rid),
        "pairs": len(labels),
        "pairable_pairs": result.n_pairable_units,
        "alpha": {
            "overall": _nan_to_none(result.alpha_overall),
            "by_source": {sources.keys[s]: _nan_to_none(v) for s, v in sorted(result.alpha_by_source.items())},
        },
        "strengths": {"method": "bradley-terry+plackett-luce, L2 prior 0.1, ties half",
                      "converged": result.strengths_converged, "iterations": result.strengths_iterations},
        "annotators": sorted(({"annotator": n, "reliability": round(r, 4), "labels": c} for n, r, c in reliability),
                             key=lambda x: x["reliability"]),
        "timings_s": {k: round(v, 3) for k, v in result.timings.items()},
    }
    strengths = [(rid[i], float(s)) for i, s in enumerate(result.strengths)]
    run_id = store.save_aggregation(summary, strengths, labels, reliability, ambiguous)
    summary["run"] = run_id
    summary["ambiguous_total"] = len(ambiguous)
    texts = store.response_texts([x for item in ambiguous[:top] for x in (item.response_lo_id, item.response_hi_id)])
    prompt_texts = store.prompt_texts([item.prompt_id for item in ambiguous[:top]])
    summary["ambiguous"] = [
        {"reason": item.reason, "score": round(item.score, 3), "prompt": prompt_texts[item.prompt_id],
         "response_lo": texts[item.response_lo_id], "response_hi": texts[item.response_hi_id]}
        for item in ambiguous[:top]
    ]
    return summary


def _clip(text: str, n: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable report of `rewardnode aggregate`."""
    alpha = summary["alpha"]

    def fmt(x: float | None) -> str:
        return "n/a (no pair labeled twice)" if x is None else f"{x:.3f}"

    lines = [
        f"aggregated {summary['comparisons']:,} comparisons and {summary['rankings']:,} rankings over "
        f"{summary['responses']:,} responses to {summary['prompts']:,} prompts (run {summary['run']})",
        f"Bradley-Terry: converged={summary['strengths']['converged']} in {summary['strengths']['iterations']} iterations",
        f"Krippendorff's alpha (nominal) overall: {fmt(alpha['overall'])}  [{summary['pairable_pairs']:,} pairs labeled twice or more]",
    ]
    lines += [f"  {name}: {fmt(value)}" for name, value in alpha["by_source"].items()]
    if summary["annotators"]:
        lines.append("labeler reliability (Dawid-Skene), least reliable first:")
        lines += [f"  {a['annotator']:<24} {a['reliability']:.3f}  ({a['labels']} labels)" for a in summary["annotators"][:10]]
    lines.append(f"ambiguity queue: {summary['ambiguous_total']:,} pairs need re-labeling; top {len(summary['ambiguous'])}:")
    for item in summary["ambiguous"]:
        lines.append(f"  [{item['reason']} {item['score']:.2f}] {_clip(item['prompt'])}")
        lines.append(f"      lo: {_clip(item['response_lo'])}")
        lines.append(f"      hi: {_clip(item['response_hi'])}")
    return "\n".join(lines)
