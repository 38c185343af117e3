"""The reference experiment's targets (issue 12), checked against a run folder's figures.

The library's ``rl-select results`` reports figures only; the targets a run is judged by live here::

    python benchmarks/reference_targets.py RUN_DIR     # e.g. the folder of configs/reference.toml

Prints one Markdown line per target with its figures and whether it is met.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rl_select.experiments.ablate import load_plan, read_rows, selector_kind
from rl_select.experiments.results import headline, label_free_baselines, training_rows_by_task

ZHANG_LM_PASSES = 1_700_000
"""Zhang, Feng & Tan (2022): LM passes per task to collect their 2,000 random episodes (no cache)."""

TRANSFER_GAIN = 0.06
"""Target: the transfer policy beats random by this much, averaged over the tasks."""

SEARCH_SHARE = 0.25
"""Target: policy-guided search spends at most this share of best-of-16's LM rows at selection time."""


def _verdict(ok: bool | None) -> str:
    return "not measured yet" if ok is None else ("**met**" if ok else "**missed**")


def targets(figures: Mapping[str, Mapping[str, Any]], train_rows: Mapping[str, int]) -> list[str]:
    """The issue's targets, each with its figures and whether it is met."""
    def avg(label: str) -> float | None:
        f = figures.get(label)
        return None if f is None else f["avg"]

    out = []
    rnd = avg("random")
    probe = sorted({lb.split(" ")[0] for lb in figures if selector_kind(lb.split(" ")[0]) == "policy_probe"})
    for sel, what in (("policy", "Transfer policy"), ("policy_rank", "Transfer policy_rank"),
                      *((p, f"Transfer {p}") for p in probe)):
        tr = avg(f"{sel} (transfer)")
        if tr is None and sel != "policy":
            continue
        ok = None if tr is None or rnd is None else tr - rnd >= TRANSFER_GAIN
        gain = "-" if ok is None else f"{100 * (tr - rnd):+.1f} points"
        out.append(f"- {what} vs random, averaged over the tasks: {gain} (target ≥ +{100 * TRANSFER_GAIN:.0f}): "
                   f"{_verdict(ok)}.")
        for base in [b for b in label_free_baselines() if b != "random"]:
            if base == "global_entropy":
                base = next((lb for lb in figures if selector_kind(lb) == "global_entropy"), base)
            b = avg(base)
            if b is None and selector_kind(base) == "global_entropy":
                continue  # not in this grid
            ok = None if tr is None or b is None else tr > b
            diff = "-" if ok is None else f"{100 * (tr - b):+.1f} points"
            out.append(f"- {what} vs {base}: {diff} (target > 0): {_verdict(ok)}.")
    best16 = figures.get("random_search:16")
    for which in ("seen", "transfer"):
        for label in sorted(lb for lb in figures if lb.startswith("policy_search:") and lb.endswith(f"({which})")):
            ps = figures[label]
            if best16 is None or ps["avg"] is None or best16["avg"] is None:
                continue
            share = (ps["select_rows"] or 0) / best16["select_rows"] if best16["select_rows"] else float("nan")
            ok = ps["avg"] > best16["avg"] and share <= SEARCH_SHARE
            paired = ""
            if len(ps["avg_seeds"]) == len(best16["avg_seeds"]) > 1:
                diffs = 100 * (np.asarray(ps["avg_seeds"]) - np.asarray(best16["avg_seeds"]))
                paired = f" (per seed {' / '.join(f'{d:+.1f}' for d in diffs)})"
            out.append(f"- {label} vs best-of-16 random search: "
                       f"{100 * (ps['avg'] - best16['avg']):+.1f} points{paired} at {share:.1%} of its LM rows "
                       f"(target > 0 at ≤ {SEARCH_SHARE:.0%}): {_verdict(ok)}.")
    for task, n in train_rows.items():
        out.append(f"- Training LM rows for {task}: {n:,} (rollout collection, one-off table included) vs Zhang et "
                   f"al.'s ~{ZHANG_LM_PASSES:,} passes (target ≤ {ZHANG_LM_PASSES // 10:,}): "
                   f"{_verdict(n <= ZHANG_LM_PASSES // 10)}.")
    return out


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Print (and return) the target lines of the run folder ``argv[0]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        raise SystemExit("usage: python benchmarks/reference_targets.py RUN_DIR")
    run_dir = Path(args[0])
    plan = load_plan(run_dir / "ablate.toml")
    _, figures = headline(read_rows(run_dir / "results.csv"), plan)
    lines = targets(figures, training_rows_by_task(plan))
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
