"""Batch calibration (Zhou et al. 2024) against contextual calibration, on the per-query run's prompts.

Contextual calibration (the runs' scorer, :mod:`rl_select.lm.calibration`) divides out the label bias each prompt
shows on three content-free inputs: every distinct prompt costs three more LM rows (they share its prefix).
Batch calibration divides out the mean prediction over a batch of queries instead and costs no LM row; a
per-query prompt differs for every query, so here the batch is one hand-written rule's prompts for all the split's
queries (``batch``) or for consecutive chunks of 16 queries (``batch16``: a small batch).

For every held-out task and seed of a per-query run, the zero-shot prompt and the policy's five candidate prompts
(:func:`~rl_select.mdp.per_query_policy.candidate_orders`: its greedy rollout and four hand-written orders) are
answered once (raw log-probs; a warm score cache answers every row after ``rl-select per-query evaluate``) and read
five ways, each prompt family calibrated over its own batch: ``none``, ``contextual``, ``batch``, ``batch16`` and
``contextual+batch``. Columns ``<selector>_<readout>``:

* ``zero_shot``, ``knn``, ``knn_majority``: one prompt per query, its answer;
* ``poe_vote_rules``: the label with the best mean log-probability over the four orders plus
  ``log(vote + 0.05)``, then its most confident prompt (``benchmarks/answer_stacker.py``; nothing learned);
* ``policy_pq``: the prompt the policy's default verify mode keeps (with its answer stacker when the file has one;
  it chooses with contextual calibration, as it was trained), read each way;
* ``rows_batch`` / ``rows_contextual``: LM rows per query to answer the four orders (each distinct prompt and query
  once), plus the content-free rows of each distinct prompt when calibrated.

With ``--time N``, the first seed of each task also times the four orders for its first ``N`` queries with no
score cache, calibrated and not: ``sec_contextual``, ``sec_none`` (one model process at a time).

    python benchmarks/batch_calibration.py --config configs/per_query.json --run-dir RUN --split test \\
        --seeds 0,1,2,3,4 --time 32 --out docs/per_query/batch_calibration_pool100.csv
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from collections.abc import Sequence

import numpy as np

from rl_select.experiments.per_query_compare import Answered, answered, compare_main
from rl_select.experiments.per_query_runs import PerQueryRun
from rl_select.lm.base import CachedScorer
from rl_select.lm.calibration import normalise
from rl_select.mdp.per_query_policy import PerQueryPolicy, score_candidates, verify_choice
from rl_select.mdp.per_query_stacker import VOTE_FLOOR, choose_by_label, query_signals
from rl_select.prompts import CONTENT_FREE_INPUTS

RULES = ("knn", "knn_majority", "knn_balanced", "knn_mmr")
SETTINGS: dict[str, int] = {"time": 0, "first_seed": -1}


def batch_calibrate(logprobs: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Divide each prompt family's label log-probs by its mean prediction over the queries.

    Args:
        logprobs: ``(C, Q, L)`` label log-probs of ``C`` prompt families (one prompt per query each).
        chunk: Calibrate consecutive chunks of this many queries separately (``None``: all ``Q`` together).

    Returns:
        ``(C, Q, L)`` normalised log-probs.
    """
    lp = normalise(logprobs)
    step = chunk or lp.shape[1]
    out = np.empty_like(lp)
    for s in range(0, lp.shape[1], step):
        part = lp[:, s:s + step]
        out[:, s:s + step] = normalise(part - np.log(np.exp(part).mean(1, keepdims=True)))
    return out


def _uncalibrated(scorer: CachedScorer, *, cache: bool = True) -> CachedScorer:
    """The same LM and cache (or none), reading raw log-probs."""
    raw = copy.copy(scorer)
    raw.calibrate = False
    if not cache:
        raw.cache = None
    return raw


def _seconds(scorer: CachedScorer, calibrate: bool, cands: dict[str, list[list[int]]], ans: Answered, n: int
             ) -> float:
    """Wall seconds to answer the first ``n`` queries' prompts of ``cands`` with no score cache."""
    s = _uncalibrated(scorer, cache=False)
    s.calibrate = calibrate
    t0 = time.perf_counter()
    sub = {name: orders[:n] for name, orders in cands.items()}
    score_candidates(sub, ans.table, dataclasses.replace(ans.ctx, queries=ans.ctx.queries[:n]), s)
    return time.perf_counter() - t0


def compare(run: PerQueryRun, target: str, seed: int, split: str, policy: PerQueryPolicy) -> dict[str, object]:
    """Accuracy of the hand-written selectors and the policy's prompts under each readout, for one task and seed."""
    ans = answered(run, target, seed, split, policy)
    n_c, n_q, n_l = ans.shape
    gold, cols = ans.gold, np.arange(n_q)
    scorer = run.scorer(target)
    raw_scorer = _uncalibrated(scorer)
    cands = {name: [ans.orders[c * n_q + i] for i in range(n_q)] for c, name in enumerate(ans.names)}
    _, _, raw = score_candidates(cands, ans.table, ans.ctx, raw_scorer)
    raw = np.concatenate([raw_scorer.logprobs(demos=[], queries=ans.ctx.queries)[None],
                          raw.reshape(n_c, n_q, n_l)])                             # (1 + C, Q, L): zero-shot first
    cc = np.concatenate([np.log(np.clip(ans.ctx.zs, 1e-300, None))[None],      # zs: calibrated zero-shot
                         ans.logprobs.reshape(n_c, n_q, n_l)])
    vote, _ = query_signals(ans.table, ans.ctx)
    assert policy.verifier is not None
    kept = verify_choice(policy.verifier, policy.view, ans.table, ans.ctx, policy.k, ans.orders, ans.rows,
                         ans.logprobs, policy.stacker)
    readouts = {"none": normalise(raw), "contextual": normalise(cc), "batch": batch_calibrate(raw),
                "batch16": batch_calibrate(raw, 16), "contextual+batch": batch_calibrate(cc)}
    idx = [1 + ans.names.index(r) for r in RULES]
    out: dict[str, object] = {}
    for name, read in readouts.items():
        right = read.argmax(-1) == gold[None]
        rules = read[idx]
        poe = rules.mean(0) + np.log(vote + VOTE_FLOOR)
        out.update({f"zero_shot_{name}": right[0].mean(), f"knn_{name}": right[idx[0]].mean(),
                    f"knn_majority_{name}": right[idx[1]].mean(),
                    f"poe_vote_rules_{name}": right[np.array(idx)[choose_by_label(poe, rules)], cols].mean(),
                    f"policy_pq_{name}": right[1 + kept, cols].mean()})
    cands = {r: cands[r] for r in RULES}
    rows = {(i, tuple(ans.ctx.nbr[i, orders[i]])) for orders in cands.values() for i in range(n_q)}
    prompts = {demos for _, demos in rows}                      # a prompt's content-free rows serve all its queries
    out["rows_batch"] = len(rows) / n_q
    out["rows_contextual"] = (len(rows) + len(CONTENT_FREE_INPUTS) * len(prompts)) / n_q
    out["sec_none"] = out["sec_contextual"] = float("nan")
    if SETTINGS["time"] and SETTINGS["first_seed"] in (-1, seed):
        SETTINGS["first_seed"] = seed
        n = min(SETTINGS["time"], n_q)
        _seconds(scorer, False, {r: o[:2] for r, o in cands.items()}, ans, 2)              # warm-up
        out["sec_none"] = _seconds(scorer, False, cands, ans, n)
        out["sec_contextual"] = _seconds(scorer, True, cands, ans, n)
    return out


def _count(text: str) -> int:
    """``--time``: a non-negative integer."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}; expected a non-negative integer (queries to time, 0: none)")
    return int(text)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--time", type=_count, default=0, help="time the four orders for this many queries (first seed)")
    known, rest = ap.parse_known_args(argv)
    SETTINGS["time"] = known.time
    compare_main(rest, __doc__.splitlines()[0], compare)


if __name__ == "__main__":
    main()
