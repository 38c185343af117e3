"""Exact Q-learning over ordered demonstration tuples on a FIXED small pool (the seed's literal MDP).

State = the ordered tuple of pool indices chosen so far; action = the next index, or STOP (``N``).
The Q-table holds one row of ``N + 1`` values per visited state. It does not transfer to another pool
(use the candidate-scoring DQN for that); its point is exactness on tiny pools, checked against
:func:`exhaustive_best`.

Masks everywhere: epsilon-exploration samples uniformly among the valid actions, the greedy choice is
the argmax over valid actions, and the TD target's max runs over the next state's valid actions
(terminal: 0). ``gamma = 1`` by default: the episode is at most ``k`` steps long.

Episodes run through the one rollout loop, :func:`rl_select.mdp.rollout.run_episode` (the TD update is
its ``on_step`` callback; :func:`exhaustive_best` replays prefixes with it too), and epsilon decays by
SB3's linear schedule (``stable_baselines3.common.utils.LinearSchedule``, formerly ``get_linear_fn``), as DQN's
exploration rate does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch

try:  # DQN's own exploration schedule (stable-baselines3 >= 2.6)
    from stable_baselines3.common.utils import LinearSchedule
except ImportError:  # older releases: the function it replaced, same arguments and values
    from stable_baselines3.common.utils import get_linear_fn as LinearSchedule
from tqdm.auto import tqdm

from agents.base import Agent, check_mask, load_agent, save_agent
from agents.registry import AgentSettings, AgentTags, register_agent
from rl_select.errors import SelectionError
from rl_select.mdp.rollout import Step, run_episode

State = tuple[int, ...]


def _greedy(q: np.ndarray, mask: np.ndarray) -> int:
    """Argmax of ``q`` over ``mask`` (ties: lowest index). Shapes ``(A,)``."""
    valid = np.flatnonzero(mask)
    return int(valid[np.argmax(q[valid])])


@register_agent
class TabularQAgent(Agent):
    """Epsilon-greedy tabular Q-learning over ordered demo tuples.

    Args:
        learning_rate: Step size ``alpha`` of the update ``Q += alpha * (target - Q)``.
        gamma: Discount; 1.0 for the finite-horizon selection MDP.
        epsilon_start: Exploration rate of the first episode.
        epsilon_end: Exploration rate after ``epsilon_fraction`` of the episodes (linear in between).
        epsilon_fraction: Share of ``learn``'s episodes over which epsilon decays.
        q_init: Initial value of unvisited state-action pairs.

    Attributes:
        q: The table: state tuple -> Q-values, shape ``(N + 1,)``.
        n_actions: ``N + 1`` once learned or loaded, else ``None``.
        summary: Training summary (episodes, final epsilon, mean return of the last episodes).
    """

    name = "tabular"
    tags = AgentTags(learns_from="env", fixed_pool=True, exports_policy=False,
                     env_episodes=lambda settings, k: settings.episodes)

    def __init__(
        self,
        *,
        learning_rate: float = 0.5,
        gamma: float = 1.0,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.05,
        epsilon_fraction: float = 0.8,
        q_init: float = 0.0,
    ) -> None:
        if not 0.0 < learning_rate <= 1.0:
            raise ValueError(f"learning_rate={learning_rate} must be in (0, 1]")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma={gamma} must be in [0, 1]")
        for nm, v in (("epsilon_start", epsilon_start), ("epsilon_end", epsilon_end)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{nm}={v} must be in [0, 1]")
        if not 0.0 < epsilon_fraction <= 1.0:
            raise ValueError(f"epsilon_fraction={epsilon_fraction} must be in (0, 1]")
        self.learning_rate = learning_rate
        self.gamma = gamma
        self.epsilon_start = epsilon_start
        self.epsilon_end = epsilon_end
        self.epsilon_fraction = epsilon_fraction
        self.q_init = q_init
        self.q: dict[State, np.ndarray] = {}
        self.n_actions: int | None = None
        self.summary: dict[str, Any] = {}

    @classmethod
    def train_from(cls, source: Any, settings: AgentSettings, *, seed: int, env: Any = None,
                   progress: bool = False) -> Self:
        """``settings.episodes`` episodes in the env ``source`` (default hyper-parameters)."""
        return cls().learn(source, episodes=settings.episodes, seed=seed, progress=progress)

    def config(self) -> dict[str, Any]:
        """The constructor's arguments as JSON."""
        return {
            "learning_rate": self.learning_rate,
            "gamma": self.gamma,
            "epsilon_start": self.epsilon_start,
            "epsilon_end": self.epsilon_end,
            "epsilon_fraction": self.epsilon_fraction,
            "q_init": self.q_init,
        }

    def epsilon(self, episode: int, episodes: int) -> float:
        """Linear schedule from ``epsilon_start`` to ``epsilon_end`` over ``epsilon_fraction * episodes``.

        SB3's ``LinearSchedule`` (DQN's exploration schedule) at progress remaining ``1 - episode / episodes``.
        """
        schedule = LinearSchedule(self.epsilon_start, self.epsilon_end, self.epsilon_fraction)
        return float(schedule(1.0 - episode / max(1, episodes)))

    def q_values(self, state: Sequence[int]) -> np.ndarray:
        """The Q-row of ``state`` (a copy of the initial row if unvisited). Shape ``(N + 1,)``."""
        if self.n_actions is None:
            raise SelectionError("TabularQAgent has no Q-table yet; call learn() or load() first")
        row = self.q.get(tuple(int(i) for i in state))
        return row.copy() if row is not None else np.full(self.n_actions, self.q_init, dtype=np.float64)

    def _row(self, state: State) -> np.ndarray:
        assert self.n_actions is not None
        if state not in self.q:
            self.q[state] = np.full(self.n_actions, self.q_init, dtype=np.float64)
        return self.q[state]

    def learn(self, env: Any, episodes: int, seed: int = 0, *, progress: bool = False) -> Self:
        """Run ``episodes`` epsilon-greedy Q-learning episodes in ``env`` (``progress``: a tqdm bar).

        Args:
            env: A fixed-pool env following ``docs/mdp.md`` (``DemoSelectionEnv(fixed_pool=True)``);
                ``Discrete(N + 1)`` actions, ``obs["action_mask"]``, ``info["chosen"]``.
            episodes: Number of training episodes.
            seed: Seeds the exploration generator and the first ``env.reset``.

        Returns:
            ``self``.
        """
        if getattr(getattr(env, "unwrapped", env), "fixed_pool", True) is False:
            raise SelectionError("TabularQAgent needs a fixed pool: build the env with fixed_pool=True")
        n_actions = int(env.action_space.n)
        if self.n_actions not in (None, n_actions):
            raise SelectionError(f"this Q-table has {self.n_actions} actions but the env has {n_actions}")
        self.n_actions = n_actions
        rng = np.random.default_rng(seed)
        returns: list[float] = []
        eps = self.epsilon_start

        def act(obs: Mapping[str, Any], mask: np.ndarray, chosen: list[int]) -> int:
            mask = check_mask(mask)
            if rng.random() < eps:
                return int(rng.choice(np.flatnonzero(mask)))
            return _greedy(self._row(tuple(chosen)), mask)

        for ep in tqdm(range(episodes), desc="tabular Q episodes", disable=not progress):
            eps = self.epsilon(ep, episodes)
            res = run_episode(env, act, seed=seed if ep == 0 else None, on_step=self._update)
            returns.append(res.ret)
        tail = returns[-max(1, min(100, len(returns))):] if returns else [0.0]
        self.summary = {
            "episodes": int(self.summary.get("episodes", 0)) + episodes,
            "final_epsilon": eps,
            "mean_return_last": float(np.mean(tail)),
            "states": len(self.q),
            "seed": seed,
        }
        return self

    def _update(self, step: Step) -> None:
        """One Q-learning update ``Q(s, a) += alpha * (r + gamma * max_{a' valid} Q(s', a') - Q(s, a))``."""
        target = step.reward
        if not step.terminated and step.next_mask.any():
            next_q = self.q.get(tuple(step.next_chosen))
            target += self.gamma * (self.q_init if next_q is None else float(next_q[step.next_mask].max()))
        row = self._row(tuple(step.chosen))
        row[step.action] += self.learning_rate * (target - row[step.action])

    def _act(self, obs: Mapping[str, Any], mask: np.ndarray, chosen: Sequence[int] | None) -> int:
        if chosen is None:
            if np.asarray(obs["action_mask"])[:-1].astype(bool).all():
                chosen = ()
            else:
                raise SelectionError(
                    "TabularQAgent.act needs chosen= (the env's info['chosen']): its state is the ordered tuple"
                )
        return _greedy(self.q_values(chosen), mask)

    def save(self, path: str | Path) -> Path:
        """Write the Q-table (states padded with -1, lengths, values) and config to one safetensors file."""
        if self.n_actions is None:
            raise SelectionError("nothing to save: TabularQAgent has not learned yet")
        keys = sorted(self.q)
        width = max((len(s) for s in keys), default=0)
        states = np.full((len(keys), width), -1, dtype=np.int64)
        for i, s in enumerate(keys):
            states[i, : len(s)] = s
        tensors = {
            "states": torch.from_numpy(states),
            "lengths": torch.tensor([len(s) for s in keys], dtype=torch.int64),
            "q": torch.from_numpy(np.stack([self.q[s] for s in keys]) if keys else np.zeros((0, self.n_actions))),
        }
        meta = {"config": self.config(), "n_actions": self.n_actions, "summary": self.summary}
        return save_agent(path, agent=self.name, tensors=tensors, doc=meta)

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read a file written by :meth:`save`."""
        tensors, meta = load_agent(path, agent=cls.name)
        agent = cls(**meta["config"])
        agent.n_actions = int(meta["n_actions"])
        agent.summary = dict(meta.get("summary", {}))
        states, lengths, q = tensors["states"].numpy(), tensors["lengths"].numpy(), tensors["q"].numpy()
        for row, n, values in zip(states, lengths, q, strict=True):
            agent.q[tuple(int(i) for i in row[:n])] = values.astype(np.float64).copy()
        return agent


def exhaustive_best(
    source: Any | Callable[[tuple[int, ...]], float],
    *,
    n: int | None = None,
    k: int | None = None,
    seed: int | None = 0,
    max_episodes: int = 1_000_000,
) -> tuple[float, tuple[int, ...]]:
    """The best return over every action sequence (the oracle for small pools).

    Two forms:

    * an env (anything with ``reset`` / ``step``; fixed pool): a depth-first search over every sequence
      of VALID actions (so STOP sequences are included where the mask allows them), replaying each
      sequence from ``env.reset(seed=seed)``; costs one episode per leaf;
    * a function ``fn(ordered_tuple) -> return`` with ``n`` and ``k``: every ordered k-tuple of
      ``range(n)`` (``n! / (n - k)!`` calls).

    Args:
        source: The env or the return function.
        n: Pool size (function form only).
        k: Tuple length (function form only).
        seed: ``env.reset`` seed (env form).
        max_episodes: Refuse enumerations larger than this.

    Returns:
        ``(best_return, best_actions)``; ties go to the lexicographically first sequence.
    """
    if hasattr(source, "step") and hasattr(source, "reset"):
        return _exhaustive_env(source, seed=seed, max_episodes=max_episodes)
    if n is None or k is None:
        raise ValueError("exhaustive_best(fn, ...) needs n= and k=")
    total = 1
    for i in range(k):
        total *= n - i
    if total > max_episodes:
        raise SelectionError(f"{total} ordered {k}-tuples of {n} exceed max_episodes={max_episodes}")
    best_ret, best = -float("inf"), ()
    for tup in itertools.permutations(range(n), k):
        r = float(source(tup))
        if r > best_ret:
            best_ret, best = r, tup
    return best_ret, best


def _exhaustive_env(env: Any, *, seed: int | None, max_episodes: int) -> tuple[float, tuple[int, ...]]:
    def replay(prefix: tuple[int, ...]) -> tuple[np.ndarray, float, bool]:
        actions = iter(prefix)
        res = run_episode(env, lambda obs, mask, chosen: next(actions), seed=seed, max_steps=len(prefix))
        return res.masks[-1], res.ret, res.done

    best_ret, best = -float("inf"), ()
    stack: list[tuple[int, ...]] = [()]
    episodes = 0
    while stack:
        prefix = stack.pop()
        mask, ret, done = replay(prefix)
        episodes += 1
        if episodes > max_episodes:
            raise SelectionError(f"exhaustive search exceeded max_episodes={max_episodes}")
        if done or not mask.any():
            if ret > best_ret or (ret == best_ret and prefix < best):
                best_ret, best = ret, prefix
            continue
        stack.extend(prefix + (int(a),) for a in np.flatnonzero(mask)[::-1])
    return best_ret, best
