"""The driver of the scripts that compare ways of keeping one answered prompt per query
(``benchmarks/verify_rules.py``, ``verifier_local.py``, ``more_q_candidates.py``, ``set_verifier.py``).

:func:`answered` scores a leave-one-task-out policy's candidate prompts for one task's queries (one
:func:`~rl_select.mdp.per_query_policy.score_candidates` call, as the verify mode does; a warm score cache
answers it after ``rl-select per-query evaluate``); :func:`compare_main` runs a script's ``compare`` over every
held-out task and seed and writes one CSV row per ``(task, seed)``, then prints the per-task means.

Shapes: ``C`` candidate prompts, ``Q`` queries, ``L`` labels.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rl_select.experiments.per_query_config import PerQueryRunConfig
from rl_select.experiments.per_query_runs import PerQueryRun
from rl_select.lm.calibration import normalise
from rl_select.mdp.per_query_policy import PerQueryPolicy, candidate_orders, score_candidates
from rl_select.mdp.per_query_table import PoolTable, QueryContexts
from rl_select.metrics import label_ids


@dataclass
class Answered:
    """One task's queries and their candidate prompts, answered by the LM.

    Attributes:
        names: The candidates' names, ``C``.
        orders: Every candidate's prompt for every query, candidate-major: ``C * Q`` position lists.
        rows: The query of each of ``orders``.
        logprobs: ``(C * Q, L)`` the answers' label log-probs (calibrated if the scorer is).
        gold: ``int (Q,)`` gold label ids.
    """

    table: PoolTable
    ctx: QueryContexts
    names: list[str]
    orders: list[list[int]]
    rows: list[int]
    logprobs: np.ndarray
    gold: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, Q, L)``."""
        return len(self.names), len(self.gold), self.logprobs.shape[1]

    def confidence(self) -> np.ndarray:
        """``(C, Q)`` each answer's normalised top probability."""
        return np.exp(normalise(self.logprobs)).reshape(self.shape).max(-1)


def answered(run: PerQueryRun, target: str, seed: int, split: str, policy: PerQueryPolicy,
             extra: Mapping[str, Callable[[PoolTable, QueryContexts], list[list[int]]]] | None = None) -> Answered:
    """The policy's candidates (:func:`~rl_select.mdp.per_query_policy.candidate_orders`), then ``extra`` ones
    (name -> a function of the table and contexts giving each query's prompt), scored for ``target``'s ``split``
    rows of seed ``seed``."""
    spec = run.task(target)[0]
    sp = run.splits(target, seed)
    queries = list(sp.test if split == "test" else sp.val)
    scorer = run.scorer(target)
    table, ctx = policy.contexts(sp.pool, queries, labels=spec.labels, embedder=run.embedder, scorer=scorer)
    cands = candidate_orders(policy.qnet, policy.view, table, ctx, policy.k)
    cands.update({name: make(table, ctx) for name, make in (extra or {}).items()})
    orders, rows, lp = score_candidates(cands, table, ctx, scorer)
    return Answered(table, ctx, list(cands), [list(o) for o in orders], rows, lp, label_ids(spec.labels, queries))


def _seeds(text: str) -> list[int]:
    """``--seeds``: comma-separated non-negative integers."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}; expected comma-separated non-negative integers, e.g. 0,1,2")
    return seeds


Compare = Callable[[PerQueryRun, str, int, str, PerQueryPolicy], dict[str, object]]


def compare_main(argv: Sequence[str] | None, description: str, compare: Compare) -> list[dict[str, object]]:
    """Parse ``--config --run-dir --split --seeds --out``, run ``compare`` for every held-out task's
    ``loo-<task>-full-margin`` policy and seed, write the rows to ``--out`` (CSV) and print per-task means (as %
    when every mean is a share in 0..1; a NaN, a value a row did not measure, is left out of its mean)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", required=True, help="the per-query run's JSON config")
    ap.add_argument("--run-dir", required=True, help="the run folder (its loo-<task>-full-margin policies)")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--seeds", default=[0, 1, 2], type=_seeds)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    cfg = PerQueryRunConfig.from_file(a.config)
    run = PerQueryRun(cfg, a.run_dir, say=lambda s: None)
    found = []
    for target in cfg.eval_tasks:
        policy = PerQueryPolicy.load(Path(cfg.policy_run or a.run_dir) / "policies"
                                     / f"loo-{target}-full-margin.safetensors")
        for seed in a.seeds:
            rec = {"task": target, "seed": seed, "split": a.split, **compare(run, target, seed, a.split, policy)}
            found.append({k: round(float(v), 4) if isinstance(v, np.floating | float) else v for k, v in rec.items()})
            print(found[-1], flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(found[0]))
        w.writeheader()
        w.writerows(found)
    for key in [k for k in found[0] if k not in ("task", "seed", "split")]:
        per_task = [_mean([float(str(r[key])) for r in found if r["task"] == t]) for t in cfg.eval_tasks]
        scale = 100.0 if all(0.0 <= v <= 1.0 for v in per_task if not np.isnan(v)) else 1.0  # shares as %
        print(f"{key:18s} " + " ".join(f"{scale * v:5.1f}" for v in per_task)
              + f"  avg {scale * _mean(per_task):5.1f}")
    return found


def _mean(values: Sequence[float]) -> float:
    """The mean of the values that are not NaN (NaN when none is)."""
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")
