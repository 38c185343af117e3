"""The demonstration-selection MDP as a Gymnasium environment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rl_select.embeddings import Embedder
from rl_select.errors import ConfigError, SelectionError
from rl_select.features import FEATURE_SETS, FeatureResult, FeatureSpec, Featurizer
from rl_select.lm.base import Scorer
from rl_select.lm.testing import ToyScorer
from rl_select.tasks import TaskSpec
from rl_select.types import Example

REWARD_MODES: tuple[str, ...] = ("marginal", "terminal")
"""Known reward modes of :class:`DemoSelectionEnv`."""

_TOY_WORDS = ("red", "green", "blue", "gold", "grey", "pink", "teal", "plum")
_TOY_FILLER = (
    "the", "a", "story", "plot", "cast", "scene", "music", "ending", "pace", "idea", "tone", "light",
    "long", "short", "quiet", "loud", "old", "new", "odd", "plain", "bright", "dark", "slow", "fast",
)


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

    Each episode draws a pool of ``N`` candidates from the candidate split. At every step the agent
    appends one candidate to the prompt (or stops); the prompt's quality is the frozen LM's accuracy
    on the validation split. Features come from :class:`rl_select.features.Featurizer`, whose single
    scorer call per step (candidates and validation queries under the current prompt) also yields the
    reward, so rewards for a prompt are cache hits in every later run.

    ## Action Space

    ``Discrete(N + 1)`` (a :class:`MaskedDiscrete`, whose ``sample()`` honours the mask): action
    ``i < N`` appends pool candidate ``i``; action ``N`` is STOP. Legal actions are given by
    :meth:`action_masks` (``bool (N + 1,)``), ``obs["action_mask"]`` and ``info["action_mask"]``
    (``int8 (N + 1,)``), all from one function: chosen candidates are masked; STOP is allowed only if
    ``allow_stop`` and at least ``min_len`` demos are chosen; after the episode ends all actions are
    masked. Stepping a masked or out-of-range action raises :class:`~rl_select.errors.SelectionError`.

    ## Observation Space

    ``Dict`` with keys:

    * ``"state"``: ``Box(-inf, inf, (state_dim,), float32)`` — ``FeatureSpec(feature_set)``'s state
      features (6 for ``active``, 7 for ``labelled``; layout in :mod:`rl_select.features`).
    * ``"candidates"``: ``Box(-inf, inf, (N, cand_dim), float32)`` — one row per pool candidate (6 for
      ``active``, 11 for ``labelled``).
    * ``"action_mask"``: ``MultiBinary(N + 1)``, int8.

    ## Rewards

    With ``acc(S)`` the validation accuracy of the prompt ``S`` and ``acc(S_0)`` the zero-shot accuracy:

    * ``"marginal"``: ``r_t = acc(S_t) - acc(S_{t-1})`` (0 for STOP), so an episode's return telescopes
      to ``acc(S_final) - acc(S_0)``.
    * ``"terminal"``: ``acc(S_final)`` on the step that ends the episode (k-th demo or STOP), else 0.

    ## Starting State

    An empty prompt over a pool of ``N`` distinct candidates drawn with ``self.np_random`` (seeded by
    ``reset(seed=...)``), or the split's first ``N`` when ``fixed_pool=True``.

    ## Episode End

    Terminated after the ``k``-th demo or on STOP. Never truncated.

    ## Arguments

    * ``scorer``: The frozen LM (:class:`rl_select.lm.base.Scorer`); deterministic and ideally cached.
    * ``candidates``: The candidate split pools are drawn from (labelled examples).
    * ``val``: Reward-validation examples (labelled, non-empty).
    * ``k``: Demos per episode, ``1 <= k <= n_candidates``.
    * ``n_candidates``: Pool size ``N``, ``<= len(candidates)``.
    * ``feature_set``: ``"active"`` (label-free) or ``"labelled"``.
    * ``reward``: ``"marginal"`` or ``"terminal"``.
    * ``allow_stop``: Offer the STOP action.
    * ``min_len``: Fewest demos before STOP is allowed, ``0 <= min_len <= k``.
    * ``fixed_pool``: Always use the split's first ``N`` candidates (for tabular Q).
    * ``embedder``: An :class:`~rl_select.embeddings.Embedder` for ``labelled`` similarity features;
      ``None`` uses the deterministic hashed bag of words.
    * ``render_mode``: ``None`` or ``"ansi"``.

    ``gymnasium.make("rl_select/DemoSelection-v0")`` with no arguments builds :meth:`toy`.

    ## Information

    ``reset`` and ``step`` return ``info`` with:

    * ``"action_mask"``: ``int8 (N + 1,)``, the legal actions of the returned observation.
    * ``"chosen"``: ``list[int]``, pool indices in the prompt, in order.
    * ``"val_acc"``: ``float``, validation accuracy of the current prompt.
    * ``"lm_queries"``: ``int``, scorer query rows asked for this episode (cache hits included).

    Raises:
        SelectionError: ``k`` or ``N`` out of range, too few candidates, empty ``val``, an unknown label.
        ConfigError: Unknown ``feature_set`` or ``reward``, or a bad ``min_len``.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        *,
        scorer: Scorer,
        candidates: Sequence[Example],
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
    ) -> None:
        if feature_set not in FEATURE_SETS:
            raise ConfigError(f"unknown feature_set {feature_set!r}; expected one of {list(FEATURE_SETS)}")
        if reward not in REWARD_MODES:
            raise ConfigError(f"unknown reward mode {reward!r}; expected one of {list(REWARD_MODES)}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode={render_mode!r}; expected None or one of {self.metadata['render_modes']}")
        candidates, val = tuple(candidates), tuple(val)
        if not _is_int(n_candidates) or n_candidates < 1:
            raise SelectionError(f"n_candidates={n_candidates!r}; expected an integer >= 1")
        if n_candidates > len(candidates):
            raise SelectionError(
                f"n_candidates={n_candidates} exceeds the {len(candidates)} examples of the candidate split"
            )
        if not _is_int(k) or not 1 <= k <= n_candidates:
            raise SelectionError(f"k={k!r}; expected an integer with 1 <= k <= n_candidates={n_candidates}")
        if not _is_int(min_len) or not 0 <= min_len <= k:
            raise ConfigError(f"min_len={min_len!r}; expected an integer with 0 <= min_len <= k={k}")
        if not val:
            raise SelectionError("the reward validation split is empty; expected at least one example")

        self.scorer = scorer
        self.candidates = candidates
        self.val = val
        self.k = int(k)
        self.n_candidates = int(n_candidates)
        self.feature_set = feature_set
        self.reward_mode = reward
        self.allow_stop = bool(allow_stop)
        self.min_len = int(min_len)
        self.fixed_pool = bool(fixed_pool)
        self.render_mode = render_mode
        self.feature_spec = FeatureSpec(kind=feature_set)
        self.featurizer = Featurizer(self.feature_spec, scorer, val=val, embedder=embedder)
        _check_labels(scorer.spec, candidates)  # fail now, not at some later reset

        n = self.n_candidates
        self.stop_action = n
        self.action_space = MaskedDiscrete(n + 1, mask_fn=self._sampling_mask)
        self.observation_space = spaces.Dict(
            {
                "state": spaces.Box(-np.inf, np.inf, (self.feature_spec.state_dim,), np.float32),
                "candidates": spaces.Box(-np.inf, np.inf, (n, self.feature_spec.cand_dim), np.float32),
                "action_mask": spaces.MultiBinary(n + 1),
            }
        )

        self._pool: tuple[Example, ...] | None = None
        self._chosen: list[int] = []
        self._chosen_flags = np.zeros(n, dtype=bool)
        self._done = False
        self._acc = 0.0
        self._last: FeatureResult | None = None
        self._queries_at_reset = 0

    # --- constructors -----------------------------------------------------------------------------

    @classmethod
    def toy(
        cls,
        *,
        n_labels: int = 2,
        n_examples: int = 48,
        n_val: int = 16,
        data_seed: int = 0,
        k: int = 3,
        n_candidates: int = 8,
        **kwargs: Any,
    ) -> DemoSelectionEnv:
        """A small env on synthetic data scored by :class:`~rl_select.lm.testing.ToyScorer` (no model).

        Args:
            n_labels: Number of labels of the synthetic task (2..8).
            n_examples: Size of the candidate split.
            n_val: Size of the validation split.
            data_seed: Seed of the synthetic data (pools are seeded by ``reset``).
            k: Demos per episode.
            n_candidates: Pool size N.
            **kwargs: Other :class:`DemoSelectionEnv` arguments (``feature_set``, ``reward``, ...).
        """
        spec = toy_task(n_labels)
        data = toy_examples(spec, n_examples + n_val, seed=data_seed)
        return cls(
            scorer=ToyScorer(spec), candidates=data[:n_examples], val=data[n_examples:], k=k,
            n_candidates=n_candidates, **kwargs,
        )

    # --- the mask ---------------------------------------------------------------------------------

    def _mask(self) -> np.ndarray:
        """Legal actions now, ``bool (N + 1,)``; the one source of every mask the env exposes."""
        mask = np.zeros(self.n_candidates + 1, dtype=bool)
        if self._pool is not None and not self._done:
            mask[:-1] = ~self._chosen_flags
            mask[-1] = self.allow_stop and len(self._chosen) >= self.min_len
        return mask

    def _sampling_mask(self) -> np.ndarray:
        """What ``action_space.sample()`` draws from: the mask, or a fresh episode's once this one ended."""
        if self._pool is not None and not self._done:
            return self._mask()
        mask = np.ones(self.n_candidates + 1, dtype=bool)
        mask[-1] = self.allow_stop and self.min_len == 0
        return mask

    def action_masks(self) -> np.ndarray:
        """Legal actions (sb3-contrib's convention), ``bool (N + 1,)``; all False before reset / after the end."""
        return self._mask()

    # --- Gymnasium API ----------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Draw a pool and start with the empty prompt.

        Returns:
            ``(observation, info)``; ``info["val_acc"]`` is the zero-shot accuracy.
        """
        super().reset(seed=seed)
        n = self.n_candidates
        if self.fixed_pool:
            self._pool = self.candidates[:n]
        else:
            idx = self.np_random.choice(len(self.candidates), size=n, replace=False)
            self._pool = tuple(self.candidates[i] for i in idx)
        self._chosen = []
        self._chosen_flags = np.zeros(n, dtype=bool)
        self._done = False
        self._queries_at_reset = self.scorer.stats.queries
        self._last = self.featurizer.compute(self._pool, self._chosen, self.k)
        self._acc = self._last.val_acc
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Append candidate ``action`` (or STOP when ``action == N``).

        Returns:
            ``(observation, reward, terminated, truncated=False, info)``.

        Raises:
            SelectionError: Called before :meth:`reset` or after the episode ended, or ``action`` is
                out of range or masked.
        """
        a = self._check_action(action)
        prev = self._acc
        if a == self.stop_action:
            self._done = True
        else:
            self._chosen.append(a)
            self._chosen_flags[a] = True
            self._done = len(self._chosen) >= self.k
            assert self._pool is not None
            self._last = self.featurizer.compute(self._pool, self._chosen, self.k)
            self._acc = self._last.val_acc
        if self.reward_mode == "marginal":
            reward = self._acc - prev
        else:
            reward = self._acc if self._done else 0.0
        return self._observation(), float(reward), self._done, False, self._info()

    def render(self) -> str | None:
        """With ``render_mode="ansi"``: the step, the chosen demos and the val accuracy as text."""
        if self.render_mode != "ansi":
            return None
        if self._pool is None:
            return "DemoSelectionEnv (not reset)\n"
        lines = [f"step {len(self._chosen)}/{self.k}  val_acc={self._acc:.3f}" + ("  (done)" if self._done else "")]
        lines += [f"  {pos + 1}. [{i}] {self._pool[i].label}: {self._pool[i].text[:60]}"
                  for pos, i in enumerate(self._chosen)]
        return "\n".join(lines) + "\n"

    # --- read-only views --------------------------------------------------------------------------

    @property
    def pool(self) -> tuple[Example, ...]:
        """The episode's N candidates (empty before the first reset)."""
        return self._pool or ()

    @property
    def chosen(self) -> list[int]:
        """Pool indices in the prompt, in order (a copy)."""
        return list(self._chosen)

    @property
    def prompt_demos(self) -> list[Example]:
        """The chosen demonstrations, in prompt order."""
        return [self.pool[i] for i in self._chosen]

    # --- helpers ----------------------------------------------------------------------------------

    def _check_action(self, action: Any) -> int:
        if self._pool is None:
            raise SelectionError("step() called before reset(); call reset() first")
        if self._done:
            raise SelectionError("step() called after the episode ended; call reset() first")
        arr = np.asarray(action)
        n = self.n_candidates
        if arr.size != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise SelectionError(f"action {action!r} is not an integer; expected one in 0..{n} ({n} = STOP)")
        a = int(arr.reshape(()))
        if not 0 <= a <= n:
            raise SelectionError(f"action {a} is out of range; expected an integer in 0..{n} ({n} = STOP)")
        if not self._mask()[a]:
            if a == n:
                why = ("allow_stop=False" if not self.allow_stop else
                       f"only {len(self._chosen)} demos are chosen and min_len={self.min_len}")
                raise SelectionError(
                    f"action {a} (STOP) is masked: {why}; choose an action where action_masks() is True"
                )
            raise SelectionError(
                f"action {a} is masked: candidate {a} is already chosen; choose an action where action_masks() is True"
            )
        return a

    def _observation(self) -> dict[str, np.ndarray]:
        assert self._last is not None
        return {
            "state": self._last.state.copy(),
            "candidates": self._last.candidates.copy(),
            "action_mask": self._mask().astype(np.int8),
        }

    def _info(self) -> dict[str, Any]:
        return {
            "action_mask": self._mask().astype(np.int8),
            "chosen": list(self._chosen),
            "val_acc": float(self._acc),
            "lm_queries": int(self.scorer.stats.queries - self._queries_at_reset),
        }


def make_demo_selection_env(**kwargs: Any) -> DemoSelectionEnv:
    """Entry point of ``rl_select/DemoSelection-v0``: :meth:`DemoSelectionEnv.toy` unless ``scorer`` is given.

    Args:
        **kwargs: :class:`DemoSelectionEnv` arguments (with ``scorer``, ``candidates``, ``val``, ``k``,
            ``n_candidates``), or :meth:`DemoSelectionEnv.toy` arguments (without ``scorer``).
    """
    if "scorer" in kwargs:
        return DemoSelectionEnv(**kwargs)
    return DemoSelectionEnv.toy(**kwargs)


# --- synthetic data for the toy env -------------------------------------------------------------------


def toy_task(n_labels: int = 2) -> TaskSpec:
    """A synthetic task with ``n_labels`` labels (``"l0"``, ``"l1"``, ...) verbalised as colour words.

    Raises:
        ConfigError: ``n_labels`` outside 2..8.
    """
    if not 2 <= n_labels <= len(_TOY_WORDS):
        raise ConfigError(f"toy n_labels={n_labels}; expected 2..{len(_TOY_WORDS)}")
    labels = tuple(f"l{i}" for i in range(n_labels))
    return TaskSpec(
        name=f"toy{n_labels}",
        labels=labels,
        verbalizers={lab: _TOY_WORDS[i] for i, lab in enumerate(labels)},
        template="Input: {text}\nColour: {label}",
    )


def toy_examples(spec: TaskSpec, n: int, *, seed: int = 0) -> list[Example]:
    """``n`` deterministic synthetic examples of ``spec``, labels round-robin.

    About half the texts contain their label's verbaliser word (which :class:`ToyScorer` rewards), so
    the task is learnable but not trivial; the rest is filler words.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = spec.labels[i % len(spec.labels)]
        words = [str(w) for w in rng.choice(_TOY_FILLER, size=int(rng.integers(3, 7)))]
        if rng.random() < 0.5:
            words.insert(int(rng.integers(0, len(words) + 1)), spec.verbalizers[label])
        out.append(Example(text=f"{' '.join(words)} #{i}", label=label, uid=f"toy:{i}"))
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_labels(spec: TaskSpec, examples: Sequence[Example]) -> None:
    known = set(spec.labels)
    bad = next((e for e in examples if e.label not in known), None)
    if bad is not None:
        raise SelectionError(
            f"candidate {bad.uid or bad.text[:40]!r} has label {bad.label!r}; expected one of {list(spec.labels)}"
        )
