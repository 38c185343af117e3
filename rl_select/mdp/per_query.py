"""Per-query episodes: each query's M nearest pool examples, and the task-agnostic features the Q-network reads.

A per-query episode builds one query's prompt from that query's ``M`` nearest pool examples (cosine of
sentence embeddings, most similar first); the episode rule (:class:`~rl_select.mdp.episode.EpisodeRule`
with ``n_candidates = M``) is the same one the fixed-prompt episodes follow. This module holds what the
env, the rollout collection, the exported policy and the neighbour rules share:

* :class:`PoolTable` — one row per pool example: embedding, label id, the LM's calibrated zero-shot
  probability of its own gold label (its "difficulty", one cached LM row per pool example), length;
* :class:`QueryContexts` — per query: its ``M`` neighbours, their similarities, and the LM's calibrated
  zero-shot label distribution for the query (one cached LM row per query);
* :func:`features` — the state and per-candidate features of one query after ``chosen``. They mean the
  same on any classification task: similarities, ranks, redundancy, the candidate's label against the
  labels chosen, the neighbourhood's vote and the LM's zero-shot prediction, its own zero-shot
  difficulty, step, length. No task identity, no label words, no label index.

Shapes: ``P`` pool rows, ``Q`` queries, ``M`` neighbours, ``L`` labels, ``S`` / ``C`` feature widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rl_select.embeddings import Embedder, embed_examples, example_text
from rl_select.errors import ConfigError, SelectionError
from rl_select.lm.base import Scorer
from rl_select.lm.calibration import normalise
from rl_select.metrics import label_ids
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
            (NaN where the table was built without the LM).
        zs_correct: ``float64 (P,)`` 1.0 where the LM's zero-shot top label is the example's gold label
            (NaN without the LM).
        lengths: ``float64 (P,)`` characters of each example's input text.
        n_labels: ``L``.
    """

    pool: tuple[Example, ...]
    emb: np.ndarray
    labels: np.ndarray
    own_gold: np.ndarray
    zs_correct: np.ndarray
    lengths: np.ndarray
    n_labels: int

    @classmethod
    def build(cls, pool: Sequence[Example], *, labels: Sequence[str], embedder: Embedder,
              scorer: Scorer | None = None) -> PoolTable:
        """Embed the pool and (with a scorer) score each example zero-shot: ``P`` LM rows, cached.

        Raises:
            SelectionError: An empty pool, or a pool label that is not one of ``labels``.
        """
        pool = tuple(pool)
        if not pool:
            raise SelectionError("the pool is empty; expected at least one labelled example")
        y = label_ids(labels, pool)
        if scorer is not None:
            zs = zero_shot_probs(scorer, pool)
            own, right = zs[np.arange(len(pool)), y], (zs.argmax(axis=1) == y).astype(np.float64)
        else:
            own, right = np.full(len(pool), np.nan), np.full(len(pool), np.nan)
        return cls(pool=pool, emb=embed_examples(embedder, pool).astype(np.float32), labels=y, own_gold=own,
                   zs_correct=right,
                   lengths=np.array([len(example_text(e)) for e in pool], dtype=np.float64), n_labels=len(labels))


@dataclass(frozen=True)
class QueryContexts:
    """Each query's neighbourhood and zero-shot prediction.

    Attributes:
        queries: ``Q`` queries.
        nbr: ``int64 (Q, M)`` pool indices of each query's ``M`` nearest, most similar first.
        sims: ``float64 (Q, M)`` their cosine similarities.
        zs: ``float64 (Q, L)`` the LM's zero-shot label distribution (uniform without the LM).
        qlen: ``float64 (Q,)`` characters of each query's input text.
        pool_acc: ``float64 (2,)`` :func:`pool_reliability` of the table at this ``M``.
    """

    queries: tuple[Example, ...]
    nbr: np.ndarray
    sims: np.ndarray
    zs: np.ndarray
    qlen: np.ndarray
    pool_acc: np.ndarray

    @property
    def m(self) -> int:
        """``M``, neighbours per query."""
        return int(self.nbr.shape[1])

    @classmethod
    def build(cls, table: PoolTable, queries: Sequence[Example], *, m: int, embedder: Embedder,
              scorer: Scorer | None = None, exclude_same_text: bool = True) -> QueryContexts:
        """The ``m`` nearest pool examples of every query (brute-force cosine) and, with a scorer, one
        zero-shot LM row per query.

        Raises:
            SelectionError: ``m`` is not an integer in ``1..P``.
        """
        n_pool = len(table.pool)
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= n_pool:
            raise SelectionError(f"M={m!r} neighbours per query; expected an integer in 1..{n_pool} (the pool size)")
        queries = tuple(queries)
        q_emb = embed_examples(embedder, queries).astype(np.float32) if queries else np.zeros((0, table.emb.shape[1]))
        sims = (q_emb @ table.emb.T).astype(np.float64)  # (Q, P)
        if exclude_same_text and queries:
            by_text: dict[str, list[int]] = {}
            for j, e in enumerate(table.pool):
                by_text.setdefault(example_text(e), []).append(j)
            for i, q in enumerate(queries):
                for j in by_text.get(example_text(q), ()):
                    sims[i, j] = SAME_TEXT_SIM
        nbr = np.argsort(-sims, axis=1, kind="stable")[:, :m]
        zs = (zero_shot_probs(scorer, queries) if scorer is not None
              else np.full((len(queries), table.n_labels), 1.0 / table.n_labels))
        return cls(queries=queries, nbr=nbr.astype(np.int64), sims=np.take_along_axis(sims, nbr, axis=1), zs=zs,
                   qlen=np.array([len(example_text(q)) for q in queries], dtype=np.float64),
                   pool_acc=pool_reliability(table, m))

    def demos(self, table: PoolTable, i: int, chosen: Sequence[int]) -> list[Example]:
        """Query ``i``'s demonstrations for candidate positions ``chosen``, in prompt order."""
        return [table.pool[int(self.nbr[i, j])] for j in chosen]


def pool_reliability(table: PoolTable, m: int, *, max_rows: int = 1000, chunk: int = 256) -> np.ndarray:
    """How far each signal can be trusted on this task, measured on the labelled pool: ``float64 (2,)``.

    ``[0]``: the LM's zero-shot accuracy over the pool (NaN without the LM); ``[1]``: the leave-one-out
    accuracy of the similarity-weighted vote of a pool example's ``m`` nearest other pool examples (rows
    with the same text left out), over at most ``max_rows`` evenly spaced pool rows. Reads pool labels
    only, never a validation label; no LM row.
    """
    n = len(table.pool)
    zs_acc = float(np.mean(table.zs_correct)) if n and not np.isnan(table.zs_correct).any() else np.nan
    m = min(m, n - 1)
    if m < 1:
        return np.array([zs_acc, np.nan])
    text_id: dict[str, int] = {}
    tid = np.array([text_id.setdefault(example_text(e), len(text_id)) for e in table.pool])
    probe = np.unique(np.linspace(0, n - 1, min(n, max_rows)).round().astype(np.int64))
    right = []
    for lo in range(0, len(probe), chunk):
        rows = probe[lo:lo + chunk]
        sims = (table.emb[rows] @ table.emb.T).astype(np.float64)  # (r, P)
        sims[tid[rows][:, None] == tid[None, :]] = -np.inf
        nbr = np.argsort(-sims, axis=1, kind="stable")[:, :m]
        w = np.clip(np.take_along_axis(sims, nbr, axis=1), 1e-6, None)
        votes = np.zeros((len(rows), table.n_labels))
        np.add.at(votes, (np.repeat(np.arange(len(rows)), m), table.labels[nbr].ravel()), w.ravel())
        right.append(votes.argmax(axis=1) == table.labels[rows])
    return np.array([zs_acc, float(np.mean(np.concatenate(right)))])


def vote_shares(table: PoolTable, ctx: QueryContexts, i: int) -> np.ndarray:
    """Similarity-weighted label shares of query ``i``'s neighbours, ``(L,)``, summing to 1."""
    w = np.clip(ctx.sims[i], 1e-6, None)
    shares = np.bincount(table.labels[ctx.nbr[i]], weights=w, minlength=table.n_labels)
    return shares / shares.sum()


def features(table: PoolTable, ctx: QueryContexts, i: int, chosen: Sequence[int], k: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """All state and candidate features of query ``i`` after ``chosen`` (candidate positions, in order).

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
        counts[vote_top] / t if t else 0.0, *np.nan_to_num(ctx.pool_acc, nan=1.0 / n_labels),
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
    def dims(self) -> tuple[int, int]:
        """``(S, C)``."""
        return len(self.state_cols), len(self.cand_cols)

    def __call__(self, table: PoolTable, ctx: QueryContexts, i: int, chosen: Sequence[int], k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`features` restricted to this set: ``(float32 (S,), float32 (M, C))``."""
        state, cands = features(table, ctx, i, chosen, k)
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
