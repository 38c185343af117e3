"""LM-free check of an offline agent's settings: does its Q rank held-out episodes by their return?

Trains the offline agent on some rollout stores' episodes and reports, on held-out episodes:

* ``rho_t``: the Spearman correlation between Q(s_t, a_t) and the episode's return, for each step t;
* ``top10``: the mean return of the 10 held-out episodes whose final Q(s_T, a_T) is highest, minus the mean
  return of all held-out episodes, in points of validation accuracy (what choosing the best-looking of
  the held-out random sets by Q would gain over a random one; 0 for a Q that knows nothing);
* ``rank32``: what ``policy_rank`` with ``n_sets = 32`` would gain: over 300 random draws of 32 held-out
  episodes, the return of the one with the highest final Q minus the mean return, in points.

No LM is called and no test row is read: the rollouts are training data (their rewards come from the
training tasks' validation split), so settings can be chosen with it.

    # 4-fold over one store
    python benchmarks/q_ranking.py "runs/rollouts/sst2-*table_labelled*.jsonl" --targets td,mc --alphas 0,0.1,1
    # train on some stores, hold out another task's store
    python benchmarks/q_ranking.py "runs/rollouts/trec-*" "runs/rollouts/subj-*" --held-out "runs/rollouts/agnews-*"
    # transfer: each store in turn held out, the agent trained on all the others (mean over tasks)
    python benchmarks/q_ranking.py "runs/rollouts/*table_labelled*.jsonl" --leave-one-out --seeds 0,1,2
    # learning curve: the same, each training store cut to its first 25 / 50 / 100 episodes
    python benchmarks/q_ranking.py "runs/rollouts/*table_labelled*.jsonl" --leave-one-out --train-episodes 25,50,100
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from agents.offline import OfflineCQLAgent
from agents.rollout_store import Episode, RolloutStore
from agents.rollouts import stack_episodes, standardize_returns
from rl_select.mdp.feature_spec import FeatureSpec


def _load(patterns: list[str], n: int | None) -> dict[str, list[Episode]]:
    """``{store name: its first n episodes}``; each pattern may match several stores."""
    out: dict[str, list[Episode]] = {}
    for pat in patterns:
        paths = sorted(p for p in glob.glob(pat) if p.endswith(".jsonl"))
        if not paths:
            raise SystemExit(f"pattern {pat!r} matches no rollout store (*.jsonl)")
        for p in paths:
            out[Path(p).name] = RolloutStore(p).load()[:n]
    return out


def keep_features(episodes: list[Episode], state_cols: list[int], cand_cols: list[int]) -> list[Episode]:
    """The episodes with every state / candidate feature outside the given columns set to 0."""
    out = []
    for ep in episodes:
        st, ca = np.array(ep.states, dtype=np.float32), np.array(ep.candidates, dtype=np.float32)
        st[:, np.setdiff1d(np.arange(st.shape[1]), state_cols)] = 0.0
        ca[:, :, np.setdiff1d(np.arange(ca.shape[2]), cand_cols)] = 0.0
        out.append(dataclasses.replace(ep, states=st, candidates=ca))
    return out


def ranking(train: list[Episode], test: list[Episode], **agent_kw) -> tuple[list[float], float, float]:
    """``(rho per step t, top10 lift, rank32 lift)`` on ``test`` after training on ``train`` (lifts in points)."""
    agent = OfflineCQLAgent(eval_interval=max(1, agent_kw["gradient_steps"] // 8), **agent_kw).learn(train)
    b = stack_episodes(test)
    with torch.no_grad():
        q = agent.qnet(torch.as_tensor(b["state"]), torch.as_tensor(b["cands"]))
    qa = q[torch.arange(q.shape[0]), torch.as_tensor(b["action"])].numpy()
    lengths = [len(e.actions) for e in test]
    step = np.concatenate([np.arange(n) for n in lengths])
    returns = np.array([float(np.sum(e.rewards)) for e in test])
    ret = np.repeat(returns, lengths)
    rho = [float(spearmanr(qa[step == t], ret[step == t]).statistic) for t in range(int(step.max()) + 1)]
    final_q = qa[np.cumsum(lengths) - 1]
    top = np.argsort(-final_q, kind="stable")[: min(10, len(test))]
    rng = np.random.default_rng(0)
    draws = [rng.choice(len(test), size=min(32, len(test)), replace=False) for _ in range(300)]
    rank32 = float(np.mean([returns[d][np.argmax(final_q[d])] for d in draws]) - returns.mean())
    return rho, 100.0 * float(returns[top].mean() - returns.mean()), 100.0 * rank32


def _columns(spec: str | None, names: tuple[str, ...]) -> list[int] | None:
    if spec is None:
        return None
    cols = [c.strip() for c in spec.split(",") if c.strip()]
    unknown = [c for c in cols if c not in names]
    if unknown:
        raise SystemExit(f"unknown feature(s) {unknown}; expected some of {list(names)}")
    return [names.index(c) for c in cols]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+", help="training stores (glob patterns)")
    ap.add_argument("--held-out", nargs="*", default=None,
                    help="held-out stores (default: 4-fold over the training ones)")
    ap.add_argument("--leave-one-out", action="store_true",
                    help="hold out each store in turn and train on all the others (transfer)")
    ap.add_argument("--episodes", type=int, default=None, help="first N episodes of each store")
    ap.add_argument("--train-episodes", default=None,
                    help="train on the first N episodes of each training store, held-out stores whole; "
                         "comma-separated for a learning curve (for example 25,50,100)")
    ap.add_argument("--targets", default="td,mc")
    ap.add_argument("--alphas", default="0.1")
    ap.add_argument("--steps", default="500")
    ap.add_argument("--hidden", default="64,64")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--feature-set", default="table_labelled", help="the stores' feature set (for --keep-*)")
    ap.add_argument("--keep-state", default=None, help="state features to keep (names, comma-separated)")
    ap.add_argument("--return-norm", choices=["none", "task"], default="none",
                    help="task: each training store's returns as z-scores within the store (standardize_returns)")
    ap.add_argument("--keep-cand", default=None, help="candidate features to keep (names, comma-separated)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    stores = _load(args.stores, args.episodes)
    held = _load(args.held_out, args.episodes) if args.held_out else None
    fs = FeatureSpec(args.feature_set)
    scols, ccols = _columns(args.keep_state, fs.state_names), _columns(args.keep_cand, fs.cand_names)
    if scols is not None or ccols is not None:
        scols = list(range(fs.state_dim)) if scols is None else scols
        ccols = list(range(fs.cand_dim)) if ccols is None else ccols
        stores = {k: keep_features(v, scols, ccols) for k, v in stores.items()}
        held = None if held is None else {k: keep_features(v, scols, ccols) for k, v in held.items()}
    if args.return_norm == "task" and not args.leave_one_out:
        raise SystemExit("--return-norm task needs --leave-one-out (the held-out store keeps its raw returns)")
    norm = standardize_returns if args.return_norm == "task" else list
    all_train = [e for eps in stores.values() for e in eps]
    if args.train_episodes is not None and not args.leave_one_out:
        raise SystemExit("--train-episodes needs --leave-one-out")
    curve = [None] if args.train_episodes is None else [int(n) for n in args.train_episodes.split(",")]
    hidden = [int(h) for h in args.hidden.split(",")]
    for n_train in curve:
        if args.leave_one_out:
            folds = [([e for n, eps in stores.items() if n != name for e in norm(eps[:n_train])], stores[name])
                     for name in stores]
            how = f"leave-one-out over {len(stores)} stores"
            if n_train is not None:
                how += f", the first {n_train} episodes of each training store"
        elif held is not None:
            folds = [(all_train, [e for eps in held.values() for e in eps])]
            how = f"{len(folds[0][1])} held-out episodes"
        else:
            folds = [([e for i, e in enumerate(all_train) if i % 4 != f], all_train[f::4]) for f in range(4)]
            how = "4-fold"
        print(f"{len(folds[0][0])} training episodes per fold, {how}", flush=True)
        _report(folds, args, hidden)


def _report(folds: list[tuple[list[Episode], list[Episode]]], args: argparse.Namespace, hidden: list[int]) -> None:
    """One line per (target, CQL weight, steps): rho per step and the lifts, averaged over folds and seeds."""
    for target in args.targets.split(","):
        for alpha in map(float, args.alphas.split(",")):
            for steps in map(int, args.steps.split(",")):
                rhos, tops, ranks = [], [], []
                for seed in map(int, args.seeds.split(",")):
                    kw = dict(hidden=hidden, gradient_steps=steps, seed=seed, cql_alpha=alpha, target=target)
                    for train, test in folds:
                        rho, top, rank = ranking(train, test, **kw)
                        rhos.append(rho)
                        tops.append(top)
                        ranks.append(rank)
                r = np.array(rhos)
                lifts = f"top10 {np.mean(tops):+.1f}, rank32 {np.mean(ranks):+.1f} points"
                print(f"target={target} cql_alpha={alpha} steps={steps} hidden={hidden}: rho_t "
                      f"{np.round(r.mean(axis=0), 2).tolist()}, {lifts} (mean over {len(r)} folds x seeds)", flush=True)

if __name__ == "__main__":
    main()
