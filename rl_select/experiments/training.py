"""From a run config to trained agents and an exported policy: env building, collection, training.

The CLI's ``collect`` and ``train`` commands are thin wrappers over :func:`collect_rollouts` (on any
executor, its units run by :class:`EpisodeWorker`) and :func:`train_agent`. Each task in
``cfg.train_tasks`` (default ``[cfg.task]``) gets its own env with the same feature spec, pool size and
k, all sharing one loaded LM; several tasks are visited round-robin (:class:`RoundRobinEnv`), which is
how a policy learns to transfer to a task it never saw.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor

from agents.rollouts import (
    Episode,
    RolloutStore,
    check_continues,
    random_valid_action,
    run_logged_episode,
    standardize_returns,
)
from envs.demo_selection import DemoSelectionEnv
from rl_select.data import Splits, load_task, make_splits
from rl_select.errors import ConfigError, SelectionError
from rl_select.experiments.config import RunConfig
from rl_select.experiments.executors import Executor, ScorerFactory, add_stats
from rl_select.lm.base import CachedScorer, ScorerStats
from rl_select.lm.cache import check_cache, default_cache_path
from rl_select.mdp.critic import ProbeCritic, critic_features
from rl_select.mdp.episode import EpisodeRule
from rl_select.mdp.features import FeatureSpec
from rl_select.mdp.policy import SelectorPolicy
from rl_select.mdp.table import RowTable
from rl_select.metrics import label_ids
from rl_select.tasks import TaskSpec, resolve_task


@dataclass
class TaskEnv:
    """One task's training env and the scorer behind it."""

    task: str
    env: DemoSelectionEnv
    scorer: CachedScorer


def build_task_envs(cfg: RunConfig, scorer_for: Callable[[Any], CachedScorer], *, fixed_pool: bool = False,
                    seed: int | None = None) -> list[TaskEnv]:
    """An env per training task; ``scorer_for(spec)`` gives that task's scorer (one shared LM).

    The pool (the split episodes draw their candidates from) is ``cfg.splits.train_pool`` train rows and the
    reward split the same ``cfg.splits.n_val`` rows the evaluation harness uses for this seed (``make_splits``
    draws val first); test rows are never seen.
    """
    seed = cfg.rollout_seed if seed is None else seed
    out = []
    for task in cfg.train_tasks:
        spec, splits = _episode_splits(cfg, task, seed)
        scorer = scorer_for(spec)
        folder = table_folder(cfg)
        table = (RowTable.in_folder(scorer, folder) if folder is not None else RowTable(scorer)) \
            if FeatureSpec(cfg.mdp.feature_set).uses_table else None
        env = DemoSelectionEnv(
            row_table=table,
            scorer=scorer, pool=splits.pool, val=splits.val, k=cfg.k, n_candidates=cfg.n_candidates,
            feature_set=cfg.mdp.feature_set, reward=cfg.mdp.reward, allow_stop=cfg.mdp.allow_stop,
            min_len=cfg.mdp.min_len, fixed_pool=fixed_pool,
        )
        out.append(TaskEnv(task=spec.name, env=env, scorer=scorer))
    return out


def _episode_splits(cfg: RunConfig, task: str, seed: int) -> tuple[TaskSpec, Splits]:
    """A training task's spec and its splits: the pool episodes draw from, and the reward's val rows."""
    spec = resolve_task(task)
    train, test = load_task(spec, data=cfg.data if task == cfg.task else None)
    sp = cfg.splits
    splits = make_splits(train, test, n_pool=max(1, min(sp.train_pool, len(train) - sp.n_val)), n_val=sp.n_val,
                         n_test=1, seed=seed, stratify=sp.stratify)
    return spec, splits


def check_task_envs(cfg: RunConfig, *, seed: int | None = None) -> None:
    """Refuse, before the LM loads, what :func:`build_task_envs` would refuse after it: the data and its splits,
    the episode rule, ``n_candidates`` against each task's pool, and the score cache.

    Raises:
        RLSelectError: One line naming the value and what was expected.
    """
    check_cache(cfg.cache)
    rule = EpisodeRule(n_candidates=cfg.n_candidates, k=cfg.k, allow_stop=cfg.mdp.allow_stop, min_len=cfg.mdp.min_len)
    for task in cfg.train_tasks:
        spec, splits = _episode_splits(cfg, task, cfg.rollout_seed if seed is None else seed)
        if rule.n_candidates > len(splits.pool):
            n = len(splits.pool)
            raise SelectionError(f"n_candidates={rule.n_candidates} exceeds the {n} train rows episodes of task "
                                 f"{spec.name!r} draw from (train_pool={cfg.splits.train_pool}); expected "
                                 f"n_candidates <= {n}")
        if not splits.val:
            raise SelectionError(f"n_val=0 leaves task {spec.name!r} no reward rows; expected n_val >= 1")


def check_agent_tasks(cfg: RunConfig, n_tasks: int | None = None) -> None:
    """Refuse several training tasks for an agent that learns one fixed pool (before the LM loads).

    Raises:
        ConfigError: One line naming the agent.
    """
    from agents.registry import agent_class

    cls = agent_class(cfg.agent.name)
    if cls.tags.fixed_pool and (len(cfg.train_tasks) if n_tasks is None else n_tasks) != 1:
        raise ConfigError(f"the {cls.name} agent learns one fixed pool of one task; expected a single task")


def check_stores(cfg: RunConfig, *, to_learn_from: bool = False) -> None:
    """Refuse, before the LM loads, a rollout store collected under other settings (what
    :func:`collect_rollouts` refuses after it) and, ``to_learn_from``, a store with no episodes to train on.

    Raises:
        DataError, ConfigError: One line naming the store.
    """
    for task in cfg.train_tasks:
        store = RolloutStore(store_path(cfg, task))
        if store.path.is_dir():
            raise ConfigError(f"rollout store {str(store.path)!r} is a folder; expected a .jsonl file path")
        store.check_meta(store_meta(cfg, task))
        if to_learn_from and not len(store):
            raise ConfigError(f"rollout store {str(store.path)!r} holds no episodes of task {task!r}; expected "
                              "rollouts: run `rl-select collect` with the same settings first")


def table_folder(cfg: RunConfig) -> Path | None:
    """Where the one-off row tables live: ``tables/`` beside the score cache (``None`` with ``cache = none``)."""
    if cfg.cache and str(cfg.cache).lower() == "none":
        return None
    return Path(cfg.cache or default_cache_path()).parent / "tables"


def store_meta(cfg: RunConfig, task: str) -> dict[str, Any]:
    """Every setting a stored episode depends on (a store's header; another value is refused on append).

    The collection seed and policy are checked against the last episode (:func:`check_continues`)."""
    spec = resolve_task(task)
    lm, sp, mdp = cfg.lm, cfg.splits, cfg.mdp
    task_digest = hashlib.sha256(json.dumps(spec.digest_fields(), sort_keys=True).encode()).hexdigest()[:16]
    return {"task": spec.name, "task_digest": task_digest, "feature_set": mdp.feature_set,
            "feature_version": FeatureSpec(mdp.feature_set).version, "reward": mdp.reward,
            "n_candidates": cfg.n_candidates, "k": cfg.k, "allow_stop": mdp.allow_stop, "min_len": mdp.min_len,
            "n_val": sp.n_val, "train_pool": sp.train_pool, "stratify": sp.stratify,
            "backend": lm.backend, "model": lm.model, "dtype": lm.dtype, "mode": lm.mode, "calibrate": lm.calibrate,
            "length_norm": lm.length_norm}


class RoundRobinEnv(gym.Env):
    """Several :class:`DemoSelectionEnv` of identical spaces, one per task, visited in turn per episode."""

    def __init__(self, envs: Sequence[DemoSelectionEnv]) -> None:
        if not envs:
            raise ConfigError("no training task; expected at least one")
        first = envs[0]
        for e in envs[1:]:
            if e.observation_space != first.observation_space or e.action_space.n != first.action_space.n:
                raise ConfigError("training tasks need the same n_candidates and feature set to share one policy")
        self.envs = list(envs)
        self.observation_space = first.observation_space
        self.action_space = first.action_space
        self._i = -1
        self._current = first

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._i = (self._i + 1) % len(self.envs)
        self._current = self.envs[self._i]
        self.action_space = self._current.action_space
        return self._current.reset(seed=int(self.np_random.integers(2**31)), options=options)

    def step(self, action):
        return self._current.step(action)

    def action_masks(self) -> np.ndarray:
        return self._current.action_masks()


def store_path(cfg: RunConfig, task: str) -> Path:
    """Default rollout store of a task: named after every setting that changes the episodes."""
    if cfg.agent.store and len(cfg.train_tasks) == 1:
        return Path(cfg.agent.store)
    lm, sp, mdp = cfg.lm, cfg.splits, cfg.mdp
    key = {"model": lm.model, "mode": lm.mode, "calibrate": lm.calibrate, "k": cfg.k, "n_val": sp.n_val,
           "train_pool": sp.train_pool, "feature_set": mdp.feature_set, "reward": mdp.reward,
           "allow_stop": mdp.allow_stop, "min_len": mdp.min_len, "stratify": sp.stratify,
           "task": task, "n_candidates": cfg.n_candidates, "seed": cfg.rollout_seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    base = Path(cfg.agent.store).parent if cfg.agent.store else Path(cfg.out) / "rollouts"
    return base / f"{task}-N{cfg.n_candidates}-k{cfg.k}-{cfg.mdp.feature_set}-{cfg.mdp.reward}-{digest}.jsonl"


class EpisodeWorker:
    """Runs random-policy episodes ``(task, index, seed)`` on one env per training task.

    The worker of :func:`collect_rollouts`, on any :class:`~rl_select.experiments.executors.Executor`.

    Args:
        task_envs: From :func:`build_task_envs`; ``task`` indexes them.
    """

    def __init__(self, task_envs: Sequence[TaskEnv]) -> None:
        self.task_envs = list(task_envs)
        self.scorers = [te.scorer for te in self.task_envs]

    @classmethod
    def from_config(cls, cfg: RunConfig, factory: ScorerFactory) -> EpisodeWorker:
        """The worker of ``cfg``'s training tasks, with the LM ``factory(cfg)`` loads."""
        return cls(build_task_envs(cfg, factory(cfg)))

    def run(self, task: int, index: int, seed: int) -> Episode:
        """Episode ``index`` of collection ``seed`` on task ``task``."""
        return run_logged_episode(self.task_envs[task].env, index=index, seed=seed, choose=random_valid_action,
                                  policy="random")


def collect_rollouts(cfg: RunConfig, executor: Executor, *, progress: Callable[[str], None] | None = None
                     ) -> list[dict[str, Any]]:
    """Random-policy rollouts of every training task into its store, on ``executor`` (of an :class:`EpisodeWorker`).

    Resumable: each store continues at its first missing episode (refused if it holds another seed's or
    policy's episodes), and episodes are written in index order, so every executor writes the same bytes.

    Args:
        cfg: The run config (``episodes`` per task, the seed ``cfg.rollout_seed``, the stores).
        executor: Where the episodes run; started only if some are missing.
        progress: Called with a line after each written episode.

    Returns:
        Per task: ``task``, ``store``, ``episodes`` (held), ``written`` (by this call), LM spend (``lm_*``).
    """
    seed, tasks = cfg.rollout_seed, []
    for name in cfg.train_tasks:  # bad input fails here, before a worker starts
        spec = resolve_task(name)
        load_task(spec, data=cfg.data if name == cfg.task else None)
        tasks.append(spec.name)
    stores = [RolloutStore(store_path(cfg, t)) for t in tasks]
    for store, t in zip(stores, tasks):
        store.check_meta(store_meta(cfg, t))  # another feature set, reward, N, k, task, model ...: refused
    starts = [s.resume() for s in stores]
    for store, t, start in zip(stores, tasks, starts):
        if start < cfg.agent.episodes and store.read_meta() is None:
            store.write_meta(store_meta(cfg, t))
    for store, start in zip(stores, starts):
        check_continues(store, start, seed, "random")
    units = [(t, i, seed) for t, start in enumerate(starts) for i in range(start, cfg.agent.episodes)]
    spent = [ScorerStats() for _ in tasks]
    with executor:
        for done in executor.map(units):
            task, index, _ = units[done.index]
            stores[task].append(done.result)
            spent[task] = add_stats(spent[task], done.spend)
            if progress is not None:
                progress(f"{tasks[task]}: episode {index + 1}/{cfg.agent.episodes}")
    return [{"task": t, "store": str(s.path), "episodes": len(s), "written": max(0, cfg.agent.episodes - start),
             **{f"lm_{k}": v for k, v in sp.as_dict().items()}}
            for t, s, start, sp in zip(tasks, stores, starts, spent)]


def load_rollouts(cfg: RunConfig, task_envs: Sequence[TaskEnv]) -> list[Episode]:
    """The first ``cfg.agent.episodes`` stored episodes of every training task (a larger store serves a
    smaller rollout count: the rollout-count ablation reads prefixes of one store); with
    ``agent.return_norm = "task"`` each task's returns become z-scores within those episodes."""
    episodes: list[Episode] = []
    for te in task_envs:
        eps = RolloutStore(store_path(cfg, te.task)).load()[: cfg.agent.episodes]
        episodes += standardize_returns(eps) if cfg.agent.return_norm == "task" else eps
    return episodes


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
