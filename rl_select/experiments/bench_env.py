"""Timing of env steps: cold (the LM runs) against warm (every score from the cache)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from envs.demo_selection import DemoSelectionEnv
from rl_select.mdp.rollout import run_episode


class _TimedSteps:
    """Passes ``reset`` / ``step`` on to ``env`` and records the wall seconds of every ``step``."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.seconds: list[float] = []

    def reset(self, *, seed: int | None = None) -> Any:
        return self.env.reset(seed=seed)

    def step(self, action: int) -> Any:
        t0 = time.perf_counter()
        out = self.env.step(action)
        self.seconds.append(time.perf_counter() - t0)
        return out


def _episode(env: DemoSelectionEnv, seed: int, actions: list[int] | None) -> tuple[list[int], list[float]]:
    """Run one episode (random valid actions, or replay ``actions``); return actions and step times (s)."""
    rng = np.random.default_rng(seed)
    replay = iter(actions or ())

    def act(obs: Mapping[str, Any], mask: np.ndarray, chosen: list[int]) -> int:
        return next(replay) if actions is not None else int(rng.choice(np.flatnonzero(mask)))

    timed = _TimedSteps(env)
    return run_episode(timed, act, seed=seed).actions, timed.seconds


def time_env_steps(env: DemoSelectionEnv, *, episodes: int = 3, seed: int = 0) -> dict[str, Any]:
    """Run ``episodes`` random episodes (cold), then replay them exactly (warm cache) and time every step."""
    scorer = env.scorer
    cold_actions, cold = [], []
    for i in range(episodes):
        acts, ts = _episode(env, seed + i, None)
        cold_actions.append(acts)
        cold += ts
    before = scorer.stats.copy()
    warm = []
    for i in range(episodes):
        warm += _episode(env, seed + i, cold_actions[i])[1]
    spent = scorer.stats - before
    return {
        "steps": len(warm), "n_candidates": env.n_candidates, "k": env.k, "n_val": len(env.val),
        "feature_set": env.feature_set,
        "cold_step_ms_mean": 1000 * float(np.mean(cold)),
        "warm_step_ms_mean": 1000 * float(np.mean(warm)),
        "warm_step_ms_median": 1000 * float(np.median(warm)),
        "warm_step_ms_max": 1000 * float(np.max(warm)),
        "warm_lm_misses": spent.cache_misses, "warm_cache_hits": spent.cache_hits,
    }
