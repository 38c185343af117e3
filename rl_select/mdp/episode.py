"""One selection episode without Gymnasium: the episode rule and the episode itself.

* :class:`EpisodeRule` — which actions are legal (the action mask), which actions are refused and with
  what message, and when a step ends the episode. The only copy of the rule: the Gymnasium env, the
  exported :class:`~rl_select.mdp.policy.SelectorPolicy` and the tests' fake env all ask it.
* :class:`SelectionEpisode` — one episode over ``N`` fixed candidates: the rule, the shared
  :class:`~rl_select.mdp.features.Featurizer` and the reward. It has Gymnasium's ``reset`` / ``step``
  signature (so :func:`~rl_select.mdp.rollout.run_episode` rolls it out), but no spaces and no random
  draws: the env (:class:`envs.demo_selection.DemoSelectionEnv`) draws the candidates and wraps one
  episode per reset, and :meth:`SelectorPolicy.select` rolls one out greedily, so training and selection
  take the same steps.

The one rollout loop (:func:`run_episode`, :class:`Step`, :class:`EpisodeResult`, ``ActFn``) lives in
:mod:`rl_select.mdp.rollout` and is importable from here.

Actions are ``0..N-1`` (append that candidate) and ``N`` (STOP). Masks are ``bool (N + 1,)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rl_select.errors import ConfigError, SelectionError
from rl_select.mdp.features import FeatureResult, Featurizer
from rl_select.mdp.rollout import ActFn, EpisodeResult, Step, run_episode
from rl_select.types import Example, is_int

REWARD_MODES: tuple[str, ...] = ("marginal", "terminal")
"""Known reward modes (see :class:`SelectionEpisode`)."""

NOT_RESET = "step() called before reset(); call reset() first"
"""The message of a step taken before any reset."""

Obs = dict[str, np.ndarray]

__all__ = [
    "NOT_RESET", "REWARD_MODES", "ActFn", "EpisodeResult", "EpisodeRule", "Obs", "SelectionEpisode", "Step",
    "check_reward_mode", "run_episode",
]


def check_reward_mode(reward: str | None, *, allow_none: bool = False) -> None:
    """Raise :class:`~rl_select.errors.ConfigError` unless ``reward`` is one of :data:`REWARD_MODES`.

    Args:
        reward: The reward mode.
        allow_none: Also accept ``None`` (selection only: no rewards, see :class:`SelectionEpisode`).
    """
    if reward not in REWARD_MODES and not (allow_none and reward is None):
        raise ConfigError(f"unknown reward mode {reward!r}; expected one of {list(REWARD_MODES)}")


@dataclass(frozen=True)
class EpisodeRule:
    """The rule of a selection episode: legal actions, refused actions, the episode's end.

    Chosen candidates are masked; STOP (action ``N``) is legal only if ``allow_stop`` and at least
    ``min_len`` demos are chosen; the episode ends after the ``k``-th demo or on STOP, and then every
    action is masked.

    Attributes:
        n_candidates: ``N``, the candidates an episode offers.
        k: Demo budget, ``1 <= k <= N``.
        allow_stop: Whether STOP is offered at all.
        min_len: Fewest demos before STOP is legal, ``0 <= min_len <= k``.

    Raises:
        SelectionError: ``n_candidates`` or ``k`` is not an integer in range.
        ConfigError: A bad ``min_len``.
    """

    n_candidates: int
    k: int
    allow_stop: bool = False
    min_len: int = 0

    def __post_init__(self) -> None:
        n, k, min_len = self.n_candidates, self.k, self.min_len
        if not is_int(n) or n < 1:
            raise SelectionError(f"n_candidates={n!r}; expected an integer >= 1")
        if not is_int(k) or not 1 <= k <= n:
            raise SelectionError(f"k={k!r}; expected an integer with 1 <= k <= n_candidates={n}")
        if not is_int(min_len) or not 0 <= min_len <= k:
            raise ConfigError(f"min_len={min_len!r}; expected an integer with 0 <= min_len <= k={k}")
        for name, value in (("n_candidates", int(n)), ("k", int(k)), ("min_len", int(min_len)),
                            ("allow_stop", bool(self.allow_stop))):
            object.__setattr__(self, name, value)

    @property
    def stop(self) -> int:
        """The STOP action, ``N``."""
        return self.n_candidates

    def mask(self, chosen: Sequence[int] = (), done: bool = False) -> np.ndarray:
        """Legal actions after ``chosen``; all False once ``done``.

        Args:
            chosen: Candidate indices in the prompt, in order.
            done: Whether the episode has ended.

        Returns:
            ``bool (N + 1,)``; index ``N`` is STOP. ``mask()`` is a fresh episode's.
        """
        mask = np.zeros(self.n_candidates + 1, dtype=bool)
        if not done:
            mask[:-1] = True
            mask[list(chosen)] = False
            mask[-1] = self.allow_stop and len(chosen) >= self.min_len
        return mask

    def check(self, action: Any, chosen: Sequence[int], done: bool) -> int:
        """``action`` as an ``int`` if it is legal after ``chosen``, else a one-line error.

        Args:
            action: An integer (or a length-1 integer array, as VecEnvs pass).
            chosen: Candidate indices in the prompt, in order.
            done: Whether the episode has ended.

        Returns:
            The action, ``0 <= a <= N``.

        Raises:
            SelectionError: The episode ended, or ``action`` is not an integer, out of range or masked.
        """
        if done:
            raise SelectionError("step() called after the episode ended; call reset() first")
        arr = np.asarray(action)
        n = self.n_candidates
        if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise SelectionError(f"action {action!r} is not an integer; expected one in 0..{n} ({n} = STOP)")
        a = int(arr.reshape(()))
        if not 0 <= a <= n:
            raise SelectionError(f"action {a} is out of range; expected an integer in 0..{n} ({n} = STOP)")
        if not self.mask(chosen, done)[a]:
            if a == n:
                why = ("allow_stop=False" if not self.allow_stop else
                       f"only {len(chosen)} demos are chosen and min_len={self.min_len}")
                raise SelectionError(
                    f"action {a} (STOP) is masked: {why}; choose an action where action_masks() is True"
                )
            raise SelectionError(
                f"action {a} is masked: candidate {a} is already chosen; choose an action where action_masks() is True"
            )
        return a

    def ends(self, action: int, chosen: Sequence[int]) -> bool:
        """Whether the legal ``action`` taken after ``chosen`` ends the episode (STOP or the ``k``-th demo)."""
        return action == self.stop or len(chosen) + 1 >= self.k

    def apply(self, action: Any, chosen: Sequence[int], done: bool) -> tuple[int, list[int], bool]:
        """One step of the rule: :meth:`check`, then the new prompt and whether the episode ended.

        Returns:
            ``(action, chosen after the step, done after the step)``; STOP leaves ``chosen`` as it is.

        Raises:
            SelectionError: As :meth:`check`.
        """
        a = self.check(action, chosen, done)
        return a, list(chosen) if a == self.stop else [*chosen, a], self.ends(a, chosen)


class SelectionEpisode:
    """One episode over ``N`` fixed candidates, stepped like a Gymnasium env (without Gymnasium).

    Each observation comes from one :meth:`Featurizer.compute <rl_select.mdp.features.Featurizer.compute>`
    call (one scorer call) on the current prompt, whose validation accuracy is also the reward's.

    Rewards, with ``acc(S)`` the validation accuracy of prompt ``S``:

    * ``"marginal"``: ``acc(S_t) - acc(S_{t-1})`` (0 for STOP); the return telescopes to
      ``acc(S_final) - acc(S_0)``.
    * ``"terminal"``: ``acc(S_final)`` on the step that ends the episode, else 0.
    * ``None`` (selection only): always 0, and the prompt that ends the episode is not scored (one
      scorer call fewer), so the final observation and ``info["val_acc"]`` still describe the prompt
      before the last step; only the mask and ``info["chosen"]`` move on.

    Args:
        candidates: The ``N`` candidates (``N == rule.n_candidates``).
        featurizer: Computes the features (and holds the scorer and the validation split).
        rule: The episode rule.
        reward: ``"marginal"``, ``"terminal"`` or ``None``.

    Raises:
        SelectionError: ``len(candidates) != rule.n_candidates``.
        ConfigError: An unknown reward mode.
    """

    def __init__(
        self, candidates: Sequence[Example], featurizer: Featurizer, rule: EpisodeRule, *,
        reward: str | None = "marginal",
    ) -> None:
        self.candidates: tuple[Example, ...] = tuple(candidates)
        if len(self.candidates) != rule.n_candidates:
            raise SelectionError(
                f"{len(self.candidates)} candidates for an episode rule of n_candidates={rule.n_candidates}; "
                "expected as many as the rule's"
            )
        check_reward_mode(reward, allow_none=True)
        self.featurizer = featurizer
        self.rule = rule
        self.reward_mode = reward
        self._chosen: list[int] = []
        self._done = False
        self._last: FeatureResult | None = None
        self._mask = rule.mask(done=True)  # legal actions now, recomputed only when the state changes
        self._queries_at_reset = 0

    # --- Gymnasium-shaped API ----------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Obs, dict[str, Any]]:
        """Start with the empty prompt (``seed`` and ``options`` are accepted and unused: nothing is random).

        Returns:
            ``(observation, info)``; ``info["val_acc"]`` is the zero-shot accuracy.
        """
        self._chosen, self._done = [], False
        self._queries_at_reset = self._queries()
        self._last = self.featurizer.compute(self.candidates, self._chosen, self.rule.k,
                                             need_val=self.reward_mode == "marginal")
        self._mask = self.rule.mask(self._chosen, False)
        return self.observation(), self.info()

    def step(self, action: Any) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        """Append candidate ``action``, or STOP when ``action == N``.

        Returns:
            ``(observation, reward, terminated, truncated=False, info)``.

        Raises:
            SelectionError: Called before :meth:`reset` or after the episode ended, or ``action`` is
                not an integer, out of range or masked.
        """
        if self._last is None:
            raise SelectionError(NOT_RESET)
        a, chosen, done = self.rule.apply(action, self._chosen, self._done)
        prev = self._last.val_acc
        self._chosen, self._done = chosen, done
        self._mask = self.rule.mask(chosen, done)
        # the reward reads val accuracy after every step (marginal) or after the last (terminal); feature
        # sets that need no LM (``table``) score val only then
        need = self.reward_mode == "marginal" or (done and self.reward_mode == "terminal")
        if a != self.rule.stop and not (done and self.reward_mode is None):
            self._last = self.featurizer.compute(self.candidates, self._chosen, self.rule.k, need_val=need)
        elif need and math.isnan(self._last.val_acc):
            self._last = self.featurizer.compute(self.candidates, self._chosen, self.rule.k, need_val=True)
        acc = self._last.val_acc
        if self.reward_mode == "marginal":
            reward = acc - prev
        else:
            reward = acc if done and self.reward_mode == "terminal" else 0.0
        return self.observation(), float(reward), done, False, self.info()

    # --- views ---------------------------------------------------------------------------------------

    def action_masks(self) -> np.ndarray:
        """Legal actions now, ``bool (N + 1,)``; all False before :meth:`reset` and after the end."""
        return self._mask.copy()

    @property
    def chosen(self) -> list[int]:
        """Candidate indices in the prompt, in order (a copy)."""
        return list(self._chosen)

    @property
    def done(self) -> bool:
        """Whether the episode has ended."""
        return self._done

    @property
    def started(self) -> bool:
        """Whether :meth:`reset` has been called."""
        return self._last is not None

    @property
    def val_acc(self) -> float:
        """Validation accuracy of the last scored prompt (0.0 before :meth:`reset`)."""
        return 0.0 if self._last is None else float(self._last.val_acc)

    @property
    def prompt_demos(self) -> list[Example]:
        """The chosen demonstrations, in prompt order."""
        return [self.candidates[i] for i in self._chosen]

    def observation(self) -> Obs:
        """``{"state": float32 (S,), "candidates": float32 (N, C), "action_mask": int8 (N + 1,)}`` (copies).

        Raises:
            SelectionError: Before :meth:`reset`.
        """
        if self._last is None:
            raise SelectionError(NOT_RESET)
        return {
            "state": self._last.state.copy(),
            "candidates": self._last.candidates.copy(),
            "action_mask": self.action_masks().astype(np.int8),
        }

    def info(self) -> dict[str, Any]:
        """``{"action_mask": int8 (N + 1,), "chosen": list[int], "val_acc": float, "lm_queries": int}``.

        ``lm_queries`` counts the scorer's query rows since :meth:`reset` (cache hits included).
        ``val_acc`` is left out when the prompt's val accuracy was not scored (the ``table`` feature set
        scores val only when the reward reads it).
        """
        info: dict[str, Any] = {
            "action_mask": self.action_masks().astype(np.int8),
            "chosen": list(self._chosen),
            "val_acc": self.val_acc,
            "lm_queries": self._queries() - self._queries_at_reset,
        }
        if math.isnan(info["val_acc"]):
            del info["val_acc"]
        return info

    def _queries(self) -> int:
        return int(getattr(getattr(self.featurizer.scorer, "stats", None), "queries", 0))
