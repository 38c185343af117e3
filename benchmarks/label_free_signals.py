"""Which LABEL-FREE statistics of a prompt's predictions on unlabelled queries track its validation accuracy?

For every episode of an ablation grid's rollout stores, the episode's final prompt is rebuilt (the env is
reset with the episode's seed, its chosen candidates taken in order) and scored on the task's
reward-validation queries: the rows the terminal reward already scored, so a warm score cache answers
every one (the script prints the misses). From the label log-probs (calibrated if the run is), it computes
statistics that need no validation label, and reports per task:

* ``rho``: the Spearman correlation of each statistic with the episode's return (validation accuracy);
* ``rank32``: the gain, in validation points, of picking among 32 random episodes the one where the
  statistic is highest, over a random one (300 draws; 0 for a statistic that knows nothing).

Statistics (:data:`rl_select.mdp.critic.CRITIC_FEATURES`, the probe critic's inputs):

* ``pred_entropy``: entropy of the histogram of arg-max predictions / log L (Lu et al. 2022's GlobalE);
* ``mean_entropy``: entropy of the mean predicted label distribution / log L;
* ``mean_max``: mean over queries of the top label probability (confidence);
* ``query_entropy``: mean over queries of each query's entropy / log L;
* ``demo_balance``: entropy of the demos' own label counts / log L (reads the pool labels only).

No test row is read. One process at a time may run the model: run it when no other LM job is running.

    python benchmarks/label_free_signals.py configs/ablate_stop.toml
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from agents.rollout_store import Episode, RolloutStore
from rl_select.experiments.ablate import load_plan
from rl_select.experiments.collection import store_path
from rl_select.experiments.harness import scorer_factory
from rl_select.experiments.task_envs import build_task_envs
from rl_select.mdp.critic import CRITIC_FEATURES, ProbeCritic, critic_features

STATS = CRITIC_FEATURES  # pred_entropy, mean_entropy, mean_max, query_entropy, demo_balance


def prompt_stats(val_logprobs: np.ndarray, demo_labels: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """The label-free statistics of one prompt (the probe critic's features) from its val log-probs ``(V, L)``."""
    return dict(zip(STATS, critic_features(val_logprobs, demo_labels, labels).tolist()))


def rank_lift(stat: np.ndarray, returns: np.ndarray, n: int = 32, draws: int = 300) -> float:
    """Mean return of the highest-``stat`` episode among ``n`` random ones, minus the mean return."""
    rng = np.random.default_rng(0)
    picks = [returns[d][np.argmax(stat[d])] for d in (rng.choice(len(returns), size=min(n, len(returns)),
                                                                 replace=False) for _ in range(draws))]
    return float(np.mean(picks) - returns.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="an ablation TOML whose cells' stores to read (its first cell per task)")
    ap.add_argument("--episodes", type=int, default=None, help="the first N episodes of each store")
    ap.add_argument("--tasks", default=None, help="only these tasks of the grid (comma-separated)")
    args = ap.parse_args()
    plan = load_plan(args.config)
    seen: dict[str, object] = {}
    for cell in plan.cells:
        if args.tasks is None or cell.cfg.task in args.tasks.split(","):
            seen.setdefault(cell.cfg.task, cell.cfg)
    factory = None
    per_task: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    table: list[tuple[str, dict[str, tuple[float, float]], int, int]] = []
    for task, cfg in seen.items():
        cfg = cfg.updated(train_tasks=[task])
        path = store_path(cfg, task)
        episodes: list[Episode] = RolloutStore(path).load()[: args.episodes]
        if not episodes:
            print(f"{task}: no episodes in {path}; skipped", flush=True)
            continue
        factory = factory or scorer_factory(cfg)
        te = build_task_envs(cfg, factory)[0]
        env, scorer = te.env, te.scorer
        labels = list(scorer.spec.labels)
        before = scorer.stats.copy()
        rows, returns = [], []
        for ep in episodes:
            env.reset(seed=ep.env_seed)
            demos = [env.candidates[i] for i in ep.chosen]
            lp = np.asarray(scorer.logprobs(demos=demos, queries=env.val), dtype=np.float64)
            gold = np.array([labels.index(e.label) for e in env.val])
            acc = float(np.mean(lp.argmax(axis=1) == gold))
            if cfg.mdp.reward == "terminal" and abs(acc - ep.ret) > 1e-6:  # terminal return = val accuracy
                raise SystemExit(f"{task} episode {ep.episode}: replayed val accuracy {acc} differs from its "
                                 f"stored return {ep.ret}; expected the store's own settings")
            rows.append(prompt_stats(lp, [d.label for d in demos], labels))
            returns.append(acc)
        spent = scorer.stats - before
        ret = np.array(returns)
        res = {}
        for name in STATS:
            col = np.array([r[name] for r in rows])
            rho = float(spearmanr(col, ret).statistic) if col.std() > 0 else 0.0
            res[name] = (rho, 100.0 * rank_lift(col, ret))
        table.append((task, res, len(episodes), int(spent.cache_misses)))
        per_task[task] = (np.array([[r[f] for f in STATS] for r in rows]), ret)
        print(f"{task}: {len(episodes)} episodes, {spent.cache_misses} LM misses, val acc {100 * ret.mean():.1f} ± "
              f"{100 * ret.std():.1f}", flush=True)
    if len(per_task) > 1:
        for norm in ("raw", "task"):
            rhos, lifts = [], []
            for held in per_task:
                xs = [per_task[t][0] for t in per_task if t != held]
                ys = [per_task[t][1] for t in per_task if t != held]
                if norm == "task":
                    ys = [(y - y.mean()) / (y.std() or 1.0) for y in ys]
                score = ProbeCritic.fit(list(zip(xs, ys))).score(per_task[held][0])
                ret = per_task[held][1]
                rhos.append(float(spearmanr(score, ret).statistic))
                lifts.append(100.0 * rank_lift(score, ret))
            print(f"leave-one-task-out ridge critic on {list(STATS)} (returns {norm}): "
                  + ", ".join(f"{t} rho {r:+.2f} rank32 {x:+.1f}" for t, r, x in zip(per_task, rhos, lifts))
                  + f"; mean rank32 {np.mean(lifts):+.1f}", flush=True)
    print("\n| statistic | " + " | ".join(t for t, *_ in table) + " | mean rank32 |")
    print("|---|" + "---|" * (len(table) + 1))
    for name in STATS:
        cells = [f"rho {r[name][0]:+.2f}, rank32 {r[name][1]:+.1f}" for _, r, *_ in table]
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean([r[name][1] for _, r, *_ in table]):+.1f} |")


if __name__ == "__main__":
    main()
