"""An ablation's summary: per cell and selector over seeds (:func:`summarise`), as Markdown, and its plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from rl_select.experiments.ablate.grid import Plan


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (cell, selector), in first-seen order: seeds, failures, mean ± std of test accuracy, means of the rest."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["cell_id"]), str(r["selector"])), []).append(r)
    out = []
    for (cid, name), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        acc = np.array([float(r["test_acc"]) for r in ok])

        def mean(key: str, rows_: Sequence[Mapping[str, Any]] = ok) -> float | None:
            vals = [float(r[key]) for r in rows_ if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        out.append({
            "cell_id": cid, "cell": rs[0]["cell"], "task": rs[0].get("task"), "selector": name, "seeds": len(ok),
            "failed": len(rs) - len(ok), "error": next((r["error"] for r in rs if r["status"] == "failed"), None),
            "test_acc_mean": float(acc.mean()) if len(acc) else None,
            "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else (0.0 if len(acc) else None),
            "val_acc_mean": mean("val_acc"), "train_queries": mean("train_queries"),
            "select_queries": mean("select_queries"), "labelled": mean("labelled"), "seconds": mean("seconds"),
        })
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def summary_markdown(summary: Sequence[Mapping[str, Any]], plan: Plan | None = None) -> str:
    """The summary as a Markdown table, one line per cell x selector."""
    lines = []
    if plan is not None:
        lines += [f"# ablation: {len(plan.cells)} cells x {len(plan.seeds)} seeds x {len(plan.selectors)} selectors",
                  "", f"grid: {json.dumps(plan.grid)}", ""]
    lines += ["| cell | selector | seeds | test acc (%) | val acc (%) | LM rows (train) | LM rows (select) | "
              "labelled | sec | failed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        acc = "-" if s["test_acc_mean"] is None else f"{_pct(s['test_acc_mean'])} ± {_pct(s['test_acc_std'])}"
        failed = "" if not s["failed"] else f"{s['failed']}: {str(s['error']).replace('|', '/')}"
        num = [("-" if s[k] is None else f"{s[k]:.0f}") for k in ("train_queries", "select_queries", "labelled")]
        sec = "-" if s["seconds"] is None else f"{s['seconds']:.1f}"
        lines.append(f"| {s['cell']} | {s['selector']} | {s['seeds']} | {acc} | {_pct(s['val_acc_mean'])} | "
                     f"{' | '.join(num)} | {sec} | {failed} |")
    return "\n".join(lines) + "\n"


def plot_all(rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], folder: Path) -> dict[str, Path]:
    """``accuracy_by_selector.png`` (per task), ``accuracy_vs_lm_calls.png``, ``learning_curves.png`` (if trained)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    done = [s for s in summary if s["test_acc_mean"] is not None]
    tasks = list(dict.fromkeys(str(s["task"]) for s in done)) or ["-"]
    selectors = list(dict.fromkeys(s["selector"] for s in done))
    cells = list(dict.fromkeys(s["cell"] for s in done))
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5, 1.2 * len(selectors) * max(1, len(cells)) ** 0.5 + 2)
                                                     * len(tasks), 4), squeeze=False)
    width = 0.8 / max(1, len(cells))
    for ax, task in zip(axes[0], tasks):
        for j, cell in enumerate(cells):
            pts = {s["selector"]: s for s in done if str(s["task"]) == task and s["cell"] == cell}
            xs = [i + j * width for i, n in enumerate(selectors) if n in pts]
            if xs:
                ax.bar(xs, [100 * pts[n]["test_acc_mean"] for n in selectors if n in pts], width,
                       yerr=[100 * pts[n]["test_acc_std"] for n in selectors if n in pts], capsize=2, label=cell)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(selectors))], selectors, rotation=25, fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"task {task}", fontsize=9)
    if cells and len(cells) <= 12:
        axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    paths["accuracy_by_selector"] = folder / "accuracy_by_selector.png"
    fig.savefig(paths["accuracy_by_selector"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in selectors:
        pts = [s for s in done if s["selector"] == name]
        ax.scatter([s["select_queries"] or 0 for s in pts], [100 * s["test_acc_mean"] for s in pts], label=name, s=18)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("LM query rows at selection time (mean per seed)")
    ax.set_ylabel("test accuracy (%)")
    if selectors:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths["accuracy_vs_lm_calls"] = folder / "accuracy_vs_lm_calls.png"
    fig.savefig(paths["accuracy_vs_lm_calls"], dpi=110)
    plt.close(fig)

    records = sorted((folder / "training").glob("*.json")) if (folder / "training").is_dir() else []
    curves = [json.loads(p.read_text()) for p in records]
    curves = [c for c in curves if c.get("curve")]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for c in curves:
            x, y = np.array(c["curve"], dtype=float).T
            ax.plot(x, y, "-", alpha=0.8, label=f"{c['cell']} s{c['seed']}")
        ax.set_xlabel("step / episode")
        ax.set_ylabel(curves[0].get("curve_label") or "return")
        if len(curves) <= 12:
            ax.legend(fontsize=6)
        fig.tight_layout()
        paths["learning_curves"] = folder / "learning_curves.png"
        fig.savefig(paths["learning_curves"], dpi=110)
        plt.close(fig)
    return paths
