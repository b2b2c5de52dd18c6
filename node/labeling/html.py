"""Server-side HTML: one page layout, escaping, and inline SVG charts (no JS, no external assets)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from aiohttp import web

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#f6f6f7}
header.top{background:#24292f;color:#fff;padding:.5rem 1rem;display:flex;gap:1rem;align-items:center}
header.top a{color:#cde}
main{max-width:1200px;margin:1rem auto;padding:0 1rem}
pre{white-space:pre-wrap;word-wrap:break-word;font:14px/1.4 ui-monospace,monospace;margin:0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.75rem 1rem;margin:.75rem 0}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
.pair article{background:#fff;border:2px solid #ccd;border-radius:6px;padding:.75rem}
.choices{display:flex;flex-wrap:wrap;gap:.5rem;margin:.75rem 0}
.choices button{font-size:15px;padding:.4rem .8rem}
kbd{border:1px solid #999;border-radius:3px;padding:0 .3rem;background:#eee;font-size:13px}
table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
.none{color:#777;font-style:italic}
.error{color:#a00}
textarea{width:100%;min-height:3rem}
"""


def h(text: object) -> str:
    """HTML-escape any value (quotes too: safe inside attributes)."""
    return escape(str(text), quote=True)


def page(title: str, body: str, *, status: int = 200, script: str = "", nav: str = "") -> web.Response:
    """A complete HTML page; `script` is inline JS (ours only: the CSP forbids any other)."""
    js = f"<script>{script}</script>" if script else ""
    text = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{h(title)} - rewardnode</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body>"
            f"<header class=top><strong>rewardnode</strong>{nav}</header><main>{body}</main>{js}</body></html>")
    response = web.Response(text=text, status=status, content_type="text/html")
    response.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'unsafe-inline'; "
                                                   "script-src 'unsafe-inline'; form-action 'self'; "
                                                   "frame-ancestors 'none'; base-uri 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def none_yet(what: str) -> str:
    """The placeholder of an empty section."""
    return f"<p class=none>{h(what)}: none yet</p>"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain table (every cell escaped)."""
    head = "".join(f"<th>{h(x)}</th>" for x in headers)
    body = "".join("<tr>" + "".join(f"<td>{h(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bar_chart(title: str, items: Sequence[tuple[str, float]], *, width: int = 560, max_value: float | None = None,
              fmt: str = "{:,.0f}") -> str:
    """A horizontal bar chart as inline SVG: one labeled bar per (label, value)."""
    if not items:
        return none_yet(title)
    bar, gap, label_w, value_w = 18, 6, 170, 70
    height = len(items) * (bar + gap) + 24
    top = max_value if max_value is not None else max((v for _, v in items), default=0.0)
    scale = (width - label_w - value_w) / top if top > 0 else 0.0
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' role=img width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}'><title>{h(title)}</title>"
             f"<text x='0' y='14' font-size='13' font-weight='bold'>{h(title)}</text>"]
    for i, (label, value) in enumerate(items):
        y = 22 + i * (bar + gap)
        w = max(0.0, value) * scale
        short = label if len(label) <= 24 else label[:23] + "…"
        parts.append(f"<text x='0' y='{y + 13}' font-size='12'>{h(short)}</text>"
                     f"<rect x='{label_w}' y='{y}' width='{w:.1f}' height='{bar}' fill='#4a7bd0'/>"
                     f"<text x='{label_w + w + 4:.1f}' y='{y + 13}' font-size='12'>{h(fmt.format(value))}</text>")
    parts.append("</svg>")
    return "".join(parts)


LINE_COLORS = ("#c0392b", "#4a7bd0", "#27ae60", "#8e44ad")


def line_chart(title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *, width: int = 560,
               height: int = 180, x_label: str = "step") -> str:
    """Line charts as inline SVG: one polyline per (name, [(x, y), ...]) over a shared x axis.

    Each series is scaled to its own y range (loss and accuracy differ in units); the legend under the
    title gives each series' first, last, min and max values.
    """
    series = [(name, list(points)) for name, points in series if points]
    if not series:
        return none_yet(title)
    left, right, top, legend_h = 8, 8, 20 + 16 * len(series), 18
    plot_h = height - top - legend_h
    xs = [x for _, points in series for x, _ in points]
    x_lo, x_hi = min(xs), max(xs)
    x_scale = (width - left - right) / (x_hi - x_lo) if x_hi > x_lo else 0.0
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' role=img width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}'><title>{h(title)}</title>"
             f"<text x='0' y='14' font-size='13' font-weight='bold'>{h(title)}</text>"
             f"<rect x='{left}' y='{top}' width='{width - left - right}' height='{plot_h}' fill='none' "
             f"stroke='#ddd'/>"]
    for i, (name, points) in enumerate(series):
        color = LINE_COLORS[i % len(LINE_COLORS)]
        ys = [y for _, y in points]
        y_lo, y_hi = min(ys), max(ys)
        y_scale = plot_h / (y_hi - y_lo) if y_hi > y_lo else 0.0

        def at(x: float, y: float, y_lo: float = y_lo, y_scale: float = y_scale) -> tuple[float, float]:
            px = left + (x - x_lo) * x_scale if x_scale else width / 2
            py = top + plot_h - (y - y_lo) * y_scale if y_scale else top + plot_h / 2
            return px, py

        coords = [at(x, y) for x, y in points]
        parts.append(f"<text x='0' y='{30 + 16 * i}' font-size='12' fill='{color}'>{h(name)}: "
                     f"{ys[0]:.4g} → {ys[-1]:.4g} (min {y_lo:.4g}, max {y_hi:.4g})</text>"
                     f"<polyline data-series='{h(name)}' fill='none' stroke='{color}' stroke-width='1.5' "
                     f"points='{' '.join(f'{px:.1f},{py:.1f}' for px, py in coords)}'/>")
        if len(coords) == 1:  # a single evaluation draws no line: mark it
            parts.append(f"<circle cx='{coords[0][0]:.1f}' cy='{coords[0][1]:.1f}' r='3' fill='{color}'/>")
    parts.append(f"<text x='{left}' y='{height - 4}' font-size='11'>{h(x_label)} {x_lo:g}</text>"
                 f"<text x='{width - right}' y='{height - 4}' font-size='11' text-anchor='end'>"
                 f"{h(x_label)} {x_hi:g}</text></svg>")
    return "".join(parts)
