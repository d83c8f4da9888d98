"""The status page: plain HTML, inline CSS and server-drawn SVG charts.

No scripts and nothing fetched from elsewhere: the page works offline and
behind any proxy, and reloads itself every few seconds (``<meta refresh>``).
Every stream name is escaped: names are chosen by clients.
"""

from __future__ import annotations

import html
import time
from typing import Any

from eventbus import __version__ as VERSION
from eventbus.admin.service import Sampler

REFRESH_SECONDS = 5
COLUMNS = ("unprocessed", "retry", "leased", "processed", "dead", "total")
COLORS = {"unprocessed": "#2f6fde", "retry": "#e39b16", "processed": "#3aa361", "dead": "#d2453c"}


def snapshot(sampler: Sampler) -> dict[str, Any]:
    """What the page shows, as plain data (also served as /status.json)."""
    overview = sampler.overview
    rows = overview.streams if overview else []
    streams = [{"name": s.name, **{k: s.counts.get(k, 0) for k in COLUMNS}} for s in rows]
    return {
        "version": VERSION,
        "uptime_seconds": round(time.time() - sampler.started_at, 1),
        "updated_at": sampler.overview_at,
        "error": sampler.error,
        "streams": streams,
        "streams_total": overview.total_streams if overview else 0,
        "connections": [{"peer": peer, "since": since} for peer, since in sampler.connections()],
        "totals": dict(sampler.metrics.totals),
        "rates": {
            "written": sampler.rates("written"),
            "processed": sampler.rates("processed"),
            "requests": sampler.rates("requests"),
        },
    }


def _num(n: float) -> str:
    return f"{n:,.0f}" if n >= 10 or n == int(n) else f"{n:.1f}"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def chart(title: str, points: list[tuple[float, float]], color: str, span: float, now: float) -> str:
    """A small area chart of (time, value) over the last ``span`` seconds."""
    w, h, left, bottom, top = 520, 150, 44, 22, 12
    plot_w, plot_h = w - left - 8, h - bottom - top
    recent = [(t, v) for t, v in points if t >= now - span]
    peak = max((v for _, v in recent), default=0.0)
    scale = _nice_max(peak)
    latest = recent[-1][1] if recent else 0.0

    def x(t: float) -> float:
        return left + plot_w * (1 - (now - t) / span)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / scale)

    parts = [
        f'<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(title)}">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{w - 8}" y2="{top + plot_h}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{w - 8}" y2="{top}" class="grid"/>',
        f'<line x1="{left}" y1="{top + plot_h / 2}" x2="{w - 8}" y2="{top + plot_h / 2}" class="grid"/>',
        f'<text x="{left - 6}" y="{top + 4}" class="tick" text-anchor="end">{_num(scale)}</text>',
        f'<text x="{left - 6}" y="{top + plot_h / 2 + 4}" class="tick" text-anchor="end">'
        f"{_num(scale / 2)}</text>",
        f'<text x="{left - 6}" y="{top + plot_h + 4}" class="tick" text-anchor="end">0</text>',
    ]
    minutes = int(span // 60)
    for m in range(0, minutes + 1, 5 if minutes >= 10 else 1):
        tx = x(now - m * 60)
        label, anchor = ("now", "end") if m == 0 else (f"-{m}m", "middle")
        parts.append(f'<text x="{tx:.1f}" y="{h - 6}" class="tick" text-anchor="{anchor}">{label}</text>')
    if len(recent) >= 2:
        line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in recent)
        area = f"{x(recent[0][0]):.1f},{top + plot_h} {line} {x(recent[-1][0]):.1f},{top + plot_h}"
        parts.append(f'<polygon points="{area}" fill="{color}" fill-opacity="0.15"/>')
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
    else:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" class="tick" text-anchor="middle">'
            "collecting samples…</text>"
        )
    parts.append("</svg>")
    return (
        f'<figure class="panel"><figcaption>{html.escape(title)}'
        f'<span class="now" style="color:{color}">{_num(latest)}/s</span></figcaption>'
        + "".join(parts)
        + "</figure>"
    )


def _nice_max(value: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``value`` (and at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def _bar(counts: dict[str, int]) -> str:
    """A stacked bar of a stream's events by status."""
    total = sum(counts.get(k, 0) for k in ("unprocessed", "retry", "processed", "dead"))
    if not total:
        return '<div class="bar empty"></div>'
    segments = "".join(
        f'<span style="width:{100 * counts[k] / total:.2f}%;background:{COLORS[k]}" title="{k}"></span>'
        for k in ("processed", "unprocessed", "retry", "dead")
        if counts.get(k)
    )
    return f'<div class="bar">{segments}</div>'


CSS = """
:root{color-scheme:light;--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f6f7f9;--card:#fff}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg)}
header{display:flex;align-items:baseline;gap:16px;padding:18px 28px;background:#1d2330;color:#fff}
header h1{font-size:20px;margin:0;font-weight:600}
header .meta{color:#b8c0cc;font-size:13px}
main{padding:20px 28px;max-width:1180px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:12px;margin-bottom:18px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px}
.card .label{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:24px;font-weight:600;margin-top:2px;font-variant-numeric:tabular-nums}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px;margin-bottom:18px}
.panel{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 14px;margin:0}
figcaption{display:flex;justify-content:space-between;font-weight:600;margin-bottom:6px}
figcaption .now{font-variant-numeric:tabular-nums}
.chart{width:100%;height:auto;display:block}
.chart .axis{stroke:#98a2b3;stroke-width:1}.chart .grid{stroke:var(--line);stroke-dasharray:3 3}
.chart .tick{fill:var(--muted);font-size:11px}
h2{font-size:15px;margin:22px 0 8px}
table{width:100%;border-collapse:collapse;background:var(--card);border:1px solid var(--line);
border-radius:8px;overflow:hidden}
th,td{padding:7px 12px;text-align:left;border-bottom:1px solid var(--line);white-space:nowrap}
th{background:#fafbfc;color:var(--muted);font-weight:600;font-size:12px;text-transform:uppercase}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.name{font-weight:600;max-width:320px;overflow:hidden;text-overflow:ellipsis}
tr:last-child td{border-bottom:0}
.bar{display:flex;height:10px;width:160px;border-radius:5px;overflow:hidden;background:var(--line)}
.bar span{display:block;height:100%}
.zero{color:#c0c6d0}.warn{color:#b54708;font-weight:600}.bad{color:#b42318;font-weight:600}
.note{color:var(--muted);font-size:13px}.error{color:#b42318}
footer{padding:6px 28px 24px;color:var(--muted);font-size:12px}
footer a{color:inherit}
.legend span{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 12px}
"""


def _cell(value: int, name: str) -> str:
    cls = "num"
    if value == 0:
        cls += " zero"
    elif name == "dead":
        cls += " bad"
    elif name == "retry":
        cls += " warn"
    return f'<td class="{cls}" data-status="{name}">{value:,}</td>'


def render_page(sampler: Sampler) -> bytes:
    data = snapshot(sampler)
    now = time.time()
    # The charts cover the history kept (15 minutes), or at least the last 5.
    kept = now - sampler.history[0][0] if sampler.history else 0.0
    span = max(300.0, min(sampler.interval * ((sampler.history.maxlen or 2) - 1), kept))
    streams = data["streams"]
    totals = {k: sum(s[k] for s in streams) for k in COLUMNS}
    written = data["rates"]["written"]
    processed = data["rates"]["processed"]
    requests = data["rates"]["requests"]
    updated = data["updated_at"]

    cards = [
        ("Streams", f"{data['streams_total']:,}"),
        ("Backlog", f"{totals['unprocessed']:,}"),
        ("Retry", f"{totals['retry']:,}"),
        ("Dead", f"{totals['dead']:,}"),
        ("Connections", f"{len(data['connections']):,}"),
        ("Requests/s", _num(requests[-1][1]) if requests else "0"),
    ]
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>Event Bus · {totals['unprocessed']:,} unprocessed</title>",
        f"<style>{CSS}</style></head><body>",
        "<header><h1>Event Bus</h1>",
        f'<span class="meta">version {html.escape(VERSION)} · up {_ago(data["uptime_seconds"])} · '
        + (f"figures from {_ago(now - updated)} ago" if updated else "no figures yet")
        + f" · refreshes every {REFRESH_SECONDS}s</span></header><main>",
    ]
    if data["error"]:
        out.append(f'<p class="error">Cannot read the streams: {html.escape(data["error"])}</p>')
    out.append('<section class="cards">')
    for label, value in cards:
        out.append(
            f'<div class="card"><div class="label">{label}</div><div class="value">{value}</div></div>'
        )
    out.append("</section><section class=charts>")
    out.append(chart("Events written per second", written, COLORS["unprocessed"], span, now))
    out.append(chart("Events processed per second", processed, COLORS["processed"], span, now))
    out.append("</section>")

    out.append('<h2>Streams <span class="legend note">')
    for k in ("processed", "unprocessed", "retry", "dead"):
        out.append(f'<span style="background:{COLORS[k]}"></span>{k}')
    out.append("</span></h2>")
    if streams:
        out.append('<table id="streams"><thead><tr><th>Stream</th>')
        out.extend(f'<th class="num">{c}</th>' for c in COLUMNS)
        out.append("<th>By status</th></tr></thead><tbody>")
        for s in streams:
            name = html.escape(s["name"])
            out.append(f'<tr data-stream="{name}"><td class="name" title="{name}">{name}</td>')
            out.extend(_cell(s[c], c) for c in COLUMNS)
            out.append(f"<td>{_bar(s)}</td></tr>")
        out.append("</tbody></table>")
        hidden = data["streams_total"] - len(streams)
        if hidden > 0:
            out.append(f'<p class="note">…and {hidden:,} more streams, not shown.</p>')
    else:
        out.append('<p class="note" id="no-streams">No streams yet.</p>')

    out.append("<h2>Connected clients</h2>")
    if data["connections"]:
        out.append(
            '<table id="connections"><thead><tr><th>Address</th><th>Connected for</th></tr></thead><tbody>'
        )
        for c in data["connections"]:
            out.append(f'<tr><td>{html.escape(c["peer"])}</td><td>{_ago(now - c["since"])}</td></tr>')
        out.append("</tbody></table>")
    else:
        out.append('<p class="note" id="no-connections">No clients connected.</p>')
    out.append(
        '</main><footer><a href="/metrics">/metrics</a> · <a href="/health">/health</a> · '
        '<a href="/status.json">/status.json</a></footer></body></html>'
    )
    return "".join(out).encode("utf-8")
