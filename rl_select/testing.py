"""Test doubles and synthetic tasks (for rl_select's tests and users' own); nothing in the product imports this.

* :class:`ToyScorer`, :class:`CachedToyScorer`, :func:`toy_scorer_factory`: model-free scorers (the cached
  one with an optional context window counted in words, for the window rule of :mod:`rl_select.lm.window`);
* :func:`toy_task`, :func:`toy_examples`: a synthetic task and its data;
* :func:`toy_env`: a small :class:`~envs.demo_selection.DemoSelectionEnv` on them
  (``gymnasium.make("rl_select/ToyDemoSelection-v0")``).

``ToyScorer`` behaves like a small ICL model in the ways selection cares about, with no LM:

* each query has a hash-derived "prior" over labels, plus a boost for the gold label when the
  query's text contains the label's verbaliser word (so synthetic data can be made learnable);
* every demonstration pushes the prediction towards its own label, weighted by a hash-derived
  "quality" in [-1, 1] of that demo and by its position (later demos weigh more): so which demos
  are chosen, and their order, both change accuracy.

Everything is a pure function of texts and labels, so results are reproducible across runs and
machines.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rl_select.errors import ConfigError
from rl_select.lm.base import CachedScorer, ScorerStats
from rl_select.prompts import label_continuations, render_prefix, render_query
from rl_select.tasks import TaskSpec
from rl_select.types import Example

if TYPE_CHECKING:
    from envs.demo_selection import DemoSelectionEnv


def _unit_hash(*parts: str) -> np.ndarray:
    """Eight deterministic uniforms in [0, 1) from the given strings. Shape: (8,)."""
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=32).digest()
    return np.frombuffer(h, dtype=np.uint32).astype(np.float64) / 2**32


class ToyScorer:
    """Deterministic scorer; see the module docstring.

    Args:
        spec: The task (labels and verbalisers).
        hint: Logit boost for the label whose verbaliser appears in the query text.
        demo_weight: Scale of each demonstration's push towards its label.
    """

    def __init__(self, spec: TaskSpec, *, hint: float = 1.5, demo_weight: float = 1.0) -> None:
        self.spec = spec
        self.hint = hint
        self.demo_weight = demo_weight
        self.stats = ScorerStats()

    @property
    def fingerprint(self) -> str:
        return f"toy:{self.spec.name}:{self.hint}:{self.demo_weight}"

    def _quality(self, demo: Example) -> float:
        return float(2.0 * _unit_hash("q", demo.text, demo.text2 or "", demo.label)[0] - 1.0)

    def logprobs(self, *, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        """Log-probabilities, shape ``(len(queries), n_labels)``; rows sum to 1 in prob space."""
        t0 = time.perf_counter()
        labels = self.spec.labels
        n_lab = len(labels)
        push = np.zeros(n_lab)
        for pos, d in enumerate(demos):
            w = self.demo_weight * (1.0 + pos) / max(len(demos), 1)
            push[labels.index(d.label)] += w * self._quality(d)
        out = np.empty((len(queries), n_lab))
        for i, q in enumerate(queries):
            prior = 1.2 * (_unit_hash("p", q.text, q.text2 or "")[:n_lab] - 0.5) if n_lab <= 8 else \
                np.resize(_unit_hash("p", q.text), n_lab) - 0.5
            words = q.text.lower().split()
            hint = np.array([self.hint if self.spec.verbalizers[lab].lower() in words else 0.0 for lab in labels])
            z = prior + hint + push
            out[i] = z - np.logaddexp.reduce(z)
        self.stats.queries += len(queries)
        self.stats.cache_misses += len(queries)
        self.stats.prefix_forwards += 1
        self.stats.seconds += time.perf_counter() - t0
        return out


class CachedToyScorer(CachedScorer):
    """:class:`ToyScorer`'s numbers behind the real cache front half (disk cache, stats, calibration).

    Args:
        spec: The task.
        window: A context window in whitespace-separated words (``None``: unlimited); rows over it follow
            :mod:`rl_select.lm.window`'s rule, as with a real LM.
        **kwargs: ``cache``, ``calibrate`` (see :class:`~rl_select.lm.base.CachedScorer`).
    """

    def __init__(self, spec: TaskSpec, *, window: int | None = None, **kwargs) -> None:
        super().__init__(spec, **kwargs)
        self.toy = ToyScorer(spec)
        self.window = window

    @property
    def fingerprint(self) -> str:
        return "cached-toy:v1" + ("" if self.window is None else f":w{self.window}")

    def words(self, demos: Sequence[Example], query: Example) -> int:
        """A row's length in words: demonstrations, query and its longest label."""
        text = render_prefix(self.spec, demos) + render_query(self.spec, query)
        return len(text.split()) + max(len(c.split()) for c in label_continuations(self.spec))

    def _compute_many(self, groups: Sequence[tuple[Sequence[Example], Sequence[Example]]]) -> list[np.ndarray]:
        if self.window is None:
            return super()._compute_many(groups)
        full = [[self.words(demos, q) for q in queries] for demos, queries in groups]
        return self._within_window(groups, full, self.words, super()._compute_many, limit=self.window)

    def _compute(self, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        return self.toy.logprobs(demos=demos, queries=queries)


def toy_scorer_factory(cfg: Any) -> Callable[[TaskSpec], CachedScorer]:
    """Like :func:`rl_select.experiments.harness.scorer_factory`, with :class:`CachedToyScorer` for the LM
    (tests of executors: picklable by reference, so Ray workers can build it)."""
    from rl_select.lm.cache import open_cache

    cache = open_cache(cfg.cache)
    return lambda spec: CachedToyScorer(spec, cache=cache)


_TOY_WORDS = ("red", "green", "blue", "gold", "grey", "pink", "teal", "plum")
_TOY_FILLER = (
    "the", "a", "story", "plot", "cast", "scene", "music", "ending", "pace", "idea", "tone", "light",
    "long", "short", "quiet", "loud", "old", "new", "odd", "plain", "bright", "dark", "slow", "fast",
)


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


def toy_env(
    *,
    n_labels: int = 2,
    n_examples: int = 48,
    n_val: int = 16,
    data_seed: int = 0,
    k: int = 3,
    n_candidates: int = 8,
    **kwargs: Any,
) -> DemoSelectionEnv:
    """A small env on synthetic data scored by :class:`ToyScorer` (no model); ``rl_select/ToyDemoSelection-v0``.

    Args:
        n_labels: Number of labels of the synthetic task (2..8).
        n_examples: Size of the pool (the split episodes draw their candidates from).
        n_val: Size of the validation split.
        data_seed: Seed of the synthetic data (pools are seeded by ``reset``).
        k: Demos per episode.
        n_candidates: Candidates per episode, N.
        **kwargs: Other :class:`~envs.demo_selection.DemoSelectionEnv` arguments (``feature_set``, ...).
    """
    from envs.demo_selection import DemoSelectionEnv

    spec = toy_task(n_labels)
    data = toy_examples(spec, n_examples + n_val, seed=data_seed)
    return DemoSelectionEnv(
        scorer=ToyScorer(spec), pool=data[:n_examples], val=data[n_examples:], k=k,
        n_candidates=n_candidates, **kwargs,
    )


_REVIEW_WORDS = ("film", "plot", "actor", "scene", "story", "music", "ending", "pace", "cast", "script", "dull", "fun")


def sentiment_examples(n: int, seed: int) -> list[Example]:
    """``n`` synthetic sst2-like reviews (labels alternate); about half hold their label word, which
    :class:`ToyScorer` rewards, so selection is learnable. uids are ``"syn:<seed>:<i>"``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = ("negative", "positive")[i % 2]
        words = list(rng.choice(_REVIEW_WORDS, size=5))
        if rng.random() < 0.5:
            words.insert(int(rng.integers(0, 5)), label)
        out.append(Example(text=" ".join(words) + f" #{seed}-{i}", label=label, uid=f"syn:{seed}:{i}"))
    return out
