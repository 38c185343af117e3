"""Rollout collection into the store, and the views a learner takes of stored episodes.

Collection (:func:`collect_random`) is resumable: episode ``i`` draws everything from
``SeedSequence([seed, i])``, so rerunning after a kill continues at the first missing episode and
produces the same file as an uninterrupted run. :func:`stack_episodes` flattens episodes into transitions;
:func:`standardize_returns` puts one task's returns on a common scale. The store itself (:class:`Episode`,
:class:`RolloutStore`, its file format) is :mod:`agents.rollout_store`'s, importable from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from agents.rollout_store import STORE_VERSION, Episode, RolloutStore
from rl_select.errors import DataError
from rl_select.mdp.rollout import run_episode

__all__ = [
    "STORE_VERSION", "ChooseFn", "Episode", "RolloutStore", "check_continues", "collect", "collect_random",
    "episode_seeds", "random_valid_action", "run_logged_episode", "stack_episodes", "standardize_returns",
]

ChooseFn = Callable[[Mapping[str, Any], np.ndarray, np.random.Generator], int]


def random_valid_action(obs: Mapping[str, Any], mask: np.ndarray, rng: np.random.Generator) -> int:
    """A uniform draw among the valid actions (the random behaviour policy of Zhang et al. 2022)."""
    valid = np.flatnonzero(mask)
    if valid.size == 0:
        raise DataError("no valid action: the action mask is all False before the episode ended")
    return int(valid[rng.integers(valid.size)])


def episode_seeds(seed: int, index: int) -> tuple[int, np.random.Generator]:
    """``(env reset seed, action generator)`` of episode ``index``, both from ``SeedSequence([seed, index])``."""
    env_ss, act_ss = np.random.SeedSequence([int(seed), int(index)]).spawn(2)
    return int(env_ss.generate_state(1, dtype=np.uint32)[0]), np.random.default_rng(act_ss)


def run_logged_episode(
    env: Any, *, index: int, seed: int, choose: ChooseFn = random_valid_action, policy: str = "random",
    max_steps: int = 10_000,
) -> Episode:
    """Roll out episode ``index`` of a collection and record everything the store keeps.

    The loop is :func:`rl_select.mdp.rollout.run_episode`; ``env.reset`` gets the episode's seed from
    :func:`episode_seeds` and ``choose`` its action generator.

    Args:
        env: A Gymnasium env following ``docs/mdp.md``.
        index: Episode index (with ``seed``, fixes every random draw).
        seed: Collection seed.
        choose: ``choose(obs, mask, rng) -> action``; must return a valid action.
        policy: Name recorded in the store.
        max_steps: Safety limit.

    Returns:
        The :class:`Episode`.
    """
    env_seed, rng = episode_seeds(seed, index)

    def act(obs: Mapping[str, Any], mask: np.ndarray, chosen: list[int]) -> int:
        a = int(choose(obs, mask, rng))
        if not mask[a]:
            raise DataError(f"behaviour policy {policy!r} chose masked action {a}")
        return a

    res = run_episode(env, act, seed=env_seed, max_steps=max_steps)
    return Episode(
        episode=index,
        seed=[int(seed), int(index)],
        env_seed=env_seed,
        policy=policy,
        actions=res.actions,
        rewards=res.rewards,
        states=res.states,
        candidates=res.candidates,
        masks=res.masks,
        chosen=res.chosen,
        terminated=res.terminated,
        truncated=res.truncated,
        lm_queries=int(res.lm_queries or 0),
        val_acc=res.val_acc,
    )


def collect(
    env: Any, store: RolloutStore, n_episodes: int, seed: int, *, choose: ChooseFn = random_valid_action,
    policy: str = "random", progress: Callable[[int], None] | None = None,
) -> int:
    """Fill ``store`` up to ``n_episodes`` episodes, continuing after the last finished one.

    Args:
        env: The env.
        store: The store; episodes already there are kept (a torn tail is cut off).
        n_episodes: Total number of episodes the store should hold.
        seed: Collection seed; must match the seed of the episodes already in the store.
        choose: Behaviour policy ``choose(obs, mask, rng) -> action``.
        policy: Its name (recorded; must match the stored episodes).
        progress: Called with each new episode's index after it is written.

    Returns:
        The number of episodes written by this call.
    """
    start = store.resume()
    check_continues(store, start, seed, policy)
    for i in range(start, n_episodes):
        store.append(run_logged_episode(env, index=i, seed=seed, choose=choose, policy=policy))
        if progress is not None:
            progress(i)
    return max(0, n_episodes - start)


def check_continues(store: RolloutStore, start: int, seed: int, policy: str) -> None:
    """Refuse to append to a store whose last episode (of ``start``) is not ``[seed, start - 1]`` by ``policy``.

    Raises:
        DataError: naming the store, what it holds and what was asked.
    """
    if not start:
        return
    last = None
    for ep in store.episodes():
        last = ep
    if last is not None and (last.seed != [int(seed), start - 1] or last.policy != policy):
        raise DataError(
            f"rollout store {str(store.path)!r} holds episodes of seed {last.seed[0]} / policy {last.policy!r}; "
            f"asked for seed {seed} / policy {policy!r} (use another path)"
        )


def collect_random(env: Any, store: RolloutStore, n_episodes: int, seed: int) -> int:
    """Random valid-action rollouts (Zhang et al. 2022), resumable; see :func:`collect`."""
    return collect(env, store, n_episodes, seed, choose=random_valid_action, policy="random")


def stack_episodes(episodes: Sequence[Episode]) -> dict[str, np.ndarray]:
    """Flatten episodes into transitions, padding the candidate axis to the largest pool.

    Pools of different sizes N are padded to ``N_max`` with zero features and masked; STOP stays the
    LAST column (``N_max``), so a stored STOP action ``N`` is remapped to ``N_max``.

    Args:
        episodes: The episodes.

    Returns:
        Dict with ``M`` transitions: ``state`` (M, S), ``cands`` (M, N_max, C), ``mask`` (M, N_max + 1)
        bool, ``action`` (M,) int64, ``reward`` (M,) float32, ``done`` (M,) float32 (terminated),
        ``next_state``, ``next_cands``, ``next_mask`` (as above), ``episode`` (M,) int64 (its index
        in ``episodes``), ``rtg`` (M,) float32 (return-to-go, undiscounted).
    """
    if not episodes:
        raise DataError("no episodes to train on: the rollout store is empty")
    n_max = max(ep.candidates.shape[1] for ep in episodes)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in (
        "state", "cands", "mask", "action", "reward", "done", "next_state", "next_cands", "next_mask", "episode", "rtg"
    )}
    for j, ep in enumerate(episodes):
        t, n = len(ep.actions), ep.candidates.shape[1]
        if t == 0:
            continue
        cands = np.zeros((t + 1, n_max, ep.candidates.shape[2]), dtype=np.float32)
        cands[:, :n] = ep.candidates
        mask = np.zeros((t + 1, n_max + 1), dtype=bool)
        mask[:, :n] = ep.masks[:, :n]
        mask[:, n_max] = ep.masks[:, n]
        actions = np.asarray(ep.actions, dtype=np.int64)
        actions = np.where(actions == n, n_max, actions)
        rewards = np.asarray(ep.rewards, dtype=np.float32)
        done = np.zeros(t, dtype=np.float32)
        done[-1] = float(ep.terminated)
        cols["state"].append(ep.states[:-1])
        cols["next_state"].append(ep.states[1:])
        cols["cands"].append(cands[:-1])
        cols["next_cands"].append(cands[1:])
        cols["mask"].append(mask[:-1])
        cols["next_mask"].append(mask[1:])
        cols["action"].append(actions)
        cols["reward"].append(rewards)
        cols["done"].append(done)
        cols["episode"].append(np.full(t, j, dtype=np.int64))
        cols["rtg"].append(np.cumsum(rewards[::-1])[::-1].astype(np.float32))
    if not cols["action"]:
        raise DataError("no transitions to train on: every stored episode is empty")
    return {k: np.concatenate(v) for k, v in cols.items()}


def standardize_returns(episodes: Sequence[Episode]) -> list[Episode]:
    """The episodes of ONE task with every return turned into its z-score within that task.

    Every reward is divided by the std ``s`` of the episodes' returns and the mean return ``m`` / ``s`` is
    taken off each episode's last reward, so an episode's return becomes ``(return - m) / s`` and a
    per-step gain keeps its sign pattern. A Q trained on several tasks then learns which prompt is better
    than the task's typical random one, not which task is easier (TREC's random returns sit ~40 points
    below SST-2's). Ranking within a task is unchanged. Returns with std 0 are only centred.
    """
    returns = np.array([e.ret for e in episodes], dtype=np.float64)
    if len(returns) == 0:
        return []
    m, s = float(returns.mean()), float(returns.std())
    s = s if s > 0 else 1.0
    out = []
    for e in episodes:
        r = [float(x) / s for x in e.rewards]
        if r:
            r[-1] -= m / s
        out.append(replace(e, rewards=r))
    return out
