"""The demonstration-selection MDP as a Gymnasium environment: a thin adapter over the gym-free episode.

The rule (masks, refused actions, the episode's end), the features and the rewards live in
:mod:`rl_select.mdp.episode` (:class:`~rl_select.mdp.episode.EpisodeRule`,
:class:`~rl_select.mdp.episode.SelectionEpisode`), which the exported policy rolls out too. This module
adds what Gymnasium needs: the spaces, seeded draws of each episode's candidates from the pool,
rendering, and registration (in :mod:`envs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rl_select.embeddings import Embedder
from rl_select.errors import ConfigError, SelectionError
from rl_select.lm.base import Scorer
from rl_select.mdp.episode import NOT_RESET, REWARD_MODES, EpisodeRule, SelectionEpisode, check_reward_mode
from rl_select.mdp.feature_spec import FEATURE_SETS, FeatureSpec
from rl_select.mdp.features import Featurizer
from rl_select.mdp.table import RowTable
from rl_select.tasks import TaskSpec
from rl_select.types import Example

__all__ = ["REWARD_MODES", "DemoSelectionEnv", "MaskedDiscrete"]


class MaskedDiscrete(spaces.Discrete):
    """``Discrete(n)`` whose :meth:`sample` draws only legal actions unless told otherwise.

    With no ``mask`` / ``probability`` argument it asks ``mask_fn()`` (the env's legal actions) and
    samples uniformly among the allowed ones (from all ``n`` if none is). So random agents and the env
    checkers' random steps never hit a masked action. It
    is a ``Discrete`` in every other respect (``isinstance``, ``n``, equality). The mask callback is
    dropped on pickling / deep copy; a copy samples plainly.

    Args:
        n: Number of actions.
        mask_fn: Returns the current ``bool (n,)`` mask of allowed actions.
        seed: Seed of the space's own generator.
    """

    def __init__(self, n: int, mask_fn: Callable[[], np.ndarray] | None = None, seed: int | None = None) -> None:
        super().__init__(n, seed=seed)
        self._mask_fn = mask_fn

    def sample(self, mask: np.ndarray | None = None, probability: np.ndarray | None = None) -> np.int64:
        """A legal action (see the class docstring), or :meth:`Discrete.sample` with the given mask."""
        if mask is None and probability is None and self._mask_fn is not None:
            allowed = np.asarray(self._mask_fn(), dtype=bool)
            if allowed.any():
                mask = allowed.astype(np.int8)
        return super().sample(mask=mask, probability=probability)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mask_fn"] = None
        return state


class DemoSelectionEnv(gym.Env[dict[str, np.ndarray], np.int64]):
    """Choose ``k`` ordered demonstrations for a frozen LM, one per step.

    ## Description

    Each episode draws ``N`` candidates from the pool (the split episodes draw from). At every step
    the agent appends one candidate to the prompt (or stops); the prompt's quality is the frozen LM's
    accuracy on the validation split. Features come from :class:`rl_select.mdp.features.Featurizer`,
    whose single scorer call per step (candidates and validation queries under the current prompt)
    also yields the reward, so rewards for a prompt are cache hits in every later run. Each episode is
    a :class:`~rl_select.mdp.episode.SelectionEpisode` (the same steps :meth:`SelectorPolicy.select
    <rl_select.mdp.policy.SelectorPolicy.select>` takes); this class adds the spaces, the draws, and
    rendering.

    ## Action Space

    ``Discrete(N + 1)`` (a :class:`MaskedDiscrete`, whose ``sample()`` honours the mask): action
    ``i < N`` appends candidate ``i``; action ``N`` is STOP. Legal actions are given by
    :meth:`action_masks` (``bool (N + 1,)``), ``obs["action_mask"]`` and ``info["action_mask"]``
    (``int8 (N + 1,)``), all from one rule (:class:`~rl_select.mdp.episode.EpisodeRule`, :attr:`rule`):
    chosen candidates are masked; STOP is allowed only if ``allow_stop`` and at least ``min_len`` demos
    are chosen; after the episode ends all actions are masked. Stepping a masked or out-of-range action
    raises :class:`~rl_select.errors.SelectionError`.

    ## Observation Space

    ``Dict`` with keys:

    * ``"state"``: ``Box(-inf, inf, (state_dim,), float32)`` — ``FeatureSpec(feature_set)``'s state
      features (6 for ``active``, 7 for ``labelled``; layout in :mod:`rl_select.mdp.features`).
    * ``"candidates"``: ``Box(-inf, inf, (N, cand_dim), float32)`` — one row per candidate of the
      episode (6 for ``active``, 11 for ``labelled``).
    * ``"action_mask"``: ``MultiBinary(N + 1)``, int8.

    ## Rewards

    With ``acc(S)`` the validation accuracy of the prompt ``S`` and ``acc(S_0)`` the zero-shot accuracy:

    * ``"marginal"``: ``r_t = acc(S_t) - acc(S_{t-1})`` (0 for STOP), so an episode's return telescopes
      to ``acc(S_final) - acc(S_0)``.
    * ``"terminal"``: ``acc(S_final)`` on the step that ends the episode (k-th demo or STOP), else 0.

    ## Starting State

    An empty prompt over ``N`` distinct candidates drawn from ``pool`` with ``self.np_random`` (seeded
    by ``reset(seed=...)``), or ``pool[:N]`` when ``fixed_pool=True``.

    ## Episode End

    Terminated after the ``k``-th demo or on STOP. Never truncated.

    ## Arguments

    * ``scorer``: The frozen LM (:class:`rl_select.lm.base.Scorer`); deterministic and ideally cached.
    * ``pool``: The split each episode draws its ``N`` candidates from (labelled examples).
    * ``val``: Reward-validation examples (labelled, non-empty).
    * ``k``: Demos per episode, ``1 <= k <= n_candidates``.
    * ``n_candidates``: ``N``, the candidates per episode, ``<= len(pool)``.
    * ``feature_set``: ``"active"`` (label-free), ``"labelled"``, ``"zeroshot"`` or ``"table"`` (candidate
      features from the one-off row table; see :attr:`FeatureSpec.prompt_queries
      <rl_select.mdp.features.FeatureSpec.prompt_queries>` for each set's LM rows per step).
    * ``row_table``: The :class:`~rl_select.mdp.table.RowTable` of the table sets (``None``: one in memory).
    * ``reward``: ``"marginal"`` or ``"terminal"``.
    * ``allow_stop``: Offer the STOP action.
    * ``min_len``: Fewest demos before STOP is allowed, ``0 <= min_len <= k``.
    * ``fixed_pool``: Every episode offers ``pool[:N]`` (for tabular Q).
    * ``embedder``: An :class:`~rl_select.embeddings.Embedder` for ``labelled`` similarity features;
      ``None`` uses the deterministic hashed bag of words.
    * ``render_mode``: ``None`` or ``"ansi"``.

    ``gymnasium.make("rl_select/ToyDemoSelection-v0")`` builds a small synthetic env for tests and
    examples (:func:`rl_select.testing.toy_env`).

    ## Information

    ``reset`` and ``step`` return ``info`` with:

    * ``"action_mask"``: ``int8 (N + 1,)``, the legal actions of the returned observation.
    * ``"chosen"``: ``list[int]``, candidate indices in the prompt, in order.
    * ``"val_acc"``: ``float``, validation accuracy of the current prompt.
    * ``"lm_queries"``: ``int``, scorer query rows asked for this episode (cache hits included).

    Attributes: :attr:`pool` (the split), :attr:`candidates` (this episode's ``N``), :attr:`chosen`,
    :attr:`prompt_demos`, :attr:`rule` (``k``, ``n_candidates``, ``allow_stop``, ``min_len`` and
    ``stop_action`` are its values), :attr:`featurizer`, :attr:`episode` (the current
    :class:`~rl_select.mdp.episode.SelectionEpisode`, ``None`` before the first reset).

    Changed: the constructor argument ``candidates=`` (the split) is now ``pool=``, and the property
    ``pool`` (the episode's ``N`` items) is now ``candidates``, so "candidates" always means the ``N``
    items an episode offers (and ``obs["candidates"]`` their feature rows).

    Raises:
        SelectionError: ``k`` or ``N`` out of range, too small a pool, empty ``val``, an unknown label.
        ConfigError: Unknown ``feature_set`` or ``reward``, or a bad ``min_len``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        *,
        scorer: Scorer,
        pool: Sequence[Example],
        val: Sequence[Example],
        k: int,
        n_candidates: int,
        feature_set: str = "active",
        reward: str = "marginal",
        allow_stop: bool = False,
        min_len: int = 0,
        fixed_pool: bool = False,
        embedder: Embedder | None = None,
        render_mode: str | None = None,
        row_table: RowTable | None = None,
    ) -> None:
        if feature_set not in FEATURE_SETS:
            raise ConfigError(f"unknown feature_set {feature_set!r}; expected one of {list(FEATURE_SETS)}")
        check_reward_mode(reward)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode={render_mode!r}; expected None or one of {self.metadata['render_modes']}")
        pool, val = tuple(pool), tuple(val)
        rule = EpisodeRule(n_candidates=n_candidates, k=k, allow_stop=allow_stop, min_len=min_len)
        if rule.n_candidates > len(pool):
            raise SelectionError(f"n_candidates={rule.n_candidates} exceeds the {len(pool)} examples of the pool")
        if not val:
            raise SelectionError("the reward validation split is empty; expected at least one example")

        self.scorer = scorer
        self.pool = pool
        self.val = val
        self.rule = rule
        self.k, self.n_candidates, self.stop_action = rule.k, rule.n_candidates, rule.stop
        self.allow_stop, self.min_len = rule.allow_stop, rule.min_len
        self.feature_set = feature_set
        self.reward_mode = reward
        self.fixed_pool = bool(fixed_pool)
        self.render_mode = render_mode
        self.feature_spec = FeatureSpec(kind=feature_set)
        self.featurizer = Featurizer(self.feature_spec, scorer, val=val, embedder=embedder,
                                     table=row_table if self.feature_spec.uses_table else None)
        _check_labels(scorer.spec, pool)  # fail now, not at some later reset

        n = rule.n_candidates
        self.action_space = MaskedDiscrete(n + 1, mask_fn=self._sampling_mask)
        self.observation_space = spaces.Dict(
            {
                "state": spaces.Box(-np.inf, np.inf, (self.feature_spec.state_dim,), np.float32),
                "candidates": spaces.Box(-np.inf, np.inf, (n, self.feature_spec.cand_dim), np.float32),
                "action_mask": spaces.MultiBinary(n + 1),
            }
        )
        self.episode: SelectionEpisode | None = None

    # --- the mask ---------------------------------------------------------------------------------

    def action_masks(self) -> np.ndarray:
        """Legal actions (sb3-contrib's convention), ``bool (N + 1,)``; all False before reset / after the end."""
        return self.rule.mask(done=True) if self.episode is None else self.episode.action_masks()

    def _sampling_mask(self) -> np.ndarray:
        """What ``action_space.sample()`` draws from: the mask, or a fresh episode's once this one ended."""
        if self.episode is not None and not self.episode.done:
            return self.episode.action_masks()
        return self.rule.mask()

    # --- Gymnasium API ----------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Draw the episode's candidates from the pool and start with the empty prompt.

        Returns:
            ``(observation, info)``; ``info["val_acc"]`` is the zero-shot accuracy.
        """
        super().reset(seed=seed)
        n = self.n_candidates
        if self.fixed_pool:
            drawn = self.pool[:n]
        else:
            drawn = tuple(self.pool[i] for i in self.np_random.choice(len(self.pool), size=n, replace=False))
        self.episode = SelectionEpisode(drawn, self.featurizer, self.rule, reward=self.reward_mode)
        return self.episode.reset()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Append candidate ``action`` (or STOP when ``action == N``).

        Returns:
            ``(observation, reward, terminated, truncated=False, info)``.

        Raises:
            SelectionError: Called before :meth:`reset` or after the episode ended, or ``action`` is
                out of range or masked.
        """
        if self.episode is None:
            raise SelectionError(NOT_RESET)
        return self.episode.step(action)

    def render(self) -> str | None:
        """With ``render_mode="ansi"``: the step, the chosen demos and the val accuracy as text."""
        if self.render_mode != "ansi":
            return None
        ep = self.episode
        if ep is None:
            return "DemoSelectionEnv (not reset)\n"
        lines = [f"step {len(ep.chosen)}/{self.k}  val_acc={ep.val_acc:.3f}" + ("  (done)" if ep.done else "")]
        lines += [f"  {pos + 1}. [{i}] {ep.candidates[i].label}: {ep.candidates[i].text[:60]}"
                  for pos, i in enumerate(ep.chosen)]
        return "\n".join(lines) + "\n"

    # --- read-only views --------------------------------------------------------------------------

    @property
    def candidates(self) -> tuple[Example, ...]:
        """The episode's ``N`` candidates (empty before the first reset)."""
        return () if self.episode is None else self.episode.candidates

    @property
    def chosen(self) -> list[int]:
        """Candidate indices in the prompt, in order (a copy)."""
        return [] if self.episode is None else self.episode.chosen

    @property
    def prompt_demos(self) -> list[Example]:
        """The chosen demonstrations, in prompt order."""
        return [] if self.episode is None else self.episode.prompt_demos


def _check_labels(spec: TaskSpec, examples: Sequence[Example]) -> None:
    known = set(spec.labels)
    bad = next((e for e in examples if e.label not in known), None)
    if bad is not None:
        raise SelectionError(
            f"pool example {bad.uid or bad.text[:40]!r} has label {bad.label!r}; expected one of {list(spec.labels)}"
        )
