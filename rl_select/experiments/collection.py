"""Rollout collection from a run config: each task's store (its path and header), the :class:`EpisodeWorker`
an executor runs, :func:`collect_rollouts` (resumable) and :func:`load_rollouts` for training."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agents.rollout_store import Episode, RolloutStore
from agents.rollouts import (
    check_continues,
    random_valid_action,
    run_logged_episode,
    standardize_returns,
)
from rl_select.data import load_task
from rl_select.errors import ConfigError
from rl_select.experiments.config import RunConfig
from rl_select.experiments.executors import Executor, ScorerFactory, add_stats
from rl_select.experiments.task_envs import TaskEnv, build_task_envs
from rl_select.lm.base import ScorerStats
from rl_select.mdp.feature_spec import FeatureSpec
from rl_select.tasks import resolve_task


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
