"""The one rollout loop, :func:`run_episode`, for anything with ``reset(seed=)`` / ``step(a)``: the env, a
:class:`~rl_select.mdp.episode.SelectionEpisode`, a ``Monitor`` wrapper, a test double. Evaluation, logged
collection, tabular Q-learning, the step-time benchmark and the policy's selection all go through it.

Actions are ``0..N-1`` (append that candidate) and ``N`` (STOP). Masks are ``bool (N + 1,)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ActFn = Callable[[Mapping[str, Any], np.ndarray, list[int]], int]
"""``act(obs, mask, chosen) -> action``: ``mask`` is ``bool (N + 1,)`` from ``obs["action_mask"]``,
``chosen`` the ordered candidate indices so far."""


@dataclass(frozen=True)
class Step:
    """One transition of :func:`run_episode`, as its ``on_step`` callback sees it.

    Attributes:
        t: Step index (0-based).
        obs: Observation the action was chosen in.
        mask: ``bool (N + 1,)``, its legal actions.
        chosen: Candidate indices in the prompt before the step.
        action: The action taken (``N`` is STOP).
        reward: Its reward.
        next_obs: The observation after the step.
        next_mask: ``bool (N + 1,)``, legal actions after the step (all False at the end).
        next_chosen: Candidate indices after the step.
        terminated: Whether the step ended the episode.
        truncated: Whether it was cut off instead.
        info: The step's ``info``.
    """

    t: int
    obs: Mapping[str, Any]
    mask: np.ndarray
    chosen: list[int]
    action: int
    reward: float
    next_obs: Mapping[str, Any]
    next_mask: np.ndarray
    next_chosen: list[int]
    terminated: bool
    truncated: bool
    info: dict[str, Any]


@dataclass
class EpisodeResult:
    """A rolled-out episode of ``T`` actions.

    Attributes:
        actions: int, length ``T`` (``N`` is STOP).
        rewards: float, length ``T``.
        observations: ``T + 1`` observations, from ``reset`` and after every step.
        infos: ``T + 1`` infos, likewise.
        chosen: Candidate indices in the final prompt (``info["chosen"]`` when the env reports it,
            else tracked from the actions).
        terminated: Whether the last step terminated the episode.
        truncated: Whether it was truncated instead (neither: ``max_steps`` ran out, or ``T == 0``).
    """

    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    observations: list[Mapping[str, Any]] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)
    chosen: list[int] = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False

    @property
    def ret(self) -> float:
        """Sum of rewards."""
        return float(sum(self.rewards))

    @property
    def done(self) -> bool:
        """Whether the episode ended (terminated or truncated)."""
        return self.terminated or self.truncated

    @property
    def states(self) -> np.ndarray:
        """``float32 (T + 1, S)``, ``obs["state"]`` at every step."""
        return np.stack([o["state"] for o in self.observations]).astype(np.float32)

    @property
    def candidates(self) -> np.ndarray:
        """``float32 (T + 1, N, C)``, ``obs["candidates"]`` at every step."""
        return np.stack([o["candidates"] for o in self.observations]).astype(np.float32)

    @property
    def masks(self) -> np.ndarray:
        """``bool (T + 1, N + 1)``, ``obs["action_mask"]`` at every step; the last row is the final mask."""
        return np.stack([o["action_mask"] for o in self.observations]).astype(bool)

    @property
    def lm_queries(self) -> int | None:
        """The final ``info["lm_queries"]``, or ``None`` if the env does not report it."""
        return self.infos[-1].get("lm_queries") if self.infos else None

    @property
    def val_acc(self) -> list[float] | None:
        """``info["val_acc"]`` after reset and after each step that reports it; ``None`` if reset does not."""
        if not self.infos or "val_acc" not in self.infos[0]:
            return None
        return [float(i["val_acc"]) for i in self.infos if "val_acc" in i]


def run_episode(
    env: Any, act: ActFn, *, seed: int | None = None, on_step: Callable[[Step], Any] | None = None,
    max_steps: int = 10_000,
) -> EpisodeResult:
    """Roll one episode out: ``env.reset(seed=seed)``, then ``env.step(act(obs, mask, chosen))`` until it ends.

    Args:
        env: Anything with Gymnasium's ``reset(seed=) -> (obs, info)`` and
            ``step(a) -> (obs, reward, terminated, truncated, info)`` whose observations hold
            ``"action_mask"`` (``(N + 1,)``): the env, a :class:`SelectionEpisode`, a wrapper.
        act: ``act(obs, mask, chosen) -> action`` with ``mask`` ``bool (N + 1,)`` and ``chosen`` the
            ordered candidate indices so far.
        seed: Passed to ``env.reset``.
        on_step: Called with each :class:`Step` after it is taken (e.g. a TD update).
        max_steps: Stop after this many steps even if the episode has not ended (``0``: only reset).

    Returns:
        The :class:`EpisodeResult`.
    """
    obs, info = env.reset(seed=seed)
    res = EpisodeResult(observations=[obs], infos=[info], chosen=[int(i) for i in info.get("chosen", [])])
    for t in range(max_steps):
        mask = np.asarray(obs["action_mask"]).astype(bool)
        a = int(act(obs, mask, list(res.chosen)))
        next_obs, r, terminated, truncated, info = env.step(a)
        chosen = res.chosen
        res.chosen = ([int(i) for i in info["chosen"]] if "chosen" in info
                      else chosen + ([a] if a < mask.shape[0] - 1 else []))
        res.actions.append(a)
        res.rewards.append(float(r))
        res.observations.append(next_obs)
        res.infos.append(info)
        res.terminated, res.truncated = bool(terminated), bool(truncated)
        if on_step is not None:
            on_step(Step(t=t, obs=obs, mask=mask, chosen=chosen, action=a, reward=float(r), next_obs=next_obs,
                         next_mask=np.asarray(next_obs["action_mask"]).astype(bool), next_chosen=list(res.chosen),
                         terminated=res.terminated, truncated=res.truncated, info=info))
        obs = next_obs
        if terminated or truncated:
            break
    return res
