"""GET /dashboard (admin): what the node's store holds, as one server-rendered page with inline SVG.

Sections: records per source and campaign progress; agreement (Krippendorff's alpha) and labeler
reliability from the latest aggregation; the open ambiguity queue; registered models with their
metrics; training runs with their loss / dev-accuracy curves (from each personal model's card);
federation rounds from each federated model's manifest chain (contributors, examples, rejections);
and the peers the node knows (HOME/peers.json). Every section says "none yet" when it has nothing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from node.errors import NodeError
from node.http import Role
from node.labeling.auth import SESSION_KEY, page_principal
from node.labeling.html import bar_chart, h, line_chart, none_yet, page, table
from node.labeling.service import SERVICE_KEY, LabelingService, csrf_token
from storage.types import ModelEntry

QUEUE_ROWS = 20
FINGERPRINT = 12
"""Hex characters of a public key or hash shown in tables."""
HOME_KEY = web.AppKey("rewardnode.labeling.home", Path)
"""The node home (set by `labeling_features`): peers.json is read from it."""


def _clip(text: str, n: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _short(value: Any) -> str:
    return str(value)[:FINGERPRINT] if value else "-"


def _when_ms(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return datetime.fromtimestamp(value / 1000, UTC).isoformat(timespec="seconds")


def _card(path: str) -> dict[str, Any] | str:
    """The model card at `path`, or why it cannot be read."""
    from node.rm.artifact import read_card

    try:
        card = read_card(path)
    except (OSError, ValueError) as exc:
        return f"model card unreadable: {exc}"
    return card if isinstance(card, dict) else "model card is not a JSON object"


def _peers(home: Path | None) -> list[dict[str, Any]] | str:
    """The node's peer book, or why it cannot be read."""
    if home is None:
        return []
    from node.p2p import PeerBook

    try:
        return PeerBook.load(home).peers
    except NodeError as exc:
        return str(exc)


def _gather(service: LabelingService, home: Path | None = None) -> dict[str, Any]:
    """Everything the page shows, read on the store's worker thread."""
    store = service.store
    models = store.list_models()
    run = store.latest_aggregation()
    queue = store.ambiguity_queue(status="open", limit=QUEUE_ROWS)
    ids = [x for q in queue for x in (q.response_lo_id, q.response_hi_id)]
    return {
        "stats": store.stats(), "campaigns": store.list_campaigns(), "run": run,
        "reliability": store.aggregation_reliability(run.id) if run is not None else [],
        "queue": queue, "responses": store.response_texts(ids),
        "prompts": store.prompt_texts([q.prompt_id for q in queue]), "models": models,
        "cards": {e.id: _card(e.path) for e in models if e.kind == "personal"}, "peers": _peers(home),
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
    by_source = sorted((alpha.get("by_source") or {}).items())  # PostgreSQL JSONB keeps no key order
    rows = [("overall", _fmt(alpha.get("overall")))] + [(k, _fmt(v)) for k, v in by_source]
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


def _history(card: dict[str, Any]) -> list[dict[str, Any]]:
    metrics = card.get("metrics")
    metrics = metrics if isinstance(metrics, dict) else {}
    training = metrics.get("training")
    training = training if isinstance(training, dict) else {}
    for value in (training.get("history"), metrics.get("history"), card.get("history")):
        if isinstance(value, list):
            return [p for p in value if isinstance(p, dict)]
    return []


def _points(history: list[dict[str, Any]], key: str) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for i, p in enumerate(history):
        x, y = p.get("step", i), p.get(key)
        if isinstance(x, int | float) and isinstance(y, int | float) and not isinstance(y, bool):
            out.append((float(x), float(y)))
    return out


def _curve(entry: ModelEntry, card: dict[str, Any] | str | None) -> str:
    """One model's training curve (loss and dev accuracy over steps), or why there is none."""
    title = f"{entry.name} ({entry.id})"
    if not isinstance(card, dict) or not card:
        why = card if isinstance(card, str) else "no model card at the model's path"
        return f"<p class=none>{h(title)}: no curve recorded ({h(why)})</p>"
    history = _history(card)
    series = [(name, pts) for name, pts in (("train loss", _points(history, "train_loss")),
                                            ("dev accuracy", _points(history, "dev_accuracy"))) if pts]
    if not series:
        return f"<p class=none>{h(title)}: no curve recorded</p>"
    return line_chart(f"{title}: training curve", series)


def _training(models: list[ModelEntry], cards: dict[str, Any]) -> str:
    runs = [e for e in models if e.kind == "personal"]
    if not runs:
        return none_yet("Training runs")
    rows = [(e.id, e.name, e.snapshot_id[:12] if e.snapshot_id else "-",
             ", ".join(map(str, e.provenance.get("sources") or [])) or "-",
             _clip(json.dumps(e.provenance.get("counts") or {}, sort_keys=True), 100)) for e in runs]
    curves = "".join(f"<figure>{_curve(e, cards.get(e.id))}</figure>" for e in runs)
    return table(("model", "name", "snapshot", "sources", "counts"), rows) + curves


def _manifest(envelope_json: Any) -> dict[str, Any] | None:
    """A manifest's payload, read without verifying it (`rewardnode federated verify` does that)."""
    from protocol.canonical import parse_json
    from protocol.envelope import Envelope

    try:
        payload = parse_json(Envelope.from_json(envelope_json).payload)
    except Exception:  # noqa: BLE001 - any malformed manifest is shown as unreadable, never a 500
        return None
    return payload if isinstance(payload, dict) else None


def _rejection(r: Any) -> str:
    if not isinstance(r, dict):
        return str(r)
    detail = f" ({r['detail']})" if r.get("detail") else ""
    return f"{_short(r.get('sender')) if r.get('sender') else 'unknown sender'}: {r.get('reason', '?')}{detail}"


def _rounds(entry: ModelEntry) -> str:
    chain = entry.provenance.get("manifests") or []
    rows: list[tuple[object, ...]] = []
    for i, envelope_json in enumerate(chain, start=1):
        m = _manifest(envelope_json)
        if m is None:
            rows.append((i, "unreadable manifest", "-", "-", "-"))
            continue
        contributions = [c for c in m.get("contributions") or [] if isinstance(c, dict)]
        examples = sum(c["num_examples"] for c in contributions if isinstance(c.get("num_examples"), int))
        rows.append((m.get("round", i),
                     ", ".join(f"{_short(c.get('sender'))} (update {_short(c.get('update_sha256'))}, "
                               f"{c.get('num_examples', '?')} ex.)" for c in contributions) or "-",
                     examples, "; ".join(_rejection(r) for r in m.get("rejections") or []) or "none",
                     _short(m.get("aggregate_sha256"))))
    head = (f"<h3>{h(entry.name)} ({h(entry.id)}): federation {h(entry.provenance.get('federation', '-'))}, "
            f"{len(chain)} round(s)</h3>")
    if not rows:
        return head + "<p class=none>no manifests recorded</p>"
    return head + table(("round", "contributors", "examples", "rejected updates", "aggregate"), rows)


def _federation(models: list[ModelEntry]) -> str:
    fed = [e for e in models if e.kind == "federated"]
    if not fed:
        return none_yet("Federation rounds")
    return "".join(_rounds(e) for e in fed)


def _peer_table(peers: list[dict[str, Any]] | str) -> str:
    if isinstance(peers, str):
        return f"<p class=error>{h(peers)}</p>"
    if not peers:
        return none_yet("Peers")
    rows = [(p.get("name") or "-", p.get("addr", "-"), _short(p.get("peer_id")),
             _when_ms(p.get("added_ms")), _when_ms(p.get("last_seen_ms", p.get("last_seen"))))
            for p in peers]
    return table(("name", "address", "peer id", "added", "last seen"), rows)


async def dashboard(request: web.Request) -> web.Response:
    """GET /dashboard."""
    principal = await page_principal(request, Role.ADMIN)
    service = request.config_dict[SERVICE_KEY]
    data = await service.call(_gather, service, request.config_dict.get(HOME_KEY))
    models = data["models"]
    sections = [("Records per source", _sources(data)), ("Campaigns", _campaigns(data)),
                ("Agreement", _agreement(data)), ("Labeler reliability", _reliability(data)),
                ("Ambiguity queue (open)", _queue(data)), ("Models", _models(models)),
                ("Training runs", _training(models, data["cards"])), ("Federation rounds", _federation(models)),
                ("Peers", _peer_table(data["peers"]))]
    body = "<h1>Dashboard</h1>" + "".join(
        f"<section class=card id='{h(title.split()[0].lower())}'><h2>{h(title)}</h2>{html}</section>"
        for title, html in sections)
    session = request.get(SESSION_KEY)
    logout = (f"<form method=post action=/logout style='margin-left:auto'><input type=hidden name=csrf "
              f"value='{h(csrf_token(session.secret))}'><button>Sign out {h(principal.name)}</button></form>"
              if session is not None else "")
    return page("Dashboard", body, nav=f"<a href=/label>labeling</a>{logout}")
