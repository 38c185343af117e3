"""The scorer protocol every LM backend implements, and its spend counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from rl_select.tasks import TaskSpec
from rl_select.types import Example


@dataclass
class ScorerStats:
    """Counters of LM work, summed over a scorer's life.

    Attributes:
        queries: Query rows asked for (cache hits included).
        cache_hits: Query rows answered from the on-disk cache.
        cache_misses: Query rows that needed the LM.
        prefix_forwards: Demonstration prefixes encoded by the LM.
        forward_tokens: Tokens run through the LM body (prefixes, queries, label continuations).
        seconds: Wall time spent inside the LM.
    """

    queries: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    prefix_forwards: int = 0
    forward_tokens: int = 0
    seconds: float = 0.0

    def copy(self) -> ScorerStats:
        return ScorerStats(**asdict(self))

    def __sub__(self, other: ScorerStats) -> ScorerStats:
        return ScorerStats(**{k: v - getattr(other, k) for k, v in asdict(self).items()})

    def as_dict(self) -> dict[str, float]:
        d = asdict(self)
        d["seconds"] = round(d["seconds"], 3)
        return d


@runtime_checkable
class Scorer(Protocol):
    """Label log-probabilities of a frozen LM.

    ``logprobs(demos=D, queries=Q)`` returns ``np.ndarray[len(Q), n_labels]`` (float64): for each
    query, the natural-log probability of each label's verbaliser (summed over its tokens) after the
    prompt made of the ordered demonstrations ``D`` and the query. Labels follow ``spec.labels``.
    """

    stats: ScorerStats
    spec: TaskSpec

    @property
    def fingerprint(self) -> str:
        """A content hash of the model, dtype and scoring options (part of every cache key)."""
        ...

    def logprobs(self, *, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        ...
