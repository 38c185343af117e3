"""Hand-written per-query rules over each query's ``M`` nearest pool examples, as selectors (no LM, no training).

The baselines a learned per-query policy has to beat (issue 22): ``knn_majority``, ``knn_balanced`` and
``knn_mmr``, whose orders are defined once in :mod:`rl_select.mdp.neighbour_orders` (the per-query policy's
critic mode values the same orders). Each reads the neighbourhood the per-query policy reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rl_select.embeddings import Embedder, as_embedder
from rl_select.errors import SelectionError
from rl_select.mdp.neighbour_orders import balanced_order, majority_order, mmr_order
from rl_select.mdp.per_query_table import PoolTable, QueryContexts, TableMemo
from rl_select.neighbours import resolve_backend
from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.selectors.tags import SelectorTags
from rl_select.types import Example

_TAGS = dict(val_labels=False, pool_labels=True, trained=False, lm=False, per_query=True, count_arg="m",
             lm_rows=lambda s: 0, labels_read=lambda s: s.n_pool, cost_note="0 (embedder, no LM)")


class NeighbourRuleSelector(Selector):
    """A rule over each query's ``m`` nearest pool examples; subclasses implement :meth:`order`.

    Args:
        m: Neighbours per query the rule chooses from (``k <= m``; capped at the pool size).
        embedder: An :class:`~rl_select.embeddings.Embedder`, or ``None`` / a model id for MiniLM.
        index: The pool's neighbour index (:data:`~rl_select.neighbours.BACKENDS`; ``"auto"``: exact for small
            pools, FAISS for large ones when installed).
    """

    def __init__(self, m: int = 16, embedder: Embedder | str | Path | None = None, *, index: str = "auto") -> None:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise SelectionError(f"m={m!r}; expected a positive integer (neighbours per query)")
        self.m = int(m)
        self.embedder = embedder
        self._emb = as_embedder(embedder)
        self.index = resolve_backend(index, 0) if index != "auto" else index  # an unknown name fails here
        self._tables = TableMemo()

    def order(self, table: PoolTable, ctx: QueryContexts, i: int, k: int) -> list[int]:
        """Neighbour positions (0 = nearest) for query ``i``, in prompt order."""
        raise NotImplementedError

    def select_for(self, ctx: SelectionContext, queries: Sequence[Example]) -> list[list[Example]]:
        """``ctx.k`` demonstrations per query, the most similar chosen one last."""
        check_k(ctx)
        if ctx.k == 0 or not queries:
            return [[] for _ in queries]
        m = max(ctx.k, min(self.m, len(ctx.pool)))
        emb = self._emb
        table = self._tables.get(ctx.pool, labels=ctx.scorer.spec.labels, embedder=emb, index=self.index)
        qc = QueryContexts.build(table, queries, m=m, embedder=emb)
        return [qc.demos(table, i, self.order(table, qc, i, ctx.k)) for i in range(len(queries))]

    def select(self, ctx: SelectionContext) -> list[Example]:
        """Per-query only: one prompt for every query has no query to be near."""
        raise SelectionError(f"{self.name} chooses demonstrations per query; call select_for(ctx, queries)")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(m={self.m})"


@register_selector
class MajorityNeighboursSelector(NeighbourRuleSelector):
    """The ``k`` most similar neighbours carrying the neighbourhood's majority label (see the module)."""

    name = "knn_majority"
    tags = SelectorTags(**_TAGS)

    def order(self, table: PoolTable, ctx: QueryContexts, i: int, k: int) -> list[int]:
        return majority_order(table, ctx, i, k)


@register_selector
class BalancedNeighboursSelector(NeighbourRuleSelector):
    """Labels in turn (most voted first), each its most similar unused neighbour (see the module)."""

    name = "knn_balanced"
    tags = SelectorTags(**_TAGS)

    def order(self, table: PoolTable, ctx: QueryContexts, i: int, k: int) -> list[int]:
        return balanced_order(table, ctx, i, k)


@register_selector
class MMRNeighboursSelector(NeighbourRuleSelector):
    """Maximal marginal relevance over the neighbours (see the module).

    Args:
        m: Neighbours per query.
        lam: Relevance weight, ``0 <= lam <= 1`` (1 is kNN).
        embedder, index: As :class:`NeighbourRuleSelector`.
    """

    name = "knn_mmr"
    tags = SelectorTags(**_TAGS)

    def __init__(self, m: int = 16, lam: float = 0.7, embedder: Embedder | str | Path | None = None, *,
                 index: str = "auto") -> None:
        super().__init__(m, embedder, index=index)
        if not 0.0 <= float(lam) <= 1.0:
            raise SelectionError(f"lam={lam!r}; expected a number in [0, 1]")
        self.lam = float(lam)

    def order(self, table: PoolTable, ctx: QueryContexts, i: int, k: int) -> list[int]:
        return mmr_order(table, ctx, i, k, self.lam)
