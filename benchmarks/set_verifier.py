"""Experiment: a set-aware verifier. Stage 1 (collect): for the first N training queries of every task, the four
rule orders' prompts are scored (cached LM rows) and logged to OUT/rules-<task>.jsonl. Stage 2 (eval): verifiers
trained (leave one task out) on (a) logged episodes only, per-candidate features [the shipped verifier];
(b) + set features (agreement with the query's other scored prompts, confidence rank) on the queries with rule
prompts; evaluated on val/test rows of the held-out tasks against max_conf.

One process at a time may run the model. The docs' figures (docs/per_query/README.md, "a set-aware verifier"):

    python benchmarks/set_verifier.py collect configs/per_query.json RUN OUT 300
    python benchmarks/set_verifier.py eval configs/per_query.json RUN OUT val 0,1,2
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from agents.per_query import train_verifier
from rl_select.experiments.per_query_compare import answered
from rl_select.experiments.per_query_config import PerQueryRunConfig
from rl_select.experiments.per_query_runs import PerQueryRun
from rl_select.lm.calibration import normalise
from rl_select.mdp.per_query import FeatureView
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.per_query_verifier import choose, verifier_inputs
from rl_select.metrics import label_ids

stage, cfg_path, run_dir, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
cfg = PerQueryRunConfig.from_file(cfg_path)
run = PerQueryRun(cfg, run_dir, say=lambda s: None)
view = FeatureView.of("full")
K = cfg.k
out.mkdir(parents=True, exist_ok=True)


def set_feats(lp_set: np.ndarray) -> np.ndarray:
    """(C, L) log-probs of one query's scored prompts -> (C, 4) set features."""
    p = np.exp(normalise(lp_set))
    ans, top = p.argmax(1), p.max(1)
    c = len(ans)
    agree = np.array([(ans == a).mean() for a in ans])
    conf_same = np.array([top[ans == a].sum() / c for a in ans])
    rank = np.argsort(np.argsort(-top)) / max(c - 1, 1)
    gap = top - top.max()
    return np.stack([agree, conf_same, rank, gap], axis=1).astype(np.float32)


if stage == "collect":  # the same rules-<task>.jsonl files as the answer stacker's
    for name in cfg.train_tasks:
        run.rule_answers(name, n=int(sys.argv[5]), folder=out)
    sys.exit(0)

split, seeds = sys.argv[5], [int(s) for s in sys.argv[6].split(",")]


def task_rows(name):
    """(X_base, X_set, y) for the task's rule-prompt queries: per scored prompt (rules + logged episodes)."""
    table, ctx = run.training_contexts(name)
    gold = label_ids(run.task(name)[0].labels, ctx.queries)
    index = {q.uid: j for j, q in enumerate(ctx.queries)}
    by_q: dict[int, list] = {}
    for line in (out / f"rules-{name}.jsonl").open():
        e = json.loads(line)
        by_q.setdefault(index[e["query"]], []).append((e["order"], e["logprobs"]))
    for e in run.store(name).load():
        i = index[e.query]
        if i in by_q:
            by_q[i].append((list(e.order), list(e.logprobs)))
    xb, xs, ys = [], [], []
    for i, items in by_q.items():
        lp = np.array([it[1] for it in items])
        x, ans = verifier_inputs(view, table, ctx, [it[0] for it in items], lp, K, rows=[i] * len(items))
        xb.append(x)
        xs.append(set_feats(lp))
        ys.append((ans == gold[i]).astype(np.float32))
    return np.concatenate(xb), np.concatenate(xs), np.concatenate(ys)


data = {name: task_rows(name) for name in cfg.train_tasks}
results = []
for target in cfg.eval_tasks:
    others = [t for t in cfg.train_tasks if t != target]
    xb = np.concatenate([data[t][0] for t in others])
    xs = np.concatenate([data[t][1] for t in others])
    y = np.concatenate([data[t][2] for t in others])
    v_set, _ = train_verifier(np.concatenate([xb, xs], 1), y, seed=0)
    v_rules, _ = train_verifier(xb, y, seed=0)  # per-candidate features, trained on the rule sets only
    pol = PerQueryPolicy.load(Path(cfg.policy_run or run_dir) / "policies" / f"loo-{target}-full-margin.safetensors")
    for seed in seeds:
        a = answered(run, target, seed, split, pol)
        (C, Q, L), gold, lp = a.shape, a.gold, a.logprobs
        x, ans = verifier_inputs(view, a.table, a.ctx, a.orders, lp, K, rows=a.rows)
        lp3 = lp.reshape(C, Q, L)
        sf = np.concatenate([set_feats(lp3[:, i])[:, None] for i in range(Q)], axis=1).reshape(C * Q, -1)
        ans = ans.reshape(C, Q)
        right, cols = ans == gold[None], np.arange(Q)
        r = {"task": target, "seed": seed, "split": split}
        r["verify"] = right[choose(pol.verifier.p_correct(x).reshape(C, Q), ans, L), cols].mean()
        p_set = v_set.p_correct(np.concatenate([x, sf], 1)).reshape(C, Q)
        r["set_verify"] = right[choose(p_set, ans, L), cols].mean()
        r["set_top"] = right[p_set.argmax(0), cols].mean()
        p_r = v_rules.p_correct(x).reshape(C, Q)
        r["rules_verify"] = right[choose(p_r, ans, L), cols].mean()
        r["max_conf"] = right[a.confidence().argmax(0), cols].mean()
        results.append(r)
        print(json.dumps({k: (round(float(v), 3) if not isinstance(v, str) else v) for k, v in r.items()}), flush=True)
keys = [k for k in results[0] if k not in ("task", "seed", "split")]
for k in keys:
    pt = [np.mean([r[k] for r in results if r["task"] == t]) for t in cfg.eval_tasks]
    print(f"{k:14s} " + " ".join(f"{100 * v:5.1f}" for v in pt) + f"  avg {100 * np.mean(pt):5.1f}")
