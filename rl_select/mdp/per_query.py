"""Per-query episodes: each query's M nearest pool examples, and the task-agnostic features the Q-network reads.

A per-query episode builds one query's prompt from that query's ``M`` nearest pool examples (cosine of
sentence embeddings, most similar first); the episode rule (:class:`~rl_select.mdp.episode.EpisodeRule`
with ``n_candidates = M``) is the same one the fixed-prompt episodes follow. This module holds what the
env, the rollout collection, the exported policy and the neighbour rules share:

* :class:`PoolTable` — one row per pool example: embedding, label id, the LM's calibrated zero-shot
  probability of its own gold label (its "difficulty", one cached LM row per pool example), length; and the
  pool's :class:`~rl_select.neighbours.NeighbourIndex`, built once on first use;
* :class:`QueryContexts` — per query: its ``M`` neighbours, their similarities, and the LM's calibrated
  zero-shot label distribution for the query (one cached LM row per query);

Large pools (a training file of 100,000 rows): the pool is embedded once (the embedder's disk cache, see
:func:`~rl_select.embeddings.embed_examples`), neighbours come from the index (FAISS from
:data:`~rl_select.neighbours.ANN_MIN_ROWS` rows when installed), and a pool of more than
:data:`LAZY_LM_MIN_ROWS` rows is scored by the LM lazily: only the rows that are some query's neighbour, and
the :func:`pool_reliability` sample when a feature reads it, each once (the scorer caches them on disk).
* :func:`features` — the state and per-candidate features of one query after ``chosen``. They mean the
  same on any classification task: similarities, ranks, redundancy, the candidate's label against the
  labels chosen, the neighbourhood's vote and the LM's zero-shot prediction, its own zero-shot
  difficulty, step, length. No task identity, no label words, no label index.

Shapes: ``P`` pool rows, ``Q`` queries, ``M`` neighbours, ``L`` labels, ``S`` / ``C`` feature widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from rl_select.embeddings import Embedder, embed_examples, example_text
from rl_select.errors import ConfigError, SelectionError
from rl_select.lm.base import Scorer
from rl_select.lm.calibration import normalise
from rl_select.metrics import label_ids
from rl_select.neighbours import NeighbourIndex, resolve_backend
from rl_select.types import Example

STATE_FEATURES: tuple[str, ...] = (
    "step", "inv_labels", "zs_conf", "vote_top", "vote_zs_agree", "nbr_labels", "chosen_entropy",
    "chosen_sim", "chosen_vote_top", "pool_zs_acc", "pool_vote_acc",
)
"""State features: step ``t / k``; ``1 / L``; the LM's zero-shot top probability for the query; the
neighbourhood vote's top share; whether vote and zero-shot agree; distinct neighbour labels ``/ L``; the
label entropy of the chosen demonstrations ``/ log L``; their mean similarity to the query; the share of
them that carry the vote's top label; and two facts about the task, measured on the labelled pool (see
:func:`pool_reliability`): the LM's zero-shot accuracy and the neighbour vote's leave-one-out accuracy."""

_POOL_STATE = ("pool_zs_acc", "pool_vote_acc")
_BASE_STATE = tuple(f for f in STATE_FEATURES if f not in _POOL_STATE)

CANDIDATE_FEATURES: tuple[str, ...] = (
    "sim", "rank", "sim_gap", "redundancy", "vote_share", "is_vote_top", "zs_prob", "is_zs_top", "own_gold",
    "chosen_share", "balance_after", "len_ratio", "same_as_last",
)
"""Candidate features: cosine to the query; rank ``/ (M - 1)`` (0 = nearest); cosine minus the nearest's;
max cosine to a chosen demonstration (redundancy); the similarity-weighted vote share of its label among the
``M`` neighbours; whether its label is the vote's top; the LM's zero-shot probability of its label for the
query; whether that is the zero-shot top label; the LM's zero-shot probability of its own gold label
(difficulty); the share of chosen demonstrations with its label; that share after adding it; log length
ratio to the query; whether its label equals the last chosen one's."""

_LM_STATE = {"zs_conf", "vote_zs_agree", "pool_zs_acc"}
_LM_CANDIDATE = {"zs_prob", "is_zs_top", "own_gold"}
_LABEL_STATE = {"vote_top", "vote_zs_agree", "nbr_labels", "chosen_entropy", "chosen_vote_top", "zs_conf",
                "pool_zs_acc", "pool_vote_acc"}
_LABEL_CANDIDATE = {"vote_share", "is_vote_top", "zs_prob", "is_zs_top", "own_gold", "chosen_share",
                    "balance_after", "same_as_last"}

FEATURE_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "full": (_BASE_STATE, CANDIDATE_FEATURES),
    "full_pool": (STATE_FEATURES, CANDIDATE_FEATURES),
    "no_lm": (tuple(f for f in _BASE_STATE if f not in _LM_STATE),
              tuple(f for f in CANDIDATE_FEATURES if f not in _LM_CANDIDATE)),
    "no_labels": (tuple(f for f in _BASE_STATE if f not in _LABEL_STATE),
                  tuple(f for f in CANDIDATE_FEATURES if f not in _LABEL_CANDIDATE)),
}
"""Named feature sets: ``(state names, candidate names)``. ``full`` reads every per-query feature;
``full_pool`` adds the pool's two reliability figures (the task-level facts of :func:`pool_reliability`);
``no_lm`` needs no LM row before the prompt (no zero-shot features); ``no_labels`` reads no label
(similarity, redundancy, length, step only)."""

# Below any cosine similarity: a pool item whose text equals the query's is a neighbour only when nothing else is left.
SAME_TEXT_SIM = -2.0

LAZY_LM_MIN_ROWS = 1000
"""A pool of more rows than this is scored zero-shot lazily (see :meth:`PoolTable.score_rows`); a smaller one
all at once, as its :func:`pool_reliability` sample is the whole pool anyway."""

_NO_ROWS = np.zeros(0, dtype=np.int64)


def check_feature_set(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``(state, candidate)`` feature names of set ``name``; one-line error for an unknown one."""
    if name not in FEATURE_SETS:
        raise ConfigError(f"unknown per-query feature set {name!r}; expected one of {sorted(FEATURE_SETS)}")
    return FEATURE_SETS[name]


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


def features(table: PoolTable, ctx: QueryContexts, i: int, chosen: Sequence[int], k: int, *,
             with_pool: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """All state and candidate features of query ``i`` after ``chosen`` (candidate positions, in order).

    ``with_pool=False`` leaves the two pool-reliability state features at ``1 / L`` without computing them
    (for feature sets that do not read them).

    Returns:
        ``(state float32 (len(STATE_FEATURES),), candidates float32 (M, len(CANDIDATE_FEATURES)))``.
    """
    m, n_labels = ctx.m, table.n_labels
    nbr, sims = ctx.nbr[i], ctx.sims[i]
    y = table.labels[nbr]  # (M,)
    vote = vote_shares(table, ctx, i)
    vote_top, zs = int(np.argmax(vote)), ctx.zs[i]
    zs_top = int(np.argmax(zs))
    t = len(chosen)
    ch = np.asarray(list(chosen), dtype=np.int64)
    counts = np.bincount(y[ch], minlength=n_labels).astype(np.float64) if t else np.zeros(n_labels)
    if t:
        p = counts[counts > 0] / t
        entropy = float(-(p * np.log(p)).sum() / np.log(n_labels)) if n_labels > 1 else 0.0
        emb = table.emb[nbr]
        redundancy = (emb @ emb[ch].T).max(axis=1).astype(np.float64)
        last = int(y[ch[-1]])
    else:
        entropy, redundancy, last = 0.0, np.zeros(m), -1
    own = table.own_gold[nbr]
    state = np.array([
        t / k, 1.0 / n_labels, float(zs.max()), float(vote.max()), float(vote_top == zs_top),
        len(np.unique(y)) / n_labels, entropy, float(sims[ch].mean()) if t else 0.0,
        counts[vote_top] / t if t else 0.0,
        *np.nan_to_num(ctx.pool_acc if with_pool else np.full(2, np.nan), nan=1.0 / n_labels),
    ], dtype=np.float32)
    cands = np.stack([
        sims, np.arange(m) / max(m - 1, 1), sims - sims[0], redundancy, vote[y], (y == vote_top).astype(float),
        zs[y], (y == zs_top).astype(float), np.nan_to_num(own, nan=0.5),
        counts[y] / t if t else np.zeros(m), (counts[y] + 1) / (t + 1),
        np.log((table.lengths[nbr] + 1) / (ctx.qlen[i] + 1)), (y == last).astype(float),
    ], axis=1).astype(np.float32)
    return state, cands


@dataclass(frozen=True)
class FeatureView:
    """The columns of one named feature set (:data:`FEATURE_SETS`).

    Attributes:
        name: The set's name.
        state_cols: ``int (S,)`` indices into :data:`STATE_FEATURES`.
        cand_cols: ``int (C,)`` indices into :data:`CANDIDATE_FEATURES`.
    """

    name: str
    state_cols: np.ndarray
    cand_cols: np.ndarray

    @classmethod
    def of(cls, name: str) -> FeatureView:
        """The view of set ``name`` (one-line error for an unknown one)."""
        s, c = check_feature_set(name)
        return cls(name, np.array([STATE_FEATURES.index(f) for f in s]),
                   np.array([CANDIDATE_FEATURES.index(f) for f in c]))

    @property
    def needs_lm(self) -> bool:
        """Whether the set reads a zero-shot LM feature (the table and contexts need a scorer)."""
        s, c = FEATURE_SETS[self.name]
        return bool(_LM_STATE & set(s) or _LM_CANDIDATE & set(c))

    @property
    def reads_pool(self) -> bool:
        """Whether the set reads a pool-reliability feature (:func:`pool_reliability`)."""
        return bool(set(FEATURE_SETS[self.name][0]) & set(_POOL_STATE))

    @property
    def dims(self) -> tuple[int, int]:
        """``(S, C)``."""
        return len(self.state_cols), len(self.cand_cols)

    def __call__(self, table: PoolTable, ctx: QueryContexts, i: int, chosen: Sequence[int], k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`features` restricted to this set: ``(float32 (S,), float32 (M, C))``."""
        state, cands = features(table, ctx, i, chosen, k, with_pool=self.reads_pool)
        return state[self.state_cols], cands[:, self.cand_cols]


def reward_of(logprobs: np.ndarray, gold: np.ndarray, kind: str) -> np.ndarray:
    """Per-query terminal rewards from the final prompts' label log-probs.

    Args:
        logprobs: ``(Q, L)`` (calibrated) label log-probs of each query under its final prompt.
        gold: ``int (Q,)`` gold label ids.
        kind: ``"correct"`` (1.0 if the top label is gold, else 0.0) or ``"margin"`` (the gold label's
            normalised log-prob minus the best other label's, clipped to ``[-3, 3]`` and divided by 3).

    Returns:
        ``float64 (Q,)``.
    """
    lp = normalise(np.asarray(logprobs, dtype=np.float64))
    rows = np.arange(lp.shape[0])
    if kind == "correct":
        return (lp.argmax(axis=1) == gold).astype(np.float64)
    if kind == "margin":
        other = lp.copy()
        other[rows, gold] = -np.inf
        return np.clip(lp[rows, gold] - other.max(axis=1), -3.0, 3.0) / 3.0
    raise ConfigError(f"unknown per-query reward {kind!r}; expected 'correct' or 'margin'")


PER_QUERY_REWARDS: tuple[str, ...] = ("correct", "margin")
"""Terminal rewards of a per-query episode (see :func:`reward_of`)."""
