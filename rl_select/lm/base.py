"""The scorer protocol every LM backend implements, and its spend counters."""

from __future__ import annotations

import logging
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from rl_select.lm.cache import ScoreCache, prefix_digest, query_key
from rl_select.lm.calibration import calibrate
from rl_select.lm.window import ContextWindowWarning, Group, failure_row, fit_groups
from rl_select.prompts import content_free_queries
from rl_select.tasks import TaskSpec
from rl_select.types import Example

if TYPE_CHECKING:
    from rl_select.lm.spec import ScorerSpec

log = logging.getLogger("rl_select")

WINDOW_WARNINGS = 20
"""Rows over the context window one scorer names on the console (all of them go to the log)."""


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
        rows_dropped_demos: Query rows asked for (cache hits included) whose leftmost demonstrations were
            dropped to fit the LM's context window (:mod:`rl_select.lm.window`).
        rows_failed: Query rows asked for whose query alone does not fit the window: scored as failures.
    """

    queries: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    prefix_forwards: int = 0
    forward_tokens: int = 0
    seconds: float = 0.0
    rows_dropped_demos: int = 0
    rows_failed: int = 0

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


class CachedScorer(ABC):
    """Shared front half of every LM backend: the disk cache, calibration and spend counters.

    Subclasses implement :meth:`_compute` (raw label log-probs of queries under an ordered demo list)
    and :attr:`fingerprint`. :meth:`logprobs` looks every query up in the cache first, computes only
    the misses (in one ``_compute`` call, so a prefix is encoded once), stores them, and applies
    contextual calibration on top when ``calibrate`` is set (the content-free queries ride in the
    same call, so they are cached too).

    A backend that knows its context window applies :mod:`rl_select.lm.window`'s rule through
    :meth:`_within_window`: its ``_compute_many`` arrays then have one more column, the demonstrations each
    row dropped, and a failed row is NaN. Failed rows are never cached; they come back as
    :func:`~rl_select.lm.window.failure_row`. A row that dropped demonstrations is cached with that count
    (a vector of ``n_labels + 1``), so a cache hit counts it too.

    Args:
        spec: The task (labels, verbalisers, template).
        cache: A :class:`~rl_select.lm.cache.ScoreCache`, or ``None`` for no memo.
        calibrate: Apply contextual calibration to the returned log-probs.
    """

    spec: TaskSpec
    scorer_spec: ScorerSpec | None
    """The resolved :class:`~rl_select.lm.spec.ScorerSpec` this scorer was built from (set by its factory)."""

    def __init__(self, spec: TaskSpec, *, cache: ScoreCache | None = None, calibrate: bool = False) -> None:
        self.spec = spec
        self.cache = cache
        self.calibrate = calibrate
        self.stats = ScorerStats()
        self.scorer_spec = None
        self._window_notes: set[str] = set()

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Content hash of model weights, dtype and scoring options."""

    @abstractmethod
    def _compute(self, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        """Raw label log-probs, ``(len(queries), n_labels)``, straight from the LM."""

    def raw_logprobs(self, *, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        """Uncalibrated label log-probs, ``(len(queries), n_labels)``, through the cache."""
        return self._raw_groups([(demos, queries)])[0]

    def _raw_groups(self, groups: Sequence[tuple[Sequence[Example], Sequence[Example]]]) -> list[np.ndarray]:
        """Uncalibrated label log-probs of many prompts: for each ``(demos, queries)`` group, ``(len(queries), L)``.

        One cache look-up for every row of every group, then one :meth:`_compute_many` call for all the misses
        (each distinct query once per prompt), then one cache write.
        """
        n_labels = len(self.spec.labels)
        self.stats.queries += sum(len(q) for _, q in groups)
        if self.cache is None:
            todo = [(d, list(q)) for d, q in groups if q]
            self.stats.cache_misses += sum(len(q) for _, q in todo)
            fresh = iter(self._timed_compute(todo)) if todo else iter(())
            return [self._window_rows([self._window_stored(v, n_labels) for v in next(fresh)] if q else [], q, n_labels)
                    for _, q in groups]
        keys = []
        for demos, queries in groups:
            prefix = prefix_digest(self.fingerprint, self.spec.digest_fields(), demos)
            keys.append([query_key(prefix, q) for q in queries])
        found = self.cache.get_many(list(dict.fromkeys(k for ks in keys for k in ks)), n_labels)
        todo_keys: list[list[str]] = []
        todo: list[tuple[Sequence[Example], list[Example]]] = []
        pending: set[str] = set()
        for (demos, queries), ks in zip(groups, keys):
            mine: dict[str, Example] = {}
            for key, q in zip(ks, queries):
                if key not in found and key not in pending:
                    mine[key] = q
                    pending.add(key)
            if mine:
                todo_keys.append(list(mine))
                todo.append((demos, list(mine.values())))
        # a miss is a row the LM must compute; repeats of it within this call are free
        n_miss = len(pending)
        self.stats.cache_misses += n_miss
        self.stats.cache_hits += sum(len(ks) for ks in keys) - n_miss
        if todo:
            computed: dict[str, np.ndarray] = {}
            for ks, fresh in zip(todo_keys, self._timed_compute(todo)):
                computed.update(zip(ks, (self._window_stored(v, n_labels) for v in fresh)))
            self.cache.put_many((k, v) for k, v in computed.items() if not np.isnan(v[0]))
            found.update(computed)
        return [self._window_rows([found[k] for k in ks], queries, n_labels) for ks, (_, queries) in zip(keys, groups)]

    @staticmethod
    def _window_stored(vec: np.ndarray, n_labels: int) -> np.ndarray:
        """A computed row as the cache holds it: the label log-probs, plus the demonstrations dropped if any."""
        return vec[:n_labels] if len(vec) == n_labels or not vec[n_labels] else vec

    def _window_rows(self, vecs: list[np.ndarray], queries: Sequence[Example], n_labels: int) -> np.ndarray:
        """Label log-probs ``(len(vecs), n_labels)`` from computed or cached vectors, counting the rows over the
        window: a longer vector dropped demonstrations, a NaN one failed (:func:`~rl_select.lm.window.failure_row`)."""
        if not vecs:
            return np.zeros((0, n_labels))
        cut = sum(len(v) > n_labels for v in vecs)
        out = np.stack([v[:n_labels] for v in vecs] if cut else vecs)
        self.stats.rows_dropped_demos += cut
        failed = np.flatnonzero(np.isnan(out[:, 0]))
        for i in failed:
            out[i] = failure_row(self.spec, queries[i])
        self.stats.rows_failed += len(failed)
        return out

    def _within_window(self, groups: Sequence[Group], full: Sequence[Sequence[int]],
                       row_length: Callable[[Sequence[Example], Example], int],
                       compute: Callable[[list[Group]], list[np.ndarray]], *, limit: int) -> list[np.ndarray]:
        """:meth:`_compute_many` under the context-window rule (:mod:`rl_select.lm.window`).

        Args:
            groups: The prompts asked for.
            full: Per prompt, each row's tokens with all its demonstrations (longest label included).
            row_length: ``row_length(demos, query)``: that count for fewer demonstrations.
            compute: Raw label log-probs of prompts that fit; called with ``groups`` itself when every row fits.
            limit: The context window in tokens.

        Returns:
            Per prompt, ``(len(queries), n_labels + 1)``: the label log-probs (NaN: the row failed) and the
            demonstrations each row dropped.
        """
        fit = fit_groups(groups, full, row_length, limit)
        for note in fit.notes:
            self._window_note(note)
        return fit.scatter(compute(fit.groups) if fit.groups else [], len(self.spec.labels))

    def _window_note(self, note: str) -> None:
        """Log a row over the window once per scorer, and warn on the console for the first few."""
        if note in self._window_notes:
            return
        self._window_notes.add(note)
        log.info("%s", note)
        n = len(self._window_notes)
        if n <= WINDOW_WARNINGS:
            more = "; further rows over the window are counted, not named" if n == WINDOW_WARNINGS else ""
            warnings.warn(note + more, ContextWindowWarning, stacklevel=2)

    def _compute_many(self, groups: Sequence[tuple[Sequence[Example], Sequence[Example]]]) -> list[np.ndarray]:
        """Raw label log-probs of several prompts, one ``(len(queries), n_labels)`` array per group.

        Backends that can batch distinct prompts override this; the default runs :meth:`_compute` per group.
        """
        return [self._compute(demos, queries) for demos, queries in groups]

    def _timed_compute(self, groups: Sequence[tuple[Sequence[Example], Sequence[Example]]]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        out = self._compute_many(groups)
        self.stats.seconds += time.perf_counter() - t0
        return out

    def logprobs(self, *, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        """Label log-probs, ``(len(queries), n_labels)``; calibrated if the scorer was built so."""
        if not queries:
            return np.zeros((0, len(self.spec.labels)))
        return self._calibrated([(demos, list(queries))])[0]

    def logprobs_many(self, *, demo_lists: Sequence[Sequence[Example]], queries: Sequence[Example]) -> np.ndarray:
        """Label log-probs ``(Q, L)`` when query ``i`` is prompted with ``demo_lists[i]``, in one pass.

        Queries with the same demo list share one prompt (its prefix is encoded once); distinct prompts are
        batched together by the backend (:meth:`_compute_many`). Calibrated if the scorer was built so: each
        distinct prompt's content-free rows ride in the same pass.
        """
        rows_of = rows_by_demo_list(demo_lists, queries)
        parts = self._calibrated([(demo_lists[rows[0]], [queries[i] for i in rows]) for rows in rows_of])
        out = np.zeros((len(queries), len(self.spec.labels)))
        for rows, part in zip(rows_of, parts):
            out[rows] = part
        return out

    def _calibrated(self, groups: Sequence[tuple[Sequence[Example], list[Example]]]) -> list[np.ndarray]:
        """Each group's label log-probs, calibrated (content-free rows added to its prompt) if the scorer is."""
        cf = content_free_queries(self.spec) if self.calibrate else []
        raws = self._raw_groups([(demos, queries + cf) for demos, queries in groups])
        return [calibrate(raw[: len(q)], raw[len(q):]) if cf else raw for (_, q), raw in zip(groups, raws)]


def rows_by_demo_list(demo_lists: Sequence[Sequence[Example]], queries: Sequence[Example]) -> list[list[int]]:
    """The query indices of each distinct demo list (by content), in first-seen order; one list per query."""
    if len(demo_lists) != len(queries):
        raise ValueError(f"{len(demo_lists)} demo lists for {len(queries)} queries; expected one each")
    rows_of: dict[tuple, list[int]] = {}
    for i, demos in enumerate(demo_lists):
        rows_of.setdefault(tuple(d.content() for d in demos), []).append(i)
    return list(rows_of.values())


def grouped_logprobs(scorer: Scorer, demo_lists: Sequence[Sequence[Example]],
                     queries: Sequence[Example]) -> np.ndarray:
    """Label log-probs ``(Q, L)`` when query ``i`` is prompted with ``demo_lists[i]`` (per-query prompts, kNN's).

    A :class:`CachedScorer` scores every distinct prompt in one batched pass (:meth:`CachedScorer.logprobs_many`);
    any other :class:`Scorer` gets one call per distinct demo list (queries sharing a list share its prefix).
    """
    if isinstance(scorer, CachedScorer):
        return scorer.logprobs_many(demo_lists=demo_lists, queries=queries)
    out = np.zeros((len(queries), len(scorer.spec.labels)))
    for rows in rows_by_demo_list(demo_lists, queries):
        out[rows] = scorer.logprobs(demos=list(demo_lists[rows[0]]), queries=[queries[i] for i in rows])
    return out
