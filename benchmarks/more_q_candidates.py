"""More learned candidates for the verify mode? A lever tried for issue 22 (not kept).

The verify mode chooses among five answered prompts per query: the Q-network's greedy rollout and the four
hand-written neighbour orders (:func:`~rl_select.mdp.per_query_policy.candidate_orders`). This adds two more
rollouts of the same Q-network, whose first action is its second / third best (then greedy), and asks whether
the oracle over the candidates rises and whether the shipped verifier (:func:`~rl_select.mdp.per_query_verifier.
choose`) turns that into accuracy:

* ``verify5`` / ``verify7``: the verifier over the five / seven candidates; ``verify_q3`` over the three
  Q-network rollouts only;
* ``max_conf5`` / ``max_conf7`` / ``max_conf_rules``: the most confident answer among five / seven / the four
  hand-written orders (nothing learned);
* ``oracle5`` / ``oracle7``: any candidate right (reads the gold label); ``cand_<name>``: each rollout alone.

The two new rollouts cost two more prompts per query (with their calibration rows); the rest come from a warm
score cache. One row per (task, seed) goes to ``--out``; per-task means are printed.

    python benchmarks/more_q_candidates.py --config configs/per_query.json --run-dir runs/per_query \\
        --split val --seeds 0,1,2 --out docs/per_query/more_q_pool100_val.csv
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from rl_select.experiments.per_query_compare import answered, compare_main
from rl_select.experiments.per_query_runs import PerQueryRun
from rl_select.mdp.episode import EpisodeRule
from rl_select.mdp.per_query import FeatureView
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.per_query_table import PoolTable, QueryContexts
from rl_select.mdp.per_query_verifier import choose, verifier_inputs
from rl_select.mdp.qnet import CandidateQNet, masked_q


def ranked_first(qnet: CandidateQNet, view: FeatureView, table: PoolTable, ctx: QueryContexts, k: int,
                 rank: int) -> list[list[int]]:
    """Every query's rollout whose first action is the Q-network's ``rank``-th best (0 = greedy), then greedy."""
    rule = EpisodeRule(n_candidates=ctx.m, k=k)
    chosen: list[list[int]] = [[] for _ in ctx.queries]
    qnet.eval()
    for t in range(k):
        feats = [view(table, ctx, i, ch, k) for i, ch in enumerate(chosen)]
        masks = torch.as_tensor(np.stack([rule.mask(ch) for ch in chosen]))
        with torch.no_grad():
            q = masked_q(qnet(torch.as_tensor(np.stack([f[0] for f in feats])),
                              torch.as_tensor(np.stack([f[1] for f in feats]))), masks)
        for b, a in enumerate(q.argsort(dim=1, descending=True)[:, rank if t == 0 else 0].tolist()):
            _, chosen[b], _ = rule.apply(np.int64(a), chosen[b], False)
    return chosen


def compare(run: PerQueryRun, target: str, seed: int, split: str, policy: PerQueryPolicy) -> dict[str, object]:
    """The verifier and the most-confident rule over five and seven candidates, for one task and seed."""
    def rollout(rank: int):
        return lambda table, ctx: ranked_first(policy.qnet, policy.view, table, ctx, policy.k, rank)

    ans = answered(run, target, seed, split, policy, {"q2": rollout(1), "q3": rollout(2)})
    n_c, n_q, n_l = ans.shape
    x, answers = verifier_inputs(policy.view, ans.table, ans.ctx, ans.orders, ans.logprobs, policy.k, rows=ans.rows)
    assert policy.verifier is not None
    p = policy.verifier.p_correct(x).reshape(n_c, n_q)
    answers = answers.reshape(n_c, n_q)
    right, cols, conf = answers == ans.gold[None], np.arange(n_q), ans.confidence()

    def verify(ix: list[int]) -> float:
        sel = np.asarray(ix)
        return float(right[sel[choose(p[sel], answers[sel], n_l)], cols].mean())

    def max_conf(ix: list[int]) -> float:
        sel = np.asarray(ix)
        return float(right[sel[conf[sel].argmax(0)], cols].mean())

    five, seven = list(range(5)), list(range(7))
    return {
        "verify5": verify(five), "verify7": verify(seven), "verify_q3": verify([0, 5, 6]),
        "max_conf5": max_conf(five), "max_conf7": max_conf(seven), "max_conf_rules": max_conf([1, 2, 3, 4]),
        "oracle5": right[five].any(0).mean(), "oracle7": right.any(0).mean(), "cand_greedy": right[0].mean(),
        "cand_q2": right[5].mean(), "cand_q3": right[6].mean()}


def main(argv: Sequence[str] | None = None) -> None:
    compare_main(argv, __doc__.splitlines()[0], compare)


if __name__ == "__main__":
    main()
