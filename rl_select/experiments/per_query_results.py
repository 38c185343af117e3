"""A per-query run's ``results.csv``: selector names, appending rows, the rows already there, the summary table."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def policy_label(feature_set: str, reward: str, mode: str, *, stacker: bool = False) -> str:
    """A policy's selector name in ``results.csv``: ``policy_pq:<fs>-<reward>`` (greedy), ``policy_pq:critic-...``,
    ``policy_pq:verify-...``; ``policy_pq:verify+stack-...`` for the verify mode of a policy with an answer stacker
    (its rows stay apart from those its verifier alone chose)."""
    mode = f"{mode}+stack" if stacker and mode == "verify" else mode
    return f"policy_pq:{'' if mode == 'greedy' else mode + '-'}{feature_set}-{reward}"


def append_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append result rows to a CSV (header on first write)."""
    if not rows:
        return
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


def done_rows(path: Path) -> set[tuple[str, str, str, str]]:
    """``(task, seed, split, selector)`` of rows already in the CSV."""
    if not path.is_file():
        return set()
    with path.open(encoding="utf-8") as f:
        return {(r["task"], r["seed"], r["split"], r["selector"]) for r in csv.DictReader(f)}


def summary_table(path: Path, *, split: str = "test") -> str:
    """``results.csv`` as a Markdown table: accuracy (%) mean ± std over seeds per task, and the task average."""
    with path.open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    sels = list(dict.fromkeys(r["selector"] for r in rows))
    acc: dict[tuple[str, str], list[float]] = {}
    lm: dict[str, list[int]] = {}
    for r in rows:
        acc.setdefault((r["selector"], r["task"]), []).append(100 * float(r["acc"]))
        lm.setdefault(r["selector"], []).append(int(r["select_rows"]))
    lines = ["| selector | " + " | ".join(tasks) + " | average | LM rows to select (mean per run) |",
             "|---" * (len(tasks) + 3) + "|"]
    for sel in sels:
        cells, means = [], []
        for t in tasks:
            v = acc.get((sel, t), [])
            cells.append(f"{np.mean(v):.1f} ± {np.std(v):.1f} (n={len(v)})" if v else "–")
            means.append(np.mean(v) if v else np.nan)
        avg = f"{np.mean(means):.1f}" if not np.isnan(means).any() else "–"
        lines.append(f"| {sel} | " + " | ".join(cells) + f" | {avg} | {int(np.mean(lm[sel]))} |")
    return "\n".join(lines)
