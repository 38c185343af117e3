"""A deterministic, model-free scorer for unit tests (users' tests too).

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
from typing import Any

import numpy as np

from rl_select.lm.base import CachedScorer, ScorerStats
from rl_select.tasks import TaskSpec
from rl_select.types import Example


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
        **kwargs: ``cache``, ``calibrate`` (see :class:`~rl_select.lm.base.CachedScorer`).
    """

    def __init__(self, spec: TaskSpec, **kwargs) -> None:
        super().__init__(spec, **kwargs)
        self.toy = ToyScorer(spec)

    @property
    def fingerprint(self) -> str:
        return "cached-toy:v1"

    def _compute(self, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        return self.toy.logprobs(demos=demos, queries=queries)


def toy_scorer_factory(cfg: Any) -> Callable[[TaskSpec], CachedScorer]:
    """Like :func:`rl_select.experiments.harness.scorer_factory`, with :class:`CachedToyScorer` for the LM
    (tests of executors: picklable by reference, so Ray workers can build it)."""
    from rl_select.experiments.harness import open_cache

    cache = open_cache(cfg.cache)
    return lambda spec: CachedToyScorer(spec, cache=cache)
