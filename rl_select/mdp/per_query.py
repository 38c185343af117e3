"""Per-query episodes: the task-agnostic features the Q-network reads, their named sets, and the reward.

A per-query episode builds one query's prompt from that query's ``M`` nearest pool examples; the episode rule
(:class:`~rl_select.mdp.episode.EpisodeRule` with ``n_candidates = M``) is the same one the fixed-prompt
episodes follow. The neighbourhoods (:class:`PoolTable`, :class:`QueryContexts`, :class:`TableMemo`,
:func:`vote_shares`, :func:`pool_reliability`) live in :mod:`rl_select.mdp.per_query_table` and are
importable from here.

* :func:`features` — the state and per-candidate features of one query after ``chosen``. They mean the
  same on any classification task: similarities, ranks, redundancy, the candidate's label against the
  labels chosen, the neighbourhood's vote and the LM's zero-shot prediction, its own zero-shot
  difficulty, step, length. No task identity, no label words, no label index.
* :class:`FeatureView` — one named set's columns (:data:`FEATURE_SETS`); :func:`reward_of` — the terminal
  reward.

Shapes: ``P`` pool rows, ``Q`` queries, ``M`` neighbours, ``L`` labels, ``S`` / ``C`` feature widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rl_select.errors import ConfigError
from rl_select.lm.calibration import normalise
from rl_select.mdp.per_query_table import (
    LAZY_LM_MIN_ROWS,
    SAME_TEXT_SIM,
    PoolTable,
    QueryContexts,
    TableMemo,
    pool_reliability,
    vote_shares,
    zero_shot_probs,
)

__all__ = [
    "CANDIDATE_FEATURES", "FEATURE_SETS", "GAIN_REWARD", "LAZY_LM_MIN_ROWS", "PER_QUERY_REWARDS", "SAME_TEXT_SIM",
    "STATE_FEATURES", "FeatureView", "PoolTable", "QueryContexts", "TableMemo", "check_feature_set", "features",
    "pool_reliability", "reward_of", "step_gain", "vote_shares", "zero_shot_probs",
]

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


def check_feature_set(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The ``(state, candidate)`` feature names of set ``name``; one-line error for an unknown one."""
    if name not in FEATURE_SETS:
        raise ConfigError(f"unknown per-query feature set {name!r}; expected one of {sorted(FEATURE_SETS)}")
    return FEATURE_SETS[name]


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

GAIN_REWARD = "gain"
"""The per-step variant of ``margin`` (:func:`step_gain`), offered by the env: every step scores the prompt so far
(``k + 1`` LM rows an episode, the zero-shot one included, against one for a terminal reward)."""


def step_gain(before: np.ndarray, after: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per-step rewards: how much a step moved each query's ``margin`` reward (:func:`reward_of`).

    An episode's gains telescope: they sum to its final prompt's margin minus the zero-shot prompt's.

    Args:
        before: ``(Q, L)`` label log-probs under the prompt before the step (zero-shot before the first).
        after: ``(Q, L)`` the same under the prompt after it.
        gold: ``int (Q,)`` gold label ids.

    Returns:
        ``float64 (Q,)`` in ``[-2, 2]``.
    """
    return reward_of(after, gold, "margin") - reward_of(before, gold, "margin")
