"""A learned vote over the answered candidate prompts (the answer stacker) against the verifier and the rules.

For each held-out task, an answer stacker (:mod:`rl_select.mdp.per_query_stacker`) is fitted on the policy's
training tasks (:meth:`~rl_select.experiments.per_query_runs.PerQueryRun.stacker`): their first ``--n-train``
training queries' four hand-written prompts, answered by the LM and logged to ``--rules DIR`` (files
``rules-<task>.jsonl``, scored when missing; the same files as ``benchmarks/set_verifier.py collect``), with the
neighbourhood vote and the zero-shot answer. It reads no label of the held-out task. It then keeps one prompt per
query among the same answered candidates as the verify mode (a warm score cache answers them after ``rl-select
per-query evaluate``):

* ``stack``: over all five candidates (the Q-network's greedy rollout and the four hand-written orders);
* ``stack_verify``: over all five, each label's stacker score plus ``log(support + 0.05)``, where ``support`` is
  the verifier's ``P(correct)`` summed over the candidates giving that label
  (:func:`~rl_select.mdp.per_query_stacker.stacked_choice`: the verify mode of a policy that carries a stacker);
* ``stack_rules``: over the four hand-written orders only (nothing from the Q-network);
* ``verify``: the policy's own verifier alone (the verify mode of a policy without a stacker);
* ``max_conf_rules``: the most confident of the four hand-written orders' answers (nothing learned);
* ``poe_vote_rules``: hand-written stacking: the label with the highest mean log-probability over the four
  hand-written prompts plus ``log(vote + 0.05)``, then its most confident prompt (nothing learned);
* ``oracle``: any of the five right (reads the gold label).

One row per (task, seed) goes to ``--out``; per-task means are printed.

    python benchmarks/answer_stacker.py --rules RULES --config configs/per_query.json --run-dir RUN \\
        --split val --seeds 0,1,2 --out docs/per_query/answer_stacker_pool100_val.csv
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from rl_select.experiments.per_query_compare import answered, compare_main
from rl_select.experiments.per_query_runs import PerQueryRun
from rl_select.lm.calibration import normalise
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.per_query_stacker import (
    VOTE_FLOOR,
    AnswerStacker,
    choose_by_label,
    label_features,
    query_signals,
    stacked_choice,
)
from rl_select.mdp.per_query_verifier import choose, verifier_inputs

SETTINGS: dict[str, object] = {"rules": None, "n_train": 300}
_STACKERS: dict[str, AnswerStacker] = {}


def compare(run: PerQueryRun, target: str, seed: int, split: str, policy: PerQueryPolicy) -> dict[str, object]:
    """Accuracy of each way of keeping one answered prompt per query, for one task and seed."""
    if target not in _STACKERS:
        _STACKERS[target], summary = run.stacker(list(policy.training["tasks"]), n=int(str(SETTINGS["n_train"])),
                                                 folder=str(SETTINGS["rules"]))
        print(f"{target}: stacker {summary}", flush=True)
    stacker = _STACKERS[target]
    ans = answered(run, target, seed, split, policy)
    n_c, n_q, n_l = ans.shape
    lp = ans.logprobs.reshape(n_c, n_q, n_l)
    right, cols = lp.argmax(-1) == ans.gold[None], np.arange(n_q)
    vote, zs = query_signals(ans.table, ans.ctx)
    x, answers = verifier_inputs(policy.view, ans.table, ans.ctx, ans.orders, ans.logprobs, policy.k, rows=ans.rows)
    assert policy.verifier is not None
    p_correct = policy.verifier.p_correct(x).reshape(n_c, n_q)
    rules = lp[1:]
    poe = normalise(rules).mean(0) + np.log(vote + VOTE_FLOOR)
    return {"stack": right[choose_by_label(stacker.scores(label_features(lp, vote, zs)), lp), cols].mean(),
            "stack_verify": right[stacked_choice(stacker, p_correct, lp, vote, zs), cols].mean(),
            "stack_rules": right[1 + choose_by_label(stacker.scores(label_features(rules, vote, zs)), rules),
                                 cols].mean(),
            "verify": right[choose(p_correct, answers.reshape(n_c, n_q), n_l), cols].mean(),
            "max_conf_rules": right[1 + ans.confidence()[1:].argmax(0), cols].mean(),
            "poe_vote_rules": right[1 + choose_by_label(poe, rules), cols].mean(),
            "oracle": right.any(0).mean()}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--rules", required=True, help="the folder of rules-<task>.jsonl (collected when missing)")
    ap.add_argument("--n-train", type=int, default=300, help="training queries per task whose rule prompts are scored")
    known, rest = ap.parse_known_args(argv)
    SETTINGS.update(rules=known.rules, n_train=known.n_train)
    compare_main(rest, __doc__.splitlines()[0], compare)


if __name__ == "__main__":
    main()
