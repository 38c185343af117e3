"""Tables (rich) and plots (matplotlib) of a run's summary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from rl_select.lm.base import ScorerStats


def window_cell(failed: int, dropped: int) -> str:
    """Rows over the context window in one cell: ``"1 failed, 2 cut"``, ``"-"`` for none."""
    parts = [f"{failed} failed"] * bool(failed) + [f"{dropped} cut"] * bool(dropped)
    return ", ".join(parts) or "-"


def window_line(stats: ScorerStats) -> str | None:
    """One line on the LM rows over the context window (selection and evaluation), or ``None`` for none."""
    if not (stats.rows_failed or stats.rows_dropped_demos):
        return None
    return (f"context window: {stats.rows_failed} LM rows scored as failures (the query alone does not fit), "
            f"{stats.rows_dropped_demos} with leftmost demonstrations dropped; each row is named in log.txt")


def summary_table(summary: Sequence[dict[str, Any]], title: str) -> Table:
    """Selector | test acc mean ± std | val acc | selection LM queries (misses) | cache hit rate | seconds, and
    test rows over the context window when any selector has some."""
    over = any(s.get("test_rows_failed") or s.get("test_rows_dropped_demos") for s in summary)
    caption = ("test/val: accuracy %, mean ± std over seeds; queries, misses, hits, sec: LM spend of the selection "
               "phase, mean per seed")
    if over:
        caption += ("; window: test rows over the context window, summed over seeds (failed: the query alone "
                    "does not fit, scored wrong; cut: leftmost demonstrations dropped)")
    table = Table(title=title, caption=caption)
    for col in ("selector", "test", "val", "queries", "misses", "hits", "sec") + ("window",) * over:
        table.add_column(col, justify="left" if col == "selector" else "right", no_wrap=col != "selector")
    for s in summary:
        cells = [window_cell(s.get("test_rows_failed", 0), s.get("test_rows_dropped_demos", 0))] * over
        table.add_row(
            s["selector"],
            f"{100 * s['test_acc_mean']:.1f} ± {100 * s['test_acc_std']:.1f}",
            "-" if s["val_acc_mean"] is None else f"{100 * s['val_acc_mean']:.1f}",
            f"{s['select_lm_queries']:.0f}",
            f"{s['select_lm_misses']:.0f}",
            "-" if s["select_cache_hit_rate"] is None else f"{100 * s['select_cache_hit_rate']:.0f}%",
            f"{s['select_seconds']:.1f}",
            *cells,
        )
    return table


def summary_markdown(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as a Markdown table (the README's tables come from this)."""
    lines = ["| selector | test acc (%) | val acc (%) | LM queries to select | LM misses | sec to select |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        val = "-" if s["val_acc_mean"] is None else f"{100 * s['val_acc_mean']:.1f}"
        lines.append(f"| {s['selector']} | {100 * s['test_acc_mean']:.1f} ± {100 * s['test_acc_std']:.1f} | {val} | "
                     f"{s['select_lm_queries']:.0f} | {s['select_lm_misses']:.0f} | {s['select_seconds']:.1f} |")
    return "\n".join(lines)


def plot_summary(summary: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Bar chart of test accuracy (mean ± std over seeds) with each seed as a dot. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["selector"] for s in summary]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2, 4))
    means = [100 * s["test_acc_mean"] for s in summary]
    stds = [100 * s["test_acc_std"] for s in summary]
    ax.bar(names, means, yerr=stds, capsize=4, color="#7aa6c2", edgecolor="#2b5d7d")
    for i, name in enumerate(names):
        pts = [100 * r["test_acc"] for r in rows if r["selector"] == name]
        ax.scatter([i] * len(pts), pts, color="black", s=10, zorder=3)
    low = min(min(means) - max(stds + [0]) - 10, 100)
    ax.set_ylim(max(0, low), 100)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
