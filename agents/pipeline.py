"""From a run config to trained agents and an exported policy: env building, collection, training.

The CLI's ``collect`` and ``train`` commands are thin wrappers over :func:`collect_rollouts` and
:func:`train_agent`. Each task in ``cfg.train_tasks`` (default ``[cfg.task]``) gets its own env with the
same feature spec, pool size and k, all sharing one loaded LM; several tasks are visited round-robin
(:class:`RoundRobinEnv`), which is how a policy learns to transfer to a task it never saw.
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

from agents.rollouts import Episode, RolloutStore, collect_random
from envs.demo_selection import DemoSelectionEnv
from rl_select.data import load_task, make_splits
from rl_select.errors import ConfigError
from rl_select.experiments.config import RunConfig
from rl_select.experiments.harness import resolve_spec
from rl_select.lm.base import CachedScorer, ScorerStats
from rl_select.policy import SelectorPolicy


@dataclass
class TaskEnv:
    """One task's training env and the scorer behind it."""

    task: str
    env: DemoSelectionEnv
    scorer: CachedScorer


def n_candidates(cfg: RunConfig) -> int:
    """Candidates per episode: ``cfg.n_candidates`` or, when 0, ``cfg.n_pool``."""
    return cfg.n_candidates or cfg.n_pool


def build_task_envs(cfg: RunConfig, scorer_for: Callable[[Any], CachedScorer], *, fixed_pool: bool = False,
                    seed: int | None = None) -> list[TaskEnv]:
    """An env per training task; ``scorer_for(spec)`` gives that task's scorer (one shared LM).

    The candidate split is ``cfg.train_pool`` train rows and the reward split the same ``cfg.n_val``
    rows the evaluation harness uses for this seed (``make_splits`` draws val first); test rows are
    never seen.
    """
    seed = cfg.seeds[0] if seed is None else seed
    out = []
    for task in cfg.train_tasks or [cfg.task]:
        spec = resolve_spec(task)
        train, test = load_task(spec, data=cfg.data if task == cfg.task else None)
        splits = make_splits(train, test, n_pool=min(cfg.train_pool, len(train) - cfg.n_val), n_val=cfg.n_val,
                             n_test=1, seed=seed, stratify=cfg.stratify)
        scorer = scorer_for(spec)
        env = DemoSelectionEnv(
            scorer=scorer, candidates=splits.pool, val=splits.val, k=cfg.k, n_candidates=n_candidates(cfg),
            feature_set=cfg.feature_set, reward=cfg.reward, allow_stop=cfg.allow_stop, min_len=cfg.min_len,
            fixed_pool=fixed_pool,
        )
        out.append(TaskEnv(task=spec.name, env=env, scorer=scorer))
    return out


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
    if cfg.store and len(cfg.train_tasks or [cfg.task]) == 1:
        return Path(cfg.store)
    key = {k: getattr(cfg, k) for k in ("model", "mode", "calibrate", "k", "n_val", "train_pool", "feature_set",
                                         "reward", "allow_stop", "min_len", "stratify")}
    key.update(task=task, n_candidates=n_candidates(cfg), seed=cfg.seeds[0])
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    base = Path(cfg.store).parent if cfg.store else Path(cfg.out) / "rollouts"
    return base / f"{task}-N{n_candidates(cfg)}-k{cfg.k}-{cfg.feature_set}-{cfg.reward}-{digest}.jsonl"


def collect_rollouts(cfg: RunConfig, task_envs: Sequence[TaskEnv], *, progress: Callable[[str], None] | None = None
                     ) -> list[dict[str, Any]]:
    """Random-policy rollouts for every task into its store (resumable). Returns per-task reports."""
    reports = []
    for te in task_envs:
        store = RolloutStore(store_path(cfg, te.task))
        before = te.scorer.stats.copy()
        written = collect_random(te.env, store, cfg.episodes, cfg.seeds[0]) if progress is None else \
            _collect_with_progress(te, store, cfg, progress)
        reports.append(collect_report(te.task, store, written, te.scorer.stats - before))
    return reports


def collect_report(task: str, store: RolloutStore, written: int, spent: ScorerStats) -> dict[str, Any]:
    """One task's line of a collection report: store, episodes held and written, LM spend (``lm_*``)."""
    return {"task": task, "store": str(store.path), "episodes": len(store), "written": written,
            **{f"lm_{k}": v for k, v in spent.as_dict().items()}}


def _collect_with_progress(te: TaskEnv, store: RolloutStore, cfg: RunConfig, progress: Callable[[str], None]) -> int:
    from agents.rollouts import collect, random_valid_action

    return collect(te.env, store, cfg.episodes, cfg.seeds[0], choose=random_valid_action, policy="random",
                   progress=lambda i: progress(f"{te.task}: episode {i + 1}/{cfg.episodes}"))


def load_rollouts(cfg: RunConfig, task_envs: Sequence[TaskEnv]) -> list[Episode]:
    """Every stored episode of every training task."""
    episodes: list[Episode] = []
    for te in task_envs:
        episodes += RolloutStore(store_path(cfg, te.task)).load()
    return episodes


@dataclass
class TrainResult:
    """What :func:`train_agent` produced."""

    agent: Any
    policy: SelectorPolicy | None
    curve: list[tuple[float, float]]
    curve_label: str
    summary: dict[str, Any]
    lm: ScorerStats


def train_agent(cfg: RunConfig, task_envs: Sequence[TaskEnv], *, lm_id: str, lm_fingerprint: str,
                progress: bool = False) -> TrainResult:
    """Train ``cfg.agent`` and export a :class:`SelectorPolicy` (not for tabular: its table is tied to pool indices)."""
    from agents.dqn import DQNAgent
    from agents.offline import OfflineCQLAgent
    from agents.tabular_q import TabularQAgent

    seed = cfg.seeds[0]
    before = [te.scorer.stats.copy() for te in task_envs]
    if cfg.agent == "tabular":
        if len(task_envs) != 1:
            raise ConfigError("the tabular agent learns one fixed pool of one task; expected a single task")
        env = Monitor(task_envs[0].env)
        agent = TabularQAgent().learn(env, episodes=cfg.episodes, seed=seed, progress=progress)
        curve = [(i + 1, r) for i, r in enumerate(env.get_episode_rewards())]
        label = "episode return"
    elif cfg.agent == "dqn":
        env = Monitor(RoundRobinEnv([te.env for te in task_envs]))
        agent = DQNAgent(hidden=cfg.hidden, seed=seed,
                         learning_starts=min(200, cfg.train_steps // 4)).learn(env, total_timesteps=cfg.train_steps,
                                                                              progress_bar=progress)
        curve = [(i + 1, r) for i, r in enumerate(env.get_episode_rewards())]
        label = "episode return"
    else:
        episodes = load_rollouts(cfg, task_envs)
        if not episodes:
            raise ConfigError("no rollouts to learn from; run `rl-select collect` with the same settings first")
        agent = OfflineCQLAgent(hidden=cfg.hidden, gradient_steps=cfg.train_steps, seed=seed,
                                eval_interval=max(1, cfg.train_steps // 8), eval_episodes=3)
        agent.learn(episodes, env=task_envs[0].env, progress=progress)
        curve = [(h["step"], h["score"]) for h in agent.summary["history"]]
        label = "greedy validation return"
    lm = ScorerStats()
    for te, b in zip(task_envs, before):
        lm = _add(lm, te.scorer.stats - b)
    policy = None
    if cfg.agent != "tabular":
        policy = SelectorPolicy(
            agent.qnet, feature_spec=task_envs[0].env.feature_spec, k=cfg.k, task=task_envs[0].scorer.spec,
            lm_id=lm_id, lm_fingerprint=lm_fingerprint, allow_stop=cfg.allow_stop, min_len=cfg.min_len,
            training={"agent": cfg.agent, "tasks": [te.task for te in task_envs], "summary": _jsonable(agent.summary),
                      "lm_calls": lm.as_dict(), "config": cfg.to_dict()},
        )
    return TrainResult(agent=agent, policy=policy, curve=curve, curve_label=label,
                       summary=_jsonable(agent.summary), lm=lm)


def _add(a: ScorerStats, b: ScorerStats) -> ScorerStats:
    return ScorerStats(**{k: getattr(a, k) + getattr(b, k) for k in a.as_dict()})


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
