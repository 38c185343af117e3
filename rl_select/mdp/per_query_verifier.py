"""The per-query verifier: a learned value of a complete prompt that also reads the LM's answer under it.

The critic mode (:func:`~rl_select.mdp.per_query_policy.critic_orders`) values a query's candidate prompts
before the LM has seen them. The verifier values them after: each candidate prompt is scored for the query
(one LM row each, calibrated like training), and ``P(the LM's answer under this prompt is right)`` is
predicted from the terminal state's features (the state before the last demonstration and that
demonstration's features, as the Q-network reads them) and :data:`RESPONSE_FEATURES`, task-agnostic facts
about the answer: how sure it is, and whether it agrees with the neighbourhood's vote, the LM's zero-shot
answer and the demonstrations' labels. No label word, no task id. It is trained offline on the logged
episodes (their final prompts' answers, labelled by the gold label: the ``correct`` reward) and reads no
label at selection.

:func:`choose` turns the candidates' ``P(correct)`` into one candidate per query: the answer whose
candidates' ``P(correct)`` add up to the most, then that answer's most trusted candidate.

Shapes: ``C`` candidate prompts, ``Q`` queries, ``L`` labels, ``D`` input width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rl_select.lm.calibration import normalise
from rl_select.mdp.per_query import CANDIDATE_FEATURES, STATE_FEATURES, FeatureView
from rl_select.mdp.per_query_table import PoolTable, QueryContexts, vote_shares
from rl_select.mdp.qnet import mlp
from rl_select.types import is_int

RESPONSE_FEATURES: tuple[str, ...] = (
    "top_prob", "top_margin", "entropy", "vote_share_of_answer", "answer_is_vote_top", "zs_prob_of_answer",
    "answer_is_zs_top", "demo_share_of_answer", "last_demo_is_answer", "inv_labels", "vote_top", "zs_conf",
)
"""What the verifier reads of the LM's (calibrated) answer under a prompt: its top probability, the top two's
gap, its entropy ``/ log L``; the neighbourhood vote's share of the answer and whether the answer is the vote's
top; the LM's zero-shot probability of the answer and whether it is the zero-shot top; the share of the
prompt's demonstrations carrying the answer and whether the last (most similar) one does; ``1 / L``; the
vote's top share; the zero-shot top probability."""


def response_features(table: PoolTable, ctx: QueryContexts, i: int, order: Sequence[int],
                      logprobs: np.ndarray) -> tuple[np.ndarray, int]:
    """:data:`RESPONSE_FEATURES` of query ``i``'s answer under the prompt ``order``, and the answer's label id.

    Args:
        table, ctx: The pool's table and the queries' neighbourhoods.
        i: The query.
        order: The prompt's candidate positions (into the query's ``M`` neighbours), prompt order.
        logprobs: The query's label log-probs under that prompt, ``(L,)`` (calibrated if the scorer is).

    Returns:
        ``(float32 (len(RESPONSE_FEATURES),), answer)``.
    """
    p = np.exp(normalise(np.asarray(logprobs, dtype=np.float64)[None]))[0]
    n_labels = len(p)
    answer = int(np.argmax(p))
    top = np.sort(p)[::-1]
    vote, zs = vote_shares(table, ctx, i), ctx.zs[i]
    y = table.labels[ctx.nbr[i][np.asarray(list(order), dtype=np.int64)]]
    entropy = float(-(p * np.log(np.clip(p, 1e-12, 1.0))).sum() / np.log(n_labels)) if n_labels > 1 else 0.0
    feats = np.array([
        top[0], top[0] - (top[1] if n_labels > 1 else 0.0), entropy, vote[answer],
        float(answer == int(np.argmax(vote))),
        zs[answer], float(answer == int(np.argmax(zs))), float(np.mean(y == answer)) if len(y) else 0.0,
        float(len(y) > 0 and y[-1] == answer), 1.0 / n_labels, float(vote.max()), float(zs.max()),
    ], dtype=np.float32)
    return feats, answer


def verifier_inputs(view: FeatureView, table: PoolTable, ctx: QueryContexts, orders: Sequence[Sequence[int]],
                    logprobs: np.ndarray, k: int, *, rows: Sequence[int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The verifier's inputs for query ``rows[j]`` under prompt ``orders[j]`` with answer ``logprobs[j]``.

    Args:
        view: The policy's feature set (the terminal state's features, as the Q-network reads them).
        table, ctx: The pool's table and the queries' neighbourhoods.
        orders: One prompt per row (``k`` candidate positions each).
        logprobs: ``(n, L)`` the answers.
        k: Demonstrations per prompt.
        rows: The query of each row (indices into ``ctx``); ``range(n)`` by default.

    Returns:
        ``(float32 (n, D), int64 (n,) answers)`` with ``D = S + C + len(RESPONSE_FEATURES)``.
    """
    rows = range(len(orders)) if rows is None else rows
    xs, answers = [], []
    for i, order, lp in zip(rows, orders, logprobs):
        s, c = view(table, ctx, int(i), list(order[:-1]), k)
        r, answer = response_features(table, ctx, int(i), order, lp)
        xs.append(np.concatenate([s, c[int(order[-1])], r]))
        answers.append(answer)
    width = view.dims[0] + view.dims[1] + len(RESPONSE_FEATURES)
    return (np.stack(xs).astype(np.float32) if xs else np.zeros((0, width), np.float32),
            np.asarray(answers, dtype=np.int64))


def input_names(view: FeatureView) -> list[str]:
    """The names of the verifier's ``D`` input columns for feature set ``view``."""
    return ([STATE_FEATURES[c] for c in view.state_cols] + [f"last.{CANDIDATE_FEATURES[c]}" for c in view.cand_cols]
            + [f"answer.{f}" for f in RESPONSE_FEATURES])


class Verifier(nn.Module):
    """``P(correct | x)``: the mean of ``members`` MLPs' sigmoids on standardised inputs.

    Args:
        in_dim: ``D``.
        hidden: Hidden widths of each member.
        members: How many independently trained MLPs are averaged.

    Attributes:
        mean, scale: ``(D,)`` buffers, the training inputs' mean and standard deviation.
        nets: The members.
    """

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (64, 64), members: int = 3) -> None:
        super().__init__()
        if not is_int(in_dim) or in_dim < 1 or not is_int(members) or members < 1:
            raise ValueError(f"in_dim={in_dim!r}, members={members!r}; expected positive integers")
        if any(not is_int(h) or h < 1 for h in hidden):
            raise ValueError(f"hidden={hidden!r}: every layer width must be a positive integer")
        self.in_dim, self.hidden, self.members = int(in_dim), tuple(int(h) for h in hidden), int(members)
        self.register_buffer("mean", torch.zeros(self.in_dim))
        self.register_buffer("scale", torch.ones(self.in_dim))
        self.nets = nn.ModuleList(mlp(self.in_dim, self.hidden, 1) for _ in range(self.members))

    def logits(self, x: Tensor) -> Tensor:
        """Each member's logit, ``(members, B)``, for inputs ``(B, D)``."""
        z = (x - self.mean) / self.scale
        return torch.stack([net(z).squeeze(-1) for net in self.nets])

    def forward(self, x: Tensor) -> Tensor:
        """``P(correct)``, ``(B,)``."""
        return torch.sigmoid(self.logits(x)).mean(dim=0)

    def p_correct(self, x: np.ndarray) -> np.ndarray:
        """``P(correct)`` for inputs ``float (B, D)``, ``float64 (B,)``."""
        self.eval()
        with torch.no_grad():
            return self(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy().astype(np.float64)

    def document(self) -> dict[str, Any]:
        """The architecture that rebuilds this verifier (its weights are the artifact's ``verifier.*`` tensors)."""
        return {"class": "Verifier", "in_dim": self.in_dim, "hidden": list(self.hidden), "members": self.members}

    @classmethod
    def from_document(cls, arch: Mapping[str, Any]) -> Verifier:
        """An untrained verifier of the architecture ``arch`` (:meth:`document`); ``ValueError`` if malformed."""
        ok = isinstance(arch, Mapping) and arch.get("class") == "Verifier" and isinstance(arch.get("hidden"), list)
        if not ok:
            raise ValueError(f"verifier architecture {arch!r:.200} is malformed; expected {{'class': 'Verifier', "
                             "'in_dim': int, 'hidden': [int, ...], 'members': int}")
        return cls(arch.get("in_dim"), tuple(arch["hidden"]), arch.get("members"))


def label_support(p_correct: np.ndarray, answers: np.ndarray, n_labels: int) -> np.ndarray:
    """``(Q, L)``: per query and label, the ``P(correct)`` ``(C, Q)`` of the candidates whose answer ``int (C, Q)``
    is that label, summed."""
    n_cands, n_queries = p_correct.shape
    support = np.zeros((n_queries, n_labels))
    for c in range(n_cands):
        np.add.at(support, (np.arange(n_queries), answers[c]), p_correct[c])
    return support


def choose(p_correct: np.ndarray, answers: np.ndarray, n_labels: int) -> np.ndarray:
    """One candidate per query: the answer whose candidates' ``P(correct)`` sum highest, then its best candidate.

    Args:
        p_correct: ``(C, Q)`` each candidate prompt's ``P(correct)``.
        answers: ``int (C, Q)`` the LM's answer under each.
        n_labels: ``L``.

    Returns:
        ``int64 (Q,)`` the chosen candidate of each query (ties: the first).
    """
    best_answer = label_support(p_correct, answers, n_labels).argmax(axis=1)
    score = np.where(answers == best_answer[None], p_correct, -np.inf)
    return score.argmax(axis=0).astype(np.int64)
