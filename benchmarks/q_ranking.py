"""LM-free check of an offline agent's settings: does its Q rank held-out episodes by their return?

Trains the offline agent on some rollout stores' episodes and reports, on held-out episodes, the Spearman
correlation between Q(s_t, a_t) and the episode's return for each step t. No LM is called and no test row
is read: the rollouts are training data (their rewards come from the training tasks' validation split).

    # 4-fold over one store
    python benchmarks/q_ranking.py "runs/rollouts/sst2-*table_labelled*.jsonl" --targets td,mc --alphas 0,0.1,1
    # train on some stores, hold out another task's store (leave-one-task-out among training tasks)
    python benchmarks/q_ranking.py "runs/rollouts/trec-*" "runs/rollouts/subj-*" --held-out "runs/rollouts/agnews-*"
"""

from __future__ import annotations

import argparse
import glob

import numpy as np
import torch
from scipy.stats import spearmanr

from agents.offline import OfflineCQLAgent
from agents.rollouts import Episode, RolloutStore, stack_episodes


def _load(patterns: list[str], n: int | None) -> list[Episode]:
    eps: list[Episode] = []
    for pat in patterns:
        paths = sorted(p for p in glob.glob(pat) if p.endswith(".jsonl"))
        if len(paths) != 1:
            raise SystemExit(f"pattern {pat!r} matches {len(paths)} stores; expected exactly one")
        eps += RolloutStore(paths[0]).load()[:n]
    return eps


def ranking(train: list[Episode], test: list[Episode], **agent_kw) -> list[float]:
    """Per step t: Spearman(Q(s_t, a_t), return) on ``test`` after training on ``train``."""
    agent = OfflineCQLAgent(eval_interval=max(1, agent_kw["gradient_steps"] // 8), **agent_kw).learn(train)
    b = stack_episodes(test)
    with torch.no_grad():
        q = agent.qnet(torch.as_tensor(b["state"]), torch.as_tensor(b["cands"]))
    qa = q[torch.arange(q.shape[0]), torch.as_tensor(b["action"])].numpy()
    step = np.concatenate([np.arange(len(e.actions)) for e in test])
    ret = np.repeat([float(np.sum(e.rewards)) for e in test], [len(e.actions) for e in test])
    return [float(spearmanr(qa[step == t], ret[step == t]).statistic) for t in range(int(step.max()) + 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+", help="training stores (glob patterns, one store each)")
    ap.add_argument("--held-out", nargs="*", default=None, help="held-out stores (default: 4-fold over the training ones)")
    ap.add_argument("--episodes", type=int, default=None, help="first N episodes of each store")
    ap.add_argument("--targets", default="td,mc")
    ap.add_argument("--alphas", default="0.1")
    ap.add_argument("--steps", default="500")
    ap.add_argument("--hidden", default="64,64")
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train = _load(args.stores, args.episodes)
    held = _load(args.held_out, args.episodes) if args.held_out else None
    hidden = [int(h) for h in args.hidden.split(",")]
    print(f"{len(train)} training episodes" + (f", {len(held)} held-out" if held else ", 4-fold"), flush=True)
    for target in args.targets.split(","):
        for alpha in map(float, args.alphas.split(",")):
            for steps in map(int, args.steps.split(",")):
                res = []
                for seed in map(int, args.seeds.split(",")):
                    kw = dict(hidden=hidden, gradient_steps=steps, seed=seed, cql_alpha=alpha, target=target)
                    if held is not None:
                        res.append(ranking(train, held, **kw))
                    else:
                        res += [ranking([e for i, e in enumerate(train) if i % 4 != f], train[f::4], **kw)
                                for f in range(4)]
                r = np.array(res)
                print(f"target={target} cql_alpha={alpha} steps={steps}: Spearman(Q(s_t,a_t), return) by step t "
                      f"{np.round(r.mean(axis=0), 2).tolist()} (mean over {len(r)} folds/seeds)", flush=True)


if __name__ == "__main__":
    main()
