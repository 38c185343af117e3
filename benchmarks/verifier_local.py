"""Does the verifier gain from local competence features? A lever tried for issue 22 (not kept).

The verifier (:mod:`rl_select.mdp.per_query_verifier`) trusts an answer more when it agrees with the zero-shot
answer or the neighbour vote, but how far each can be trusted differs by task and by region. These features
measure it around the query, on its ``M`` labelled pool neighbours (no validation label, no LM row beyond the
pool rows the table already scores):

* ``local``: the neighbours' zero-shot accuracy, their mean zero-shot probability of their own label, the
  leave-one-out accuracy of the neighbours' similarity-weighted vote among themselves, and the query-similarity
  weighted zero-shot accuracy;
* ``local_ans``: ``local`` plus, for the answer, the zero-shot accuracy of the neighbours carrying it and of the
  others (smoothed).

For each held-out task a verifier per variant is trained like the shipped one (the leave-one-task-out policy's
training tasks, their logged episodes, seed 0); ``base`` retrains the shipped inputs. Every variant chooses among
the same five answered prompts as the verify mode (a warm score cache answers every row after ``rl-select
per-query evaluate``); ``shipped`` is the policy file's own verifier, ``max_conf_rules`` the rule with nothing
learned (:mod:`benchmarks.verify_rules`). One row per (task, seed) goes to ``--out``; per-task means are printed.

    python benchmarks/verifier_local.py --config configs/per_query.json --run-dir runs/per_query \\
        --split val --seeds 0,1,2 --out docs/per_query/verifier_local_pool100_val.csv
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agents.per_query import query_rows, train_verifier
from rl_select.experiments.per_query_compare import answered, compare_main
from rl_select.experiments.per_query_runs import PerQueryRun
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.per_query_table import PoolTable, QueryContexts
from rl_select.mdp.per_query_verifier import Verifier, choose, verifier_inputs
from rl_select.metrics import label_ids

VARIANTS = ("base", "local", "local_ans")
VERIFIER_STEPS = 3000
"""Training steps of each member, as for the shipped verifiers."""


def local_features(table: PoolTable, ctx: QueryContexts, rows: Sequence[int]) -> np.ndarray:
    """``float32 (n, 4)``: the ``local`` features of each row's query."""
    memo: dict[int, np.ndarray] = {}
    for i in set(int(r) for r in rows):
        nb = ctx.nbr[i]
        table.score_rows(nb)
        right, y = table.zs_correct[nb], table.labels[nb]
        e = table.emb[nb]
        sim = np.clip(e @ e.T, 1e-6, None)
        np.fill_diagonal(sim, 0.0)
        votes = np.zeros((len(nb), table.n_labels))
        for j in range(len(nb)):
            np.add.at(votes[j], y, sim[j])
        w = np.clip(ctx.sims[i], 1e-6, None)
        memo[i] = np.array([np.nanmean(right), np.nanmean(table.own_gold[nb]), np.mean(votes.argmax(1) == y),
                            np.sum(w * right) / np.sum(w)], dtype=np.float32)
    return np.stack([memo[int(r)] for r in rows])


def answer_features(table: PoolTable, ctx: QueryContexts, rows: Sequence[int], answers: np.ndarray) -> np.ndarray:
    """``float32 (n, 2)``: zero-shot accuracy of the neighbours labelled with the answer, and of the rest."""
    out = []
    for i, a in zip(rows, answers):
        right, y = table.zs_correct[ctx.nbr[i]], table.labels[ctx.nbr[i]]
        mine, other = right[y == a], right[y != a]
        out.append([(np.nansum(mine) + 0.5) / (np.sum(~np.isnan(mine)) + 1),
                    (np.nansum(other) + 0.5) / (np.sum(~np.isnan(other)) + 1)])
    return np.asarray(out, dtype=np.float32).reshape(len(out), 2)


def extra(variant: str, table: PoolTable, ctx: QueryContexts, rows: Sequence[int], answers: np.ndarray) -> np.ndarray:
    parts = [np.zeros((len(rows), 0), np.float32)]
    if variant in ("local", "local_ans"):
        parts.append(local_features(table, ctx, rows))
    if variant == "local_ans":
        parts.append(answer_features(table, ctx, rows, answers))
    return np.concatenate(parts, axis=1)


def training_rows(run: PerQueryRun, tasks: Sequence[str], view, variant: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in tasks:
        logged, table, ctx = run.logged(name)
        rows = query_rows(logged, ctx)
        x, answers = verifier_inputs(view, table, ctx, [e.order for e in logged],
                                     np.array([e.logprobs for e in logged]), run.cfg.k, rows=rows)
        xs.append(np.concatenate([x, extra(variant, table, ctx, rows, answers)], axis=1))
        ys.append((answers == label_ids(run.task(name)[0].labels, ctx.queries)[rows]).astype(np.float32))
    return np.concatenate(xs), np.concatenate(ys)


_VERIFIERS: dict[str, dict[str, Verifier]] = {}


def compare(run: PerQueryRun, target: str, seed: int, split: str, policy: PerQueryPolicy) -> dict[str, object]:
    """Each variant's verifier (trained once per held-out task) against the shipped one, for one task and seed."""
    if target not in _VERIFIERS:
        _VERIFIERS[target] = {v: train_verifier(*training_rows(run, policy.training["tasks"], policy.view, v),
                                                seed=0, steps=VERIFIER_STEPS)[0] for v in VARIANTS}
    ans = answered(run, target, seed, split, policy)
    n_c, n_q, n_l = ans.shape
    x, answers = verifier_inputs(policy.view, ans.table, ans.ctx, ans.orders, ans.logprobs, policy.k, rows=ans.rows)
    by_cand = answers.reshape(n_c, n_q)
    right, cols = by_cand == ans.gold[None], np.arange(n_q)
    assert policy.verifier is not None
    out: dict[str, object] = {
        "shipped": right[choose(policy.verifier.p_correct(x).reshape(n_c, n_q), by_cand, n_l), cols].mean(),
        "max_conf_rules": right[1 + ans.confidence()[1:].argmax(0), cols].mean()}
    for v, ver in _VERIFIERS[target].items():
        p = ver.p_correct(np.concatenate([x, extra(v, ans.table, ans.ctx, ans.rows, answers)], axis=1))
        out[v] = right[choose(p.reshape(n_c, n_q), by_cand, n_l), cols].mean()
    return out


def main(argv: Sequence[str] | None = None) -> None:
    compare_main(argv, __doc__.splitlines()[0], compare)


if __name__ == "__main__":
    main()
