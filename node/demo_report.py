"""The demo's HTML report: one self-contained page, plots as inline SVG (no plotting library)."""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from node.rl.report import COLORS, _svg


def bar_chart(title: str, groups: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
              width: int = 560, height: int = 300, y_max: float = 1.0) -> str:
    """Grouped bars: one group per label, one bar per series (values in [0, y_max]); missing values skipped."""
    left, right, top, bottom = 45, 10, 30, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    group_w = plot_w / max(len(groups), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
             f'<text x="{width / 2}" y="15" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>']
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{frac * y_max:.2g}</text>')
    for g, label in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for s, (_, values) in enumerate(series):
            v = values[g]
            if v is None:
                continue
            h = plot_h * max(0.0, min(v, y_max)) / y_max
            x = x0 + s * bar_w
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w * 0.92:.1f}" height="{h:.1f}" '
                         f'fill="{COLORS[s % len(COLORS)]}"><title>{v:.3f}</title></rect>')
            parts.append(f'<text x="{x + bar_w * 0.46:.1f}" y="{top + plot_h - h - 3:.1f}" text-anchor="middle" '
                         f'font-size="9">{v:.0%}</text>')
        parts.append(f'<text x="{left + (g + 0.5) * group_w:.1f}" y="{top + plot_h + 14}" '
                     f'text-anchor="middle">{html.escape(label)}</text>')
    for s, (name, _) in enumerate(series):
        x = left + s * (plot_w / max(len(series), 1))
        parts.append(f'<rect x="{x:.1f}" y="{height - 22}" width="10" height="10" fill="{COLORS[s % len(COLORS)]}"/>')
        parts.append(f'<text x="{x + 14:.1f}" y="{height - 13}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(x: Any, pct: bool = False) -> str:
    if not isinstance(x, int | float):
        return "n/a"
    return f"{x:.1%}" if pct else f"{x:+.4f}"


def write_report(path: str | os.PathLike[str], results: Mapping[str, Any], *, quick: bool = False) -> Path:
    """Write demo_report.html from the demo's results (accuracy rows, PPO log, export, artifacts)."""
    path = Path(path)
    acc = list(results.get("accuracy", []))
    orgs = sorted({k for row in acc for k in row if k.startswith("org-")})
    sources = [str(row["source"]) for row in acc]
    series: list[tuple[str, Sequence[float | None]]] = [
        ("private (owner)", [row.get(row["owner"]) for row in acc]),
        ("best other private", [max((row[o] for o in orgs if o != row["owner"] and row.get(o) is not None),
                                    default=None) for row in acc]),
        ("federated", [row.get("federated") for row in acc]),
    ]
    log = list(results.get("ppo", {}).get("log", []))
    steps = [float(h.get("step", i + 1)) for i, h in enumerate(log)]

    def col(key: str) -> list[float]:
        return [float(h[key]) if isinstance(h.get(key), int | float) else float("nan") for h in log]

    charts = [
        bar_chart("accuracy on held-out pairs, per source", sources, series),
        _svg("PPO: training reward (federated RM) and audit reward (org-a private RM)", "step",
             [("reward", steps, col("reward")), ("audit reward", steps, col("audit_reward"))]),
        _svg("KL to the reference policy", "step", [("kl", steps, col("kl"))]),
    ]
    acc_rows = [[row["source"], row["owner"], *(_fmt(row.get(o), True) for o in orgs), _fmt(row.get("federated"), True),
                 row.get("n"), _band(row.get("n")), _fmt(row.get("longer wins"), True),
                 _fmt(row.get("prefers longer", {}).get("federated"), True)] for row in acc]
    first, last = (log[0], log[-1]) if log else ({}, {})
    ppo_rows = [[label, _fmt(first.get(k)), _fmt(last.get(k))]
                for k, label in (("reward", "PPO reward"), ("audit_reward", "audit reward"), ("kl", "KL"))]
    export = results.get("export", {})
    art_rows = [[a["path"], f"{a['bytes']:,}", a["sha256"]] for a in results.get("artifacts", [])]
    seconds = results.get("seconds")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rewardnode demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
th{{background:#f4f4f4}}svg{{margin:0 1em 1em 0;border:1px solid #eee}}code{{background:#f4f4f4}}</style></head><body>
<h1>rewardnode demo{' (--quick, tiny models)' if quick else ''}</h1>
<p>Three organizations on 127.0.0.1, each with its own store and a different real preference source, trained
private reward models, found each other over libp2p, federated in {len(results.get('accuracy', [])) and 3} signed
Flower rounds (engine: {html.escape(str(results.get('engine', '?')))}), and org-a ran PPO against the federated
reward model. Total time: {f'{seconds:.0f} s' if isinstance(seconds, int | float) else 'n/a'}.</p>
<div>{''.join(charts)}</div>
<h2>Accuracy on each source's held-out pairs</h2>
{_table(['source', 'owner', *[f'{o} private' for o in orgs], 'federated', 'n', 'guessing (95%)', 'longer wins',
         'federated prefers longer'], acc_rows)}
<p>A model that guesses lands anywhere in the guessing range on that many pairs: differences inside it are
noise. Length bias: "longer wins" is the accuracy of that rule on the same pairs; a model that prefers the
longer response far from half of the time learned length, not preferences.</p>
<h2>PPO (before = step 1, after = last step)</h2>
{_table(['', 'before', 'after'], ppo_rows)}
<h2>Export</h2><p>{'ONNX int8 passed the fidelity gate' if export.get('ok') else 'ONNX int8 refused by the fidelity gate'}:
{html.escape(str(export.get('gate', '')))}</p>
<h2>Artifacts</h2>
{_table(['path', 'bytes', 'sha256'], art_rows)}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def chance_band(n: int) -> float:
    """Half-width of the 95% range of a coin-flipping model's accuracy on n pairs (normal approximation)."""
    return 1.96 * 0.5 / math.sqrt(n) if n > 0 else float("nan")


def _band(n: object) -> str:
    return f"50% \u00b1 {100 * chance_band(n):.0f}" if isinstance(n, int) and n > 0 else "n/a"
