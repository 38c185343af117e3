"""Is it the LEARNED verifier that wins, or reading the LM's answers at all? The verify mode against rules that
read the same answers.

For every held-out task and seed of a per-query run, each query's candidate prompts (the policy's greedy rollout
and the four hand-written orders, :func:`~rl_select.mdp.per_query_policy.candidate_orders`) are scored for the
query (a warm score cache answers every row after ``rl-select per-query evaluate``; the script prints nothing
new for them), and one prompt per query is kept by:

* ``verify``: the policy's verifier (:func:`~rl_select.mdp.per_query_verifier.choose`), the product's mode;
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

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rl_select.experiments.per_query_config import PerQueryRunConfig
from rl_select.experiments.per_query_runs import PerQueryRun
from rl_select.lm.calibration import normalise
from rl_select.mdp.per_query_policy import PerQueryPolicy, candidate_orders
from rl_select.mdp.per_query_verifier import choose, verifier_inputs
from rl_select.metrics import label_ids


def compare(run: PerQueryRun, target: str, seed: int, split: str, policy: PerQueryPolicy) -> dict[str, object]:
    """Accuracy of every way of keeping one candidate per query, for one task and seed."""
    spec = run.task(target)[0]
    sp = run.splits(target, seed)
    queries = list(sp.test if split == "test" else sp.val)
    scorer, gold = run.scorer(target), label_ids(spec.labels, queries)
    table, ctx = policy.contexts(sp.pool, queries, labels=spec.labels, embedder=run.embedder, scorer=scorer)
    cands = candidate_orders(policy.qnet, policy.view, table, ctx, policy.k)
    names, n_c, n_q, n_l = list(cands), len(cands), len(queries), len(spec.labels)
    flat = [o for n in names for o in cands[n]]
    rows = [i for _ in names for i in range(n_q)]
    lp = scorer.logprobs_many(demo_lists=[ctx.demos(table, i, o) for i, o in zip(rows, flat)],
                              queries=[queries[i] for i in rows])
    x, answers = verifier_inputs(policy.view, table, ctx, flat, lp, policy.k, rows=rows)
    assert policy.verifier is not None
    p, answers = policy.verifier.p_correct(x).reshape(n_c, n_q), answers.reshape(n_c, n_q)
    prob = np.exp(normalise(lp)).reshape(n_c, n_q, n_l)
    entropy = -(prob * np.log(np.clip(prob, 1e-12, 1.0))).sum(-1)
    right, cols = answers == gold[None], np.arange(n_q)
    votes = np.zeros((n_q, n_l))
    for c in range(n_c):
        np.add.at(votes, (cols, answers[c]), 1.0)
    kept = choose(p, answers, n_l)
    out: dict[str, object] = {
        "task": target, "seed": seed, "split": split, "verify": right[kept, cols].mean(),
        "verify_top": right[p.argmax(0), cols].mean(), "max_conf": right[prob.max(-1).argmax(0), cols].mean(),
        "min_entropy": right[entropy.argmin(0), cols].mean(), "cand_vote": (votes.argmax(1) == gold).mean(),
        "oracle": right.any(0).mean(),
        "max_conf_rules": right[1 + prob[1:].max(-1).argmax(0), cols].mean(),
        "min_entropy_rules": right[1 + entropy[1:].argmin(0), cols].mean()}
    out.update({f"cand_{n}": right[c].mean() for c, n in enumerate(names)})
    out.update({f"share_{n}": float(np.mean(kept == c)) for c, n in enumerate(names)})
    return {k: round(float(v), 4) if isinstance(v, np.floating | float) else v for k, v in out.items()}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the per-query run's JSON config")
    ap.add_argument("--run-dir", required=True, help="the run folder (its loo-<task>-full-margin policies)")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    cfg = PerQueryRunConfig.from_file(a.config)
    run = PerQueryRun(cfg, a.run_dir, say=lambda s: None)
    found = []
    for target in cfg.eval_tasks:
        folder = Path(cfg.policy_run or a.run_dir) / "policies"
        policy = PerQueryPolicy.load(folder / f"loo-{target}-full-margin.safetensors")
        for seed in (int(s) for s in a.seeds.split(",")):
            found.append(compare(run, target, seed, a.split, policy))
            print(found[-1], flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(found[0]))
        w.writeheader()
        w.writerows(found)
    for key in [k for k in found[0] if k not in ("task", "seed", "split")]:
        per_task = [np.mean([r[key] for r in found if r["task"] == t]) for t in cfg.eval_tasks]
        print(f"{key:18s} " + " ".join(f"{100 * v:5.1f}" for v in per_task) + f"  avg {100 * np.mean(per_task):5.1f}")


if __name__ == "__main__":
    main()
