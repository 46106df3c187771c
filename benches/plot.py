#!/usr/bin/env python3
"""Draws the README's Performance figures as SVG from the JSON lines the benchmarks append.

    python3 benches/plot.py            # reads benches/results/kafka.jsonl, writes benches/results/*.svg

Standard library only. Of each measurement name and worker count, the last line in the file wins
(and offered rate, for latency) (the newest invocation), so re-running a benchmark and this script refreshes the figures.

- throughput.svg: events/s of each configuration of `streampulse bench kafka` (raw consume, raw +
  decode, pipeline to memory and to PostgreSQL on 1 and 2 workers, the Kafka Streams peer), with
  its ratio to the raw consume.
- latency.svg: event-to-view and event-to-PostgreSQL p50 / p99 / p99.9 / max at the offered rate.
"""

import json
import os
import sys
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def load(path):
    latest = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if "name" not in row:
                continue
            latest[(row["name"], row.get("workers", 1), row.get("rate"))] = row
    return latest


def bars(title, unit, rows, path, width=760):
    """Horizontal bars: rows is a list of (label, value, note)."""
    top, left, bar_h, gap = 44, 250, 22, 8
    height = top + len(rows) * (bar_h + gap) + 30
    peak = max(v for _, v, _ in rows) or 1
    span = width - left - 240
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="12" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    for i, (label, value, note) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = max(1, value / peak * span)
        out.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">{escape(label)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="#4a78b5"/>')
        text = f"{value:,.0f} {unit}" + (f"  {note}" if note else "")
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + 16}">{escape(text)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def grouped(title, groups, series, path, width=960):
    """Vertical grouped bars on a log scale: groups is [(label, {series: ms})]."""
    import math

    top, bottom, left, right = 44, 60, 60, 20
    height = 340
    plot_h = height - top - bottom
    values = [v for _, d in groups for v in d.values() if v > 0]
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    scale = lambda v: top + plot_h - (math.log10(max(v, lo)) - math.log10(lo)) / (
        math.log10(hi) - math.log10(lo)
    ) * plot_h
    colours = ["#9ec1e8", "#4a78b5", "#1f3f6e", "#c0504d"]
    group_w = (width - left - right) / len(groups)
    bar_w = group_w * 0.8 / len(series)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="12" y="24" font-size="15" font-weight="bold">{escape(title)}</text>',
    ]
    tick = lo
    while tick <= hi:
        y = scale(tick)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g} ms</text>')
        tick *= 10
    for g, (label, data) in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for s, name in enumerate(series):
            v = data.get(name)
            if v is None:
                continue
            y = scale(v)
            x = x0 + s * bar_w
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" '
                f'height="{top + plot_h - y:.1f}" fill="{colours[s % len(colours)]}"/>'
            )
            out.append(
                f'<text x="{x + bar_w / 2 - 1:.1f}" y="{y - 4:.1f}" text-anchor="middle" '
                f'font-size="10">{v:.0f}</text>'
            )
        out.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{height - bottom + 18}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    for s, name in enumerate(series):
        x = left + s * 110
        out.append(f'<rect x="{x}" y="{height - 24}" width="12" height="12" fill="{colours[s]}"/>')
        out.append(f'<text x="{x + 16}" y="{height - 14}">{escape(name)}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def main():
    kafka = load(os.path.join(RESULTS, "kafka.jsonl"))
    order = [
        ("raw_consume", 1, "raw consume"),
        ("raw_consume_decode", 1, "raw consume + decode"),
        ("pipeline_memory", 1, "pipeline → memory, 1 worker"),
        ("pipeline_memory", 2, "pipeline → memory, 2 workers"),
        ("pipeline_postgres", 1, "pipeline → PostgreSQL, 1 w"),
        ("pipeline_postgres", 2, "pipeline → PostgreSQL, 2 w"),
        ("kstreams_grace_5s", 1, "Kafka Streams, grace 5 s"),
        ("kstreams_grace_1d", 1, "Kafka Streams, grace 1 day"),
    ]
    rows = []
    for name, workers, label in order:
        row = kafka.get((name, workers, None))
        if row:
            rows.append((label, row["events_per_sec"], f"{row['ratio_to_raw']:.2f}× raw"))
    if rows:
        bars(
            "Kafka topic of 3,000,000 events: events/s (median of 3)",
            "ev/s",
            rows,
            os.path.join(RESULTS, "throughput.svg"),
        )
    groups = []
    latency_rows = [row for (_, _, rate), row in kafka.items() if rate is not None]
    latency_rows.sort(key=lambda r: (r["name"] != "event_to_view", -r["rate"], r["workers"]))
    for row in latency_rows:
        path = "API" if row["name"] == "event_to_view" else "PG"
        label = f"{path} {row['workers']}w {row['rate'] / 1000:.0f}k/s"
        groups.append(
            (
                label,
                {
                    "p50": row["p50_ms"],
                    "p99": row["p99_ms"],
                    "p99.9": row["p999_ms"],
                    "max": row["max_ms"],
                },
            )
        )
    if groups:
        grouped(
            "Event to API and to PostgreSQL (PG) at a steady offered rate, ms (log scale)",
            groups,
            ["p50", "p99", "p99.9", "max"],
            os.path.join(RESULTS, "latency.svg"),
        )


if __name__ == "__main__":
    main()
