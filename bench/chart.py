"""The chart: write_event throughput against connections, for each target."""

from __future__ import annotations

from pathlib import Path

from bench.results import ECHO, EVENTBUS, REDIS, Results

POINTS = ((1, "scale-1"), (4, "scale-4"), (16, "scale-16"), (64, "write-64x1"))
STYLE = {ECHO: ("echo (Twisted + orjson, no work)", "--", "tab:gray"),
         EVENTBUS: ("Event Bus (durable, fsync)", "-", "tab:blue"),
         REDIS: ("Redis XADD, appendfsync always", "-.", "tab:red")}


def plot(results: Results, path: Path, subtitle: str) -> str | None:
    """Draw the PNG at ``path``; returns why not when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (make bench installs bench/requirements.txt)"
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    drawn = False
    for target, (label, style, color) in STYLE.items():
        xs, ys = [], []
        for connections, scenario in POINTS:
            value = results.median_of(scenario, target)
            if value is not None:
                xs.append(connections)
                ys.append(value)
        if xs:
            drawn = True
            ax.plot(xs, ys, style, marker="o", color=color, label=label)
            for x, y in zip(xs, ys):
                ax.annotate(f"{y / 1000:.1f}k", (x, y), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=8, color=color)
    if not drawn:
        plt.close(fig)
        return "no throughput measured for the chart"
    ax.set_xscale("log", base=2)
    ax.set_xticks([c for c, _ in POINTS], [str(c) for c, _ in POINTS])
    ax.set_xlabel("connections (1 request in flight each)")
    ax.set_ylabel("write_event round trips per second")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title("Durable writes vs connections (medians of interleaved rounds)", fontsize=11)
    fig.text(0.5, 0.01, subtitle, ha="center", fontsize=7, color="dimgray")
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return None
