"""Is it the LEARNED verifier that wins, or reading the LM's answers at all? The verify mode against rules that
read the same answers.

For every held-out task and seed of a per-query run, each query's candidate prompts (the policy's greedy rollout
and the four hand-written orders, :func:`~rl_select.mdp.per_query_policy.candidate_orders`) are scored for the
query (a warm score cache answers every row after ``rl-select per-query evaluate``; the script prints nothing
new for them), and one prompt per query is kept by:

* ``verify``: the policy's verifier alone (:func:`~rl_select.mdp.per_query_verifier.choose`; the product's mode
  for a policy without an answer stacker, ``benchmarks/answer_stacker.py`` has the one with it);
* ``verify_top``: the candidate with the highest ``P(correct)`` alone;
* ``max_conf``: the candidate whose answer has the highest calibrated top probability (hand-written);
* ``min_entropy``: the candidate whose answer has the lowest entropy (hand-written, Wu et al. 2023's spirit);
* ``cand_vote``: the answer most candidates give (hand-written);
* ``max_conf_rules`` / ``min_entropy_rules``: the same two rules over the four hand-written orders only (no
  learned candidate: a selector with no learned part at all);
* ``oracle``: any candidate right (reads the gold label: the ceiling of choosing among these five);
* ``cand_<name>``: each candidate alone; ``share_<name>``: how often ``verify`` kept it.

One row per (task, seed) goes to ``--out`` (CSV); the per-task means are printed. One process at a time may run
the model: run it when no other LM job is running.

    python benchmarks/verify_rules.py --config configs/per_query.json --run-dir runs/per_query \\
        --split test --seeds 0,1,2,3,4 --out docs/per_query/verify_rules_pool100.csv
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rl_select.experiments.per_query_compare import answered, compare_main
from rl_select.experiments.per_query_runs import PerQueryRun
from rl_select.lm.calibration import normalise
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.per_query_verifier import choose, verifier_inputs


def compare(run: PerQueryRun, target: str, seed: int, split: str, policy: PerQueryPolicy) -> dict[str, object]:
    """Accuracy of every way of keeping one candidate per query, for one task and seed."""
    ans = answered(run, target, seed, split, policy)
    n_c, n_q, n_l = ans.shape
    gold = ans.gold
    x, answers = verifier_inputs(policy.view, ans.table, ans.ctx, ans.orders, ans.logprobs, policy.k, rows=ans.rows)
    assert policy.verifier is not None
    p, answers = policy.verifier.p_correct(x).reshape(n_c, n_q), answers.reshape(n_c, n_q)
    prob = np.exp(normalise(ans.logprobs)).reshape(n_c, n_q, n_l)
    entropy = -(prob * np.log(np.clip(prob, 1e-12, 1.0))).sum(-1)
    right, cols = answers == gold[None], np.arange(n_q)
    votes = np.zeros((n_q, n_l))
    for c in range(n_c):
        np.add.at(votes, (cols, answers[c]), 1.0)
    kept = choose(p, answers, n_l)
    out: dict[str, object] = {
        "verify": right[kept, cols].mean(),
        "verify_top": right[p.argmax(0), cols].mean(), "max_conf": right[prob.max(-1).argmax(0), cols].mean(),
        "min_entropy": right[entropy.argmin(0), cols].mean(), "cand_vote": (votes.argmax(1) == gold).mean(),
        "oracle": right.any(0).mean(),
        "max_conf_rules": right[1 + prob[1:].max(-1).argmax(0), cols].mean(),
        "min_entropy_rules": right[1 + entropy[1:].argmin(0), cols].mean()}
    out.update({f"cand_{n}": right[c].mean() for c, n in enumerate(ans.names)})
    out.update({f"share_{n}": float(np.mean(kept == c)) for c, n in enumerate(ans.names)})
    return out


def main(argv: Sequence[str] | None = None) -> None:
    compare_main(argv, __doc__.splitlines()[0], compare)


if __name__ == "__main__":
    main()
