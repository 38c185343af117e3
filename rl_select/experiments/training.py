"""From a run config to trained agents and an exported policy: :func:`train_agent`, the probe critic, the
training run's own selection, the learning curve.

The CLI's ``collect`` and ``train`` commands are thin wrappers over
:func:`~rl_select.experiments.collection.collect_rollouts` (on any executor, its units run by
:class:`~rl_select.experiments.collection.EpisodeWorker`) and :func:`train_agent`, over the envs of
:mod:`rl_select.experiments.task_envs`. The names of those two modules are importable from here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.monitor import Monitor

from agents.rollout_store import RolloutStore
from rl_select.errors import ConfigError
from rl_select.experiments.collection import (
    EpisodeWorker,
    check_stores,
    collect_rollouts,
    load_rollouts,
    store_meta,
    store_path,
)
from rl_select.experiments.config import RunConfig
from rl_select.experiments.executors import add_stats
from rl_select.experiments.task_envs import (
    RoundRobinEnv,
    TaskEnv,
    build_task_envs,
    check_task_envs,
    table_folder,
)
from rl_select.lm.base import CachedScorer, ScorerStats
from rl_select.mdp.critic import ProbeCritic, critic_features
from rl_select.mdp.policy import SelectorPolicy
from rl_select.metrics import label_ids

__all__ = [
    "CRITIC_RETURNS", "EpisodeWorker", "RoundRobinEnv", "TaskEnv", "TrainResult", "build_task_envs",
    "check_agent_tasks", "check_stores", "check_task_envs", "collect_rollouts", "fit_probe_critic", "load_rollouts",
    "plot_curve", "policy_selection", "store_meta", "store_path", "table_folder", "train_agent",
]


def check_agent_tasks(cfg: RunConfig, n_tasks: int | None = None) -> None:
    """Refuse several training tasks for an agent that learns one fixed pool (before the LM loads).

    Raises:
        ConfigError: One line naming the agent.
    """
    from agents.registry import agent_class

    cls = agent_class(cfg.agent.name)
    if cls.tags.fixed_pool and (len(cfg.train_tasks) if n_tasks is None else n_tasks) != 1:
        raise ConfigError(f"the {cls.name} agent learns one fixed pool of one task; expected a single task")


CRITIC_RETURNS = "raw"
"""The probe critic's regression target (raw returns ranked a held-out task as well as per-task z-scores in the
leave-one-task-out check of docs/reference.md, ``benchmarks/label_free_signals.py``)."""


def fit_probe_critic(cfg: RunConfig, task_envs: Sequence[TaskEnv]) -> ProbeCritic:
    """The probe critic on the first ``cfg.agent.critic_episodes`` (default ``episodes``) stored episodes of every
    training task.

    Each episode is replayed (its env reset with its own seed gives back its candidates) and its final
    prompt scored on the task's val split: the rows the terminal reward scored when it was collected, so
    with that cache every one is a hit. Refused if a replayed terminal accuracy differs from the stored
    return (the store was collected under other settings)."""
    per_task = []
    for te in task_envs:
        env, labels = te.env, list(te.scorer.spec.labels)
        gold = label_ids(labels, env.val)  # the val split is fixed per env; only the candidates change
        xs, ys = [], []
        n = min(cfg.agent.episodes, cfg.agent.critic_episodes or cfg.agent.episodes)
        for ep in RolloutStore(store_path(cfg, te.task)).load()[:n]:
            env.reset(seed=ep.env_seed)
            demos = [env.candidates[i] for i in ep.chosen]
            lp = np.asarray(te.scorer.logprobs(demos=demos, queries=env.val), dtype=np.float64)
            acc = float(np.mean(lp.argmax(axis=1) == gold))
            if cfg.mdp.reward == "terminal" and abs(acc - ep.ret) > 1e-6:
                raise ConfigError(f"{te.task} rollout {ep.episode}: replayed val accuracy {acc:.4f} differs from its "
                                  f"stored return {ep.ret:.4f}; expected a store collected under this config")
            xs.append(critic_features(lp, [d.label for d in demos], labels))
            ys.append(acc)
        per_task.append((np.array(xs), np.array(ys)))
    return ProbeCritic.fit(per_task, returns=CRITIC_RETURNS)


@dataclass
class TrainResult:
    """What :func:`train_agent` produced."""

    agent: Any
    policy: SelectorPolicy | None
    curve: list[tuple[float, float]]
    curve_label: str
    summary: dict[str, Any]
    lm: ScorerStats


def train_agent(cfg: RunConfig, task_envs: Sequence[TaskEnv], *, progress: bool = False) -> TrainResult:
    """Train ``cfg.agent.name``; export a :class:`SelectorPolicy` where the agent declares one (not tabular: its
    table is tied to pool indices).

    The agent's declaration (:class:`~agents.registry.AgentTags`) says what it learns from: an env agent plays
    in the task's env (several tasks round-robin), a rollouts agent learns from the stored episodes
    (validating in the first task's env). The policy records the first task's full spec and the resolved spec
    of the scorer the agent trained with (``scorer.scorer_spec``), so whoever loads it rebuilds exactly that
    scorer.
    """
    from agents.registry import agent_class

    seed = cfg.seeds[0]
    cls = agent_class(cfg.agent.name)
    check_agent_tasks(cfg, len(task_envs))
    before = [te.scorer.stats.copy() for te in task_envs]
    if cls.tags.learns_from == "env":
        env = Monitor(task_envs[0].env if cls.tags.fixed_pool else RoundRobinEnv([te.env for te in task_envs]))
        agent = cls.train_from(env, cfg.agent, seed=seed, progress=progress)
        curve = [(i + 1, r) for i, r in enumerate(env.get_episode_rewards())]
        label = "episode return"
    else:
        episodes = load_rollouts(cfg, task_envs)
        if not episodes:
            raise ConfigError("no rollouts to learn from; run `rl-select collect` with the same settings first")
        agent = cls.train_from(episodes, cfg.agent, seed=seed, env=task_envs[0].env, progress=progress)
        curve = [(h["step"], h["score"]) for h in agent.summary["history"]]
        label = "greedy validation return" if cfg.agent.val_episodes else "minus held-out TD objective"
    critic = None
    if cfg.agent.probe_critic:  # validated: the offline agent's stores
        critic = fit_probe_critic(cfg, task_envs)
    lm = ScorerStats()
    for te, b in zip(task_envs, before):
        lm = add_stats(lm, te.scorer.stats - b)
    policy = None
    if cls.tags.exports_policy:
        policy = SelectorPolicy(
            agent.qnet, feature_spec=task_envs[0].env.feature_spec, k=cfg.k, task=task_envs[0].scorer.spec,
            scorer_spec=getattr(task_envs[0].scorer, "scorer_spec", None),
            scorer_fingerprint=task_envs[0].scorer.fingerprint, allow_stop=cfg.mdp.allow_stop, min_len=cfg.mdp.min_len,
            critic=critic,
            training={"agent": cfg.agent.name, "agent_config": agent.config(), "tasks": [te.task for te in task_envs],
                      "summary": _jsonable(agent.summary), "lm_calls": lm.as_dict(), "config": cfg.to_dict()},
        )
    return TrainResult(agent=agent, policy=policy, curve=curve, curve_label=label,
                       summary=_jsonable(agent.summary), lm=lm)


def policy_selection(cfg: RunConfig, policy: SelectorPolicy, scorer: CachedScorer) -> dict[str, Any]:
    """The training run's own use of its policy: the demonstrations it picks from seed ``cfg.seeds[0]``'s pool.

    The pool / val split is the one ``rl-select select`` and the evaluation harness draw for that seed, and
    the scorer is the training scorer, so ``rl-select select --policy`` must give the same list.

    Returns:
        ``{"seed", "demos": [uid, ...], "val_acc", "lm_queries"}``.
    """
    from rl_select.experiments.harness import TaskData
    from rl_select.metrics import accuracy

    seed = cfg.seeds[0]
    splits = TaskData.load(cfg).splits(cfg, seed)
    demos = policy.select(splits.pool, scorer=scorer, val=splits.val)
    return {"seed": seed, "demos": [d.uid for d in demos],
            "val_acc": accuracy(scorer, demos=demos, examples=splits.val),
            "lm_queries": (policy.last_selection_info or {}).get("lm_queries")}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def plot_curve(curve: Sequence[tuple[float, float]], path: Path, *, title: str, ylabel: str) -> Path:
    """Learning curve PNG: raw points and, for long curves, a moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if curve:
        x, y = np.array(curve, dtype=float).T
        ax.plot(x, y, "." if len(x) > 30 else "o-", alpha=0.4 if len(x) > 30 else 1.0, label=ylabel)
        if len(y) > 30:
            w = max(5, len(y) // 20)
            ax.plot(x[w - 1:], np.convolve(y, np.ones(w) / w, mode="valid"), "-", label=f"moving mean ({w})")
        ax.legend(fontsize=8)
    ax.set_xlabel("episode" if "episode" in ylabel else "gradient step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
