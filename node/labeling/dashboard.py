"""GET /dashboard (admin): what the node's store holds, as one server-rendered page with inline SVG.

Sections: records per source and campaign progress; agreement (Krippendorff's alpha) and labeler
reliability from the latest aggregation; the open ambiguity queue; registered models with their
metrics; training runs, federation rounds and peers as the model registry's provenance records them.
Every section says "none yet" when the store has nothing for it.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from node.http import Role
from node.labeling.auth import SESSION_KEY, page_principal
from node.labeling.html import bar_chart, h, none_yet, page, table
from node.labeling.service import SERVICE_KEY, LabelingService, csrf_token
from storage.types import ModelEntry

QUEUE_ROWS = 20


def _clip(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _gather(service: LabelingService) -> dict[str, Any]:
    """Everything the page shows, read on the store's worker thread."""
    store = service.store
    run = store.latest_aggregation()
    queue = store.ambiguity_queue(status="open", limit=QUEUE_ROWS)
    ids = [x for q in queue for x in (q.response_lo_id, q.response_hi_id)]
    return {
        "stats": store.stats(), "campaigns": store.list_campaigns(), "run": run,
        "reliability": store.aggregation_reliability(run.id) if run is not None else [],
        "queue": queue, "responses": store.response_texts(ids),
        "prompts": store.prompt_texts([q.prompt_id for q in queue]), "models": store.list_models(),
    }


def _sources(data: dict[str, Any]) -> str:
    stats = data["stats"]
    if not stats:
        return none_yet("Records")
    rows = [(name, s.prompts, s.responses, s.comparisons, s.rankings, s.ratings, s.feedback, s.demonstrations,
             s.annotators) for name, s in stats.items()]
    chart = bar_chart("Comparisons per source", [(n, float(s.comparisons)) for n, s in stats.items()])
    return table(("source", "prompts", "responses", "comparisons", "rankings", "ratings", "feedback",
                  "demonstrations", "annotators"), rows) + chart


def _campaigns(data: dict[str, Any]) -> str:
    campaigns = [c for c in data["campaigns"] if c.pairs]
    if not campaigns:
        return none_yet("Campaigns")
    rows = [(c.name, c.overlap, c.pairs, c.complete, c.labels, c.labelers) for c in campaigns]
    chart = bar_chart("Pairs at overlap (%)", [(c.name, 100.0 * c.complete / c.pairs) for c in campaigns],
                      max_value=100.0, fmt="{:.0f}%")
    return table(("campaign", "overlap", "pairs", "pairs at overlap", "labels", "labelers"), rows) + chart


def _agreement(data: dict[str, Any]) -> str:
    run = data["run"]
    if run is None:
        return none_yet("Aggregation runs (run `rewardnode aggregate`)")
    alpha = run.summary.get("alpha") or {}
    rows = [("overall", _fmt(alpha.get("overall")))] + [(k, _fmt(v)) for k, v in (alpha.get("by_source") or {}).items()]
    head = f"<p>Latest aggregation: run {run.id} at {h(run.created_at.isoformat(timespec='seconds'))}.</p>"
    return head + table(("Krippendorff's alpha (nominal)", "value"), rows)


def _reliability(data: dict[str, Any]) -> str:
    scores = data["reliability"]
    if not scores:
        return none_yet("Labeler reliability")
    rows = [(s.annotator, f"{s.reliability:.3f}", s.n_labels) for s in scores]
    chart = bar_chart("Reliability (Dawid-Skene)", [(s.annotator, s.reliability) for s in scores[:30]],
                      max_value=1.0, fmt="{:.2f}")
    return table(("labeler", "reliability", "labels"), rows) + chart


def _queue(data: dict[str, Any]) -> str:
    queue = data["queue"]
    if not queue:
        return none_yet("Open ambiguity queue")
    texts, prompts = data["responses"], data["prompts"]
    rows = [(q.reason, f"{q.score:.2f}", _clip(prompts.get(q.prompt_id, "")), _clip(texts.get(q.response_lo_id, "")),
             _clip(texts.get(q.response_hi_id, ""))) for q in queue]
    return table(("reason", "score", "prompt", "response", "response"), rows)


def _models(models: list[ModelEntry]) -> str:
    if not models:
        return none_yet("Models")
    rows = [(e.id, e.name, e.kind, e.base_model, e.created_at.isoformat(timespec="seconds"),
             _clip(json.dumps(e.metrics, sort_keys=True), 160)) for e in models]
    return table(("id", "name", "kind", "base model", "registered", "metrics"), rows)


def _training(models: list[ModelEntry]) -> str:
    runs = [e for e in models if e.kind == "personal"]
    if not runs:
        return none_yet("Training runs")
    rows = [(e.id, e.name, e.snapshot_id[:12] if e.snapshot_id else "-",
             ", ".join(map(str, e.provenance.get("sources") or [])) or "-",
             _clip(json.dumps(e.provenance.get("counts") or {}, sort_keys=True), 100)) for e in runs]
    return table(("model", "name", "snapshot", "sources", "counts"), rows)


def _federation(models: list[ModelEntry]) -> tuple[str, str]:
    fed = [e for e in models if e.kind == "federated"]
    if not fed:
        return none_yet("Federation rounds"), none_yet("Peers")
    rows = [(e.id, e.provenance.get("federation", "-"), len(e.provenance.get("manifests") or []),
             e.metrics.get("rounds", "-")) for e in fed]
    peers: set[str] = set()
    for e in fed:
        for key in ("peers", "members", "contributors"):
            value = e.provenance.get(key)
            if isinstance(value, list):
                peers.update(str(v) for v in value)
    peer_html = (table(("peer",), [(p,) for p in sorted(peers)]) if peers
                 else "<p class=none>Peers: none recorded in the model registry yet</p>")
    return table(("model", "federation", "manifests", "rounds"), rows), peer_html


async def dashboard(request: web.Request) -> web.Response:
    """GET /dashboard."""
    principal = await page_principal(request, Role.ADMIN)
    service = request.config_dict[SERVICE_KEY]
    data = await service.call(_gather, service)
    models = data["models"]
    federation, peers = _federation(models)
    sections = [("Records per source", _sources(data)), ("Campaigns", _campaigns(data)),
                ("Agreement", _agreement(data)), ("Labeler reliability", _reliability(data)),
                ("Ambiguity queue (open)", _queue(data)), ("Models", _models(models)),
                ("Training runs", _training(models)), ("Federation rounds", federation), ("Peers", peers)]
    body = "<h1>Dashboard</h1>" + "".join(
        f"<section class=card id='{h(title.split()[0].lower())}'><h2>{h(title)}</h2>{html}</section>"
        for title, html in sections)
    session = request.get(SESSION_KEY)
    logout = (f"<form method=post action=/logout style='margin-left:auto'><input type=hidden name=csrf "
              f"value='{h(csrf_token(session.secret))}'><button>Sign out {h(principal.name)}</button></form>"
              if session is not None else "")
    return page("Dashboard", body, nav=f"<a href=/label>labeling</a>{logout}")
