"""Run records: a per-step JSONL log and a self-contained HTML report with inline SVG charts
(training & audit reward against KL; response length and reward over steps). No plotting library needed."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


class StepLog:
    """Appends one JSON object per step to a .jsonl file (flushed, so a crashed run keeps its log)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a")

    def write(self, record: Mapping[str, Any]) -> None:
        clean = {k: (v if not (isinstance(v, float) and not math.isfinite(v)) else None) for k, v in record.items()}
        self._file.write(json.dumps(clean, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _svg(title: str, xlabel: str, series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
         width: int = 460, height: int = 280) -> str:
    """A line chart: series of (name, xs, ys)."""
    pts = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys, strict=True)
           if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return f"<p>{html.escape(title)}: no data</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 50, 10, 25, 35

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        return height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11">',
             f'<text x="{width / 2}" y="15" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
             f'<text x="{width / 2}" y="{height - 5}" text-anchor="middle">{html.escape(xlabel)}</text>',
             f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{y1:.3g}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{y0:.3g}</text>',
             f'<text x="{left}" y="{height - bottom + 14}">{x0:.3g}</text>',
             f'<text x="{width - right}" y="{height - bottom + 14}" text-anchor="end">{x1:.3g}</text>']
    for k, (name, xs, ys) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys, strict=True)
                          if x is not None and y is not None and math.isfinite(x) and math.isfinite(y))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
        parts.append(f'<text x="{left + 8}" y="{top + 12 + 13 * k}" fill="{color}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_report(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *,
                 title: str = "RL fine-tuning", summary: Mapping[str, Any] | None = None) -> Path:
    """An HTML page: reward & audit vs KL, reward & audit over steps, response length over steps."""
    steps = [float(h["step"]) for h in history]

    def col(key: str) -> list[float]:
        return [float(h[key]) if h.get(key) is not None else float("nan") for h in history]

    has_audit = any(h.get("audit_reward") is not None for h in history)
    kl = col("kl")
    vs_kl = [("training reward", kl, col("reward"))] + ([("audit reward", kl, col("audit_reward"))] if has_audit else [])
    over = [("training reward", steps, col("reward"))] + (
        [("audit reward", steps, col("audit_reward"))] if has_audit else [])
    charts = [
        _svg("reward vs KL to reference", "KL (nats)", vs_kl),
        _svg("reward over steps", "step", over),
        _svg("KL over steps", "step", [("KL", steps, kl)]),
        _svg("response length over steps", "step", [("tokens", steps, col("response_length"))]),
    ]
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in (summary or {}).items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1><table border='1' cellpadding='3'>{rows}</table>"
            + "".join(f"<div style='display:inline-block;margin:6px'>{c}</div>" for c in charts)
            + "</body></html>\n")
    out = Path(path)
    out.write_text(page)
    return out
