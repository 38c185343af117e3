"""Per-query neighbourhoods: the pool's table, each query's ``M`` nearest pool examples, and their vote.

A per-query episode builds one query's prompt from that query's ``M`` nearest pool examples (cosine of
sentence embeddings, most similar first). What the env, the rollout collection, the exported policy and the
neighbour rules share about those neighbourhoods:

* :class:`PoolTable` — one row per pool example: embedding, label id, the LM's calibrated zero-shot
  probability of its own gold label (its "difficulty", one cached LM row per pool example), length; and the
  pool's :class:`~rl_select.neighbours.NeighbourIndex`, built once on first use; :class:`TableMemo` keeps
  the last one;
* :class:`QueryContexts` — per query: its ``M`` neighbours, their similarities, and the LM's calibrated
  zero-shot label distribution for the query (one cached LM row per query);
* :func:`vote_shares` (a query's neighbourhood vote) and :func:`pool_reliability` (the task-level facts).

Large pools (a training file of 100,000 rows): the pool is embedded once (the embedder's disk cache, see
:func:`~rl_select.embeddings.embed_examples`), neighbours come from the index (FAISS from
:data:`~rl_select.neighbours.ANN_MIN_ROWS` rows when installed), and a pool of more than
:data:`LAZY_LM_MIN_ROWS` rows is scored by the LM lazily: only the rows that are some query's neighbour, and
the :func:`pool_reliability` sample when a feature reads it, each once (the scorer caches them on disk).

Shapes: ``P`` pool rows, ``Q`` queries, ``M`` neighbours, ``L`` labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from rl_select.embeddings import Embedder, embed_examples, example_text
from rl_select.errors import SelectionError
from rl_select.lm.base import Scorer
from rl_select.lm.calibration import normalise
from rl_select.metrics import label_ids
from rl_select.neighbours import NeighbourIndex, resolve_backend
from rl_select.types import Example

# Below any cosine similarity: a pool item whose text equals the query's is a neighbour only when nothing else is left.
SAME_TEXT_SIM = -2.0

LAZY_LM_MIN_ROWS = 1000
"""A pool of more rows than this is scored zero-shot lazily (see :meth:`PoolTable.score_rows`); a smaller one
all at once, as its :func:`pool_reliability` sample is the whole pool anyway."""

_NO_ROWS = np.zeros(0, dtype=np.int64)


def zero_shot_probs(scorer: Scorer, examples: Sequence[Example]) -> np.ndarray:
    """The LM's zero-shot label distribution for each example (calibrated if the scorer is), ``(n, L)``.

    One scorer call (one LM row per example, cached on disk by the scorer).
    """
    if not examples:
        return np.zeros((0, len(scorer.spec.labels)))
    return np.exp(normalise(scorer.logprobs(demos=[], queries=list(examples))))


@dataclass(frozen=True)
class PoolTable:
    """One row per pool example.

    Attributes:
        pool: The pool, ``P`` examples.
        emb: ``float32 (P, d)`` unit embeddings.
        labels: ``int64 (P,)`` label ids.
        own_gold: ``float64 (P,)`` the LM's zero-shot probability of each example's own gold label
            (NaN where the table was built without the LM, and, in a lazily scored table, where the row has
            not been needed yet: see :meth:`score_rows`).
        zs_correct: ``float64 (P,)`` 1.0 where the LM's zero-shot top label is the example's gold label
            (NaN as ``own_gold``).
        lengths: ``float64 (P,)`` characters of each example's input text.
        n_labels: ``L``.
        scorer: The LM that fills ``own_gold`` / ``zs_correct`` on demand (``None``: built without the LM).
        index_backend: The neighbour index (:data:`~rl_select.neighbours.BACKENDS`), built on first use.
    """

    pool: tuple[Example, ...]
    emb: np.ndarray
    labels: np.ndarray
    own_gold: np.ndarray
    zs_correct: np.ndarray
    lengths: np.ndarray
    n_labels: int
    scorer: Scorer | None = field(default=None, repr=False, compare=False)
    index_backend: str = "auto"

    @classmethod
    def build(cls, pool: Sequence[Example], *, labels: Sequence[str], embedder: Embedder,
              scorer: Scorer | None = None, lazy_lm: bool | None = None, index: str = "auto") -> PoolTable:
        """Embed the pool and (with a scorer) score its examples zero-shot (cached LM rows).

        Args:
            pool: ``P`` labelled examples.
            labels: The task's label names.
            embedder: Sentence embedder (large pools go through its disk cache).
            scorer: The LM for ``own_gold`` / ``zs_correct``; ``None``: no LM.
            lazy_lm: Score rows only when needed (:meth:`score_rows`) instead of all ``P`` now; ``None``
                (default): lazily when ``P > LAZY_LM_MIN_ROWS``.
            index: The neighbour index backend (default ``"auto"``: exact for small pools, FAISS for large).

        Raises:
            SelectionError: An empty pool, or a pool label that is not one of ``labels``.
            ConfigError: An unknown index backend, or a FAISS one without FAISS.
        """
        pool = tuple(pool)
        if not pool:
            raise SelectionError("the pool is empty; expected at least one labelled example")
        resolve_backend(index, len(pool))
        y = label_ids(labels, pool)
        own, right = np.full(len(pool), np.nan), np.full(len(pool), np.nan)
        lazy = len(pool) > LAZY_LM_MIN_ROWS if lazy_lm is None else bool(lazy_lm)
        if scorer is not None and not lazy:
            zs = zero_shot_probs(scorer, pool)
            own, right = zs[np.arange(len(pool)), y], (zs.argmax(axis=1) == y).astype(np.float64)
        return cls(pool=pool, emb=embed_examples(embedder, pool).astype(np.float32), labels=y, own_gold=own,
                   zs_correct=right,
                   lengths=np.array([len(example_text(e)) for e in pool], dtype=np.float64), n_labels=len(labels),
                   scorer=scorer, index_backend=index)

    def score_rows(self, rows: np.ndarray | Sequence[int]) -> int:
        """Fill ``own_gold`` and ``zs_correct`` for those of ``rows`` not scored yet: one scorer call, cached LM
        rows. A no-op without a scorer or when every row is scored (an eagerly built table).

        Returns:
            How many rows were scored now.
        """
        if self.scorer is None:
            return 0
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        todo = rows[np.isnan(self.own_gold[rows])]
        if not len(todo):
            return 0
        zs = zero_shot_probs(self.scorer, [self.pool[j] for j in todo])
        y = self.labels[todo]
        self.own_gold[todo] = zs[np.arange(len(todo)), y]
        self.zs_correct[todo] = (zs.argmax(axis=1) == y).astype(np.float64)
        return len(todo)

    @cached_property
    def index(self) -> NeighbourIndex:
        """The pool's neighbour index over ``emb`` (built on first use, then kept)."""
        return NeighbourIndex(self.emb, backend=self.index_backend)

    @cached_property
    def text_rows(self) -> dict[str, np.ndarray]:
        """``int64`` pool rows per input text (:func:`~rl_select.embeddings.example_text`)."""
        rows: dict[str, list[int]] = {}
        for j, e in enumerate(self.pool):
            rows.setdefault(example_text(e), []).append(j)
        return {t: np.array(r, dtype=np.int64) for t, r in rows.items()}

    def same_text(self, ex: Example) -> np.ndarray:
        """``int64`` pool rows whose input text equals ``ex``'s (often none)."""
        return self.text_rows.get(example_text(ex), _NO_ROWS)

    @cached_property
    def _memo(self) -> dict[Any, Any]:
        return {}


@dataclass(frozen=True)
class QueryContexts:
    """Each query's neighbourhood and zero-shot prediction.

    Attributes:
        queries: ``Q`` queries.
        nbr: ``int64 (Q, M)`` pool indices of each query's ``M`` nearest, most similar first.
        sims: ``float64 (Q, M)`` their cosine similarities.
        zs: ``float64 (Q, L)`` the LM's zero-shot label distribution (uniform without the LM).
        qlen: ``float64 (Q,)`` characters of each query's input text.
        table: The pool's table these contexts index (for :attr:`pool_acc`).
    """

    queries: tuple[Example, ...]
    nbr: np.ndarray
    sims: np.ndarray
    zs: np.ndarray
    qlen: np.ndarray
    table: PoolTable | None = field(default=None, repr=False, compare=False)

    @property
    def m(self) -> int:
        """``M``, neighbours per query."""
        return int(self.nbr.shape[1])

    @cached_property
    def pool_acc(self) -> np.ndarray:
        """``float64 (2,)`` :func:`pool_reliability` of the table at this ``M``, computed on first read."""
        if self.table is None:
            return np.array([np.nan, np.nan])
        return pool_reliability(self.table, self.m)

    @classmethod
    def build(cls, table: PoolTable, queries: Sequence[Example], *, m: int, embedder: Embedder,
              scorer: Scorer | None = None, exclude_same_text: bool = True) -> QueryContexts:
        """The ``m`` nearest pool examples of every query (the table's neighbour index) and, with a scorer, one
        zero-shot LM row per query; a lazily scored table scores the neighbours' rows it lacks.

        Raises:
            SelectionError: ``m`` is not an integer in ``1..P``.
        """
        n_pool = len(table.pool)
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= n_pool:
            raise SelectionError(f"M={m!r} neighbours per query; expected an integer in 1..{n_pool} (the pool size)")
        queries = tuple(queries)
        q_emb = embed_examples(embedder, queries).astype(np.float32) if queries else np.zeros((0, table.emb.shape[1]))
        exclude = [table.same_text(q) for q in queries] if exclude_same_text else None
        nbr, sims = table.index.search(q_emb, int(m), exclude=exclude, excluded_sim=SAME_TEXT_SIM)
        table.score_rows(nbr.ravel())
        zs = (zero_shot_probs(scorer, queries) if scorer is not None
              else np.full((len(queries), table.n_labels), 1.0 / table.n_labels))
        return cls(queries=queries, nbr=nbr, sims=sims, zs=zs,
                   qlen=np.array([len(example_text(q)) for q in queries], dtype=np.float64), table=table)

    def demos(self, table: PoolTable, i: int, chosen: Sequence[int]) -> list[Example]:
        """Query ``i``'s demonstrations for candidate positions ``chosen``, in prompt order."""
        return [table.pool[int(self.nbr[i, j])] for j in chosen]


class TableMemo:
    """The :class:`PoolTable` of the last pool asked for, rebuilt only when the pool, labels, embedder, scorer or
    index backend change: a selector called batch after batch on one large pool embeds it, builds its index and
    scores its LM rows once."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._table: PoolTable | None = None

    def get(self, pool: Sequence[Example], *, labels: Sequence[str], embedder: Embedder,
            scorer: Scorer | None = None, index: str = "auto") -> PoolTable:
        """:meth:`PoolTable.build` with these arguments, or the table it built last time for the same ones
        (the same examples, labels and index; the same embedder and scorer objects)."""
        key = (tuple(pool), tuple(labels), embedder, scorer, index)
        old = self._key
        if (old is None or self._table is None or old[1:3] != key[1:3] or old[3] is not scorer or old[4] != index
                or len(old[0]) != len(key[0]) or old[0] != key[0]):
            self._table = PoolTable.build(key[0], labels=labels, embedder=embedder, scorer=scorer, index=index)
            self._key = key
        return self._table


def pool_reliability(table: PoolTable, m: int, *, max_rows: int = 1000) -> np.ndarray:
    """How far each signal can be trusted on this task, measured on the labelled pool: ``float64 (2,)``.

    Both over at most ``max_rows`` evenly spaced pool rows (the whole pool up to ``max_rows``): ``[0]``: the
    LM's zero-shot accuracy (NaN without the LM; a lazily scored table scores those rows now); ``[1]``: the
    leave-one-out accuracy of the similarity-weighted vote of a row's ``m`` nearest other pool examples (rows
    with the same text left out), neighbours from the table's index. Reads pool labels only, never a
    validation label. Memoised on the table per ``(m, max_rows)``.
    """
    key = ("pool_reliability", m, max_rows)
    if key not in table._memo:
        table._memo[key] = _pool_reliability(table, m, max_rows)
    return table._memo[key].copy()


def _pool_reliability(table: PoolTable, m: int, max_rows: int) -> np.ndarray:
    n = len(table.pool)
    probe = np.unique(np.linspace(0, n - 1, min(n, max_rows)).round().astype(np.int64))
    table.score_rows(probe)
    right_zs = table.zs_correct[probe]
    zs_acc = float(np.mean(right_zs)) if n and not np.isnan(right_zs).any() else np.nan
    m = min(m, n - 1)
    if m < 1:
        return np.array([zs_acc, np.nan])
    exclude = [table.same_text(table.pool[j]) for j in probe]
    nbr, sims = table.index.search(table.emb[probe], m, exclude=exclude, excluded_sim=-np.inf)
    w = np.clip(sims, 1e-6, None)
    votes = np.zeros((len(probe), table.n_labels))
    np.add.at(votes, (np.repeat(np.arange(len(probe)), m), table.labels[nbr].ravel()), w.ravel())
    right = votes.argmax(axis=1) == table.labels[probe]
    return np.array([zs_acc, float(np.mean(right))])


def vote_shares(table: PoolTable, ctx: QueryContexts, i: int) -> np.ndarray:
    """Similarity-weighted label shares of query ``i``'s neighbours, ``(L,)``, summing to 1."""
    w = np.clip(ctx.sims[i], 1e-6, None)
    shares = np.bincount(table.labels[ctx.nbr[i]], weights=w, minlength=table.n_labels)
    return shares / shares.sum()
