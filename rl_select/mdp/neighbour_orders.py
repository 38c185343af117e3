"""Hand-written per-query orders over a query's ``M`` nearest pool examples (no LM, no training).

Pure functions of :class:`~rl_select.mdp.per_query_table.PoolTable` and
:class:`~rl_select.mdp.per_query_table.QueryContexts`, shared by the neighbour-rule selectors
(:mod:`rl_select.selectors.neighbour_rules`) and the per-query policy's critic mode
(:func:`rl_select.mdp.per_query_policy.critic_orders`), which values them. Each returns neighbour positions
(0 = nearest) in prompt order, the most similar chosen demonstration last, next to the query.

* ``knn``: the ``k`` nearest;
* ``knn_majority``: the ``k`` most similar neighbours carrying the neighbourhood's (similarity-weighted)
  majority label, topped up with the nearest others when fewer than ``k`` carry it;
* ``knn_balanced``: labels in turn, most voted label first, each time its most similar unused neighbour;
* ``knn_mmr``: maximal marginal relevance (Carbonell & Goldstein 1998): greedily the neighbour with the best
  ``lam * sim(query) - (1 - lam) * max sim(chosen)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rl_select.mdp.per_query_table import PoolTable, QueryContexts, vote_shares

Order = Callable[[PoolTable, QueryContexts, int, int], list[int]]
"""``order(table, ctx, i, k)``: query ``i``'s ``k`` neighbour positions in prompt order."""


def nearest_last(positions: list[int]) -> list[int]:
    """Positions sorted so the nearest (smallest position) sits last."""
    return sorted(positions, reverse=True)


def knn_order(table: PoolTable, ctx: QueryContexts, i: int, k: int) -> list[int]:
    """The ``k`` nearest, the nearest last."""
    return list(range(k))[::-1]


def majority_order(table: PoolTable, ctx: QueryContexts, i: int, k: int) -> list[int]:
    """The ``k`` most similar neighbours with the vote's top label (topped up with the nearest others)."""
    top = int(np.argmax(vote_shares(table, ctx, i)))
    y = table.labels[ctx.nbr[i]]
    same = [j for j in range(ctx.m) if y[j] == top]
    other = [j for j in range(ctx.m) if y[j] != top]
    return nearest_last((same + other)[:k])


def balanced_order(table: PoolTable, ctx: QueryContexts, i: int, k: int) -> list[int]:
    """Labels in turn (most voted first), each its most similar unused neighbour."""
    vote = vote_shares(table, ctx, i)
    y = table.labels[ctx.nbr[i]]
    queues = [[j for j in range(ctx.m) if y[j] == lab] for lab in np.argsort(-vote, kind="stable")]
    queues = [q for q in queues if q]
    chosen: list[int] = []
    while len(chosen) < k:
        for q in queues:
            if q and len(chosen) < k:
                chosen.append(q.pop(0))
    return nearest_last(chosen)


def mmr_order(table: PoolTable, ctx: QueryContexts, i: int, k: int, lam: float = 0.7) -> list[int]:
    """Maximal marginal relevance with relevance weight ``lam`` (1 is kNN); the first pick sits last."""
    emb = table.emb[ctx.nbr[i]]
    sim_q = ctx.sims[i]
    chosen: list[int] = []
    for _ in range(k):
        red = (emb @ emb[chosen].T).max(axis=1) if chosen else np.zeros(ctx.m)
        score = lam * sim_q - (1.0 - lam) * red
        score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))
    return chosen[::-1]


ORDERS: dict[str, Order] = {"knn": knn_order, "knn_majority": majority_order, "knn_balanced": balanced_order,
                            "knn_mmr": mmr_order}
"""The hand-written orders by name (the critic mode values every one of them)."""
