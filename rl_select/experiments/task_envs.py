"""Training envs from a run config: one :class:`~envs.demo_selection.DemoSelectionEnv` per training task, the
checks that refuse bad settings before the LM loads, and :class:`RoundRobinEnv` over several tasks.

Each task in ``cfg.train_tasks`` (default ``[cfg.task]``) gets its own env with the same feature spec, pool
size and k, all sharing one loaded LM; several tasks are visited round-robin, which is how a policy learns to
transfer to a task it never saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs.demo_selection import DemoSelectionEnv
from rl_select.data import Splits, load_task, make_splits
from rl_select.errors import ConfigError, SelectionError
from rl_select.experiments.config import RunConfig
from rl_select.lm.base import CachedScorer
from rl_select.lm.cache import check_cache, default_cache_path
from rl_select.mdp.episode import EpisodeRule
from rl_select.mdp.feature_spec import FeatureSpec
from rl_select.mdp.table import RowTable
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


def table_folder(cfg: RunConfig) -> Path | None:
    """Where the one-off row tables live: ``tables/`` beside the score cache (``None`` with ``cache = none``)."""
    if cfg.cache and str(cfg.cache).lower() == "none":
        return None
    return Path(cfg.cache or default_cache_path()).parent / "tables"


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
