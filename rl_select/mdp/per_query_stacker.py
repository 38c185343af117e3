"""The per-query answer stacker: a learned vote over a query's answered candidate prompts.

The verify mode (:func:`~rl_select.mdp.per_query_policy.verify_orders`) has every candidate prompt answered by
the LM. The verifier values each answer on its own; the stacker scores each *label* of the query from all the
answers together, plus the two label-free signals the pool gives without a prompt: the neighbourhood vote and the
LM's zero-shot answer. A label's score is ``label_features(...) @ weight`` (:data:`STACK_FEATURES`: the same
weights for every label, candidate and task; no label word, no task id, any number of labels), plus
``log(support + VOTE_FLOOR)`` where ``support`` is the verifier's ``P(correct)`` summed over the candidates
giving that label. :func:`stacked_choice` keeps, among the labels some candidate gives, the best-scored label's
most confident prompt: the prompt file records that one prompt, and the LM's answer under it is what is judged.

The weights are fitted (:func:`agents.per_query.train_stacker`) by softmax cross-entropy over labels on training
tasks' queries whose four hand-written prompts (:data:`~rl_select.mdp.neighbour_orders.ORDERS`) were answered by
the LM. Chosen on validation rows over the stacker alone and the verifier alone (``benchmarks/answer_stacker.py``).

Shapes: ``C`` candidate prompts, ``Q`` queries, ``L`` labels, ``F = len(STACK_FEATURES)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from rl_select.lm.calibration import normalise
from rl_select.mdp.per_query_table import PoolTable, QueryContexts, vote_shares
from rl_select.mdp.per_query_verifier import label_support

STACK_FEATURES: tuple[str, ...] = (
    "mean_logprob", "answer_share", "confident_answer_share", "log_vote", "vote_top", "log_zero_shot",
    "zero_shot_top",
)
"""What the stacker reads of each label ``y`` of a query: the candidates' mean (calibrated, normalised)
log-probability of ``y``; the share of candidates answering ``y``; that share weighted by each answer's top
probability; ``log(vote(y) + VOTE_FLOOR)`` of the neighbourhood vote and whether ``y`` is the vote's top; the
zero-shot log-probability of ``y`` and whether ``y`` is the zero-shot top. Means over candidates make it
independent of ``C``."""

VOTE_FLOOR = 0.05
"""Added to a share before its log (the vote's, the verifier's support): a label nobody backs is unlikely, not
impossible."""


def label_features(logprobs: np.ndarray, vote: np.ndarray, zero_shot: np.ndarray) -> np.ndarray:
    """:data:`STACK_FEATURES` of every label of every query.

    Args:
        logprobs: ``(C, Q, L)`` each candidate prompt's label log-probs (calibrated if the scorer is; normalised
            here).
        vote: ``(Q, L)`` the neighbourhood vote's label shares.
        zero_shot: ``(Q, L)`` the LM's zero-shot label probabilities (normalised here).

    Returns:
        ``float32 (Q, L, F)``.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.ndim != 3 or lp.shape[0] < 1 or np.shape(vote) != lp.shape[1:] or np.shape(zero_shot) != lp.shape[1:]:
        raise ValueError(f"logprobs {lp.shape}, vote {np.shape(vote)}, zero_shot {np.shape(zero_shot)}; expected "
                         "(C, Q, L) with C >= 1, (Q, L) and (Q, L)")
    lp = normalise(lp)
    p = np.exp(lp)
    eye = np.eye(lp.shape[-1])
    answered = eye[p.argmax(-1)]                                     # (C, Q, L)
    zs = np.clip(np.asarray(zero_shot, dtype=np.float64), 1e-12, None)
    zs = zs / zs.sum(-1, keepdims=True)
    vote = np.asarray(vote, dtype=np.float64)
    cols = [lp.mean(0), answered.mean(0), (answered * p.max(-1, keepdims=True)).mean(0),
            np.log(vote + VOTE_FLOOR), eye[vote.argmax(-1)], np.log(np.clip(zs, 1e-6, None)), eye[zs.argmax(-1)]]
    return np.stack(cols, axis=-1).astype(np.float32)


def query_signals(table: PoolTable, ctx: QueryContexts, rows: Sequence[int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(vote (Q, L), zero-shot (Q, L))`` of the queries ``rows`` of ``ctx`` (default: all): the label-free
    signals the stacker reads."""
    rows = range(len(ctx.queries)) if rows is None else rows
    n_l = table.n_labels
    if len(rows) == 0:
        return np.zeros((0, n_l)), np.zeros((0, n_l))
    return (np.stack([vote_shares(table, ctx, i) for i in rows]),
            np.stack([np.asarray(ctx.zs[i], dtype=np.float64) for i in rows]))


def choose_by_label(scores: np.ndarray, logprobs: np.ndarray) -> np.ndarray:
    """One candidate per query: the best-scored label that some candidate answers, then its most confident one.

    Args:
        scores: ``(Q, L)`` label scores.
        logprobs: ``(C, Q, L)`` the candidates' answers.

    Returns:
        ``int64 (Q,)`` the kept candidate of each query (ties: the first).
    """
    p = np.exp(normalise(np.asarray(logprobs, dtype=np.float64)))
    answers, conf = p.argmax(-1), p.max(-1)                          # (C, Q)
    given = np.zeros(np.shape(scores), dtype=bool)
    for c in range(answers.shape[0]):
        given[np.arange(answers.shape[1]), answers[c]] = True
    best = np.where(given, scores, -np.inf).argmax(-1)
    return np.where(answers == best[None], conf, -np.inf).argmax(0).astype(np.int64)


class AnswerStacker(nn.Module):
    """The stacker's weights: a label's score is ``label_features(...) @ weight``.

    Attributes:
        weight: ``(F,)`` buffer, one weight per :data:`STACK_FEATURES` entry.
    """

    def __init__(self, weight: np.ndarray | None = None) -> None:
        super().__init__()
        w = np.zeros(len(STACK_FEATURES)) if weight is None else np.asarray(weight, dtype=np.float64)
        if w.shape != (len(STACK_FEATURES),) or not np.isfinite(w).all():
            raise ValueError(f"stacker weights of shape {w.shape}; expected {len(STACK_FEATURES)} finite numbers, "
                             f"one per {list(STACK_FEATURES)}")
        self.register_buffer("weight", torch.as_tensor(w, dtype=torch.float32))

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Label scores ``float64 (Q, L)`` for features ``(Q, L, F)``."""
        return np.asarray(x, dtype=np.float64) @ self.weight.numpy().astype(np.float64)

    def named_weights(self) -> dict[str, float]:
        """``{feature: weight}``."""
        return {n: round(float(w), 4) for n, w in zip(STACK_FEATURES, self.weight.tolist())}

    def document(self) -> dict[str, Any]:
        """What rebuilds this stacker (its weights are the artifact's ``stacker.weight`` tensor)."""
        return {"class": "AnswerStacker", "features": list(STACK_FEATURES)}

    @classmethod
    def from_document(cls, entry: Mapping[str, Any]) -> AnswerStacker:
        """An untrained stacker for ``entry`` (:meth:`document`); ``ValueError`` if it reads other features."""
        ok = isinstance(entry, Mapping) and entry.get("class") == "AnswerStacker"
        if not ok or list(entry.get("features") or []) != list(STACK_FEATURES):
            raise ValueError(f"stacker entry {entry!r:.200} is not this version's; expected class 'AnswerStacker' "
                             f"reading {list(STACK_FEATURES)}")
        return cls()


def stacked_choice(stacker: AnswerStacker, p_correct: np.ndarray, logprobs: np.ndarray, vote: np.ndarray,
                   zero_shot: np.ndarray) -> np.ndarray:
    """The verify mode's choice with a stacker: per query, the prompt :func:`choose_by_label` keeps for the label
    scores ``stacker + log(support + VOTE_FLOOR)``.

    Args:
        stacker: The policy's stacker.
        p_correct: ``(C, Q)`` the verifier's ``P(correct)`` of each answered prompt.
        logprobs: ``(C, Q, L)`` the answers.
        vote, zero_shot: ``(Q, L)`` each (:func:`query_signals`).

    Returns:
        ``int64 (Q,)`` the kept candidate of each query.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    support = label_support(p_correct, lp.argmax(-1), lp.shape[-1])
    scores = stacker.scores(label_features(lp, vote, zero_shot)) + np.log(support + VOTE_FLOOR)
    return choose_by_label(scores, lp)
