"""kNN demonstrations per query (Liu et al. 2022, "What Makes Good In-Context Examples for GPT-3?").

For each test query, the ``k`` pool examples nearest by cosine similarity of sentence embeddings,
ordered from least to most similar, so the most similar demonstration sits right before the query. The pool's
embeddings and :class:`~rl_select.neighbours.NeighbourIndex` are built once and kept for the next call on the
same pool (exact search for small pools, FAISS for large ones when installed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rl_select.embeddings import Embedder, MiniLMEmbedder, ScorerEmbedder, embed_examples, example_text
from rl_select.errors import SelectionError
from rl_select.neighbours import NeighbourIndex, resolve_backend
from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.selectors.tags import SelectorTags
from rl_select.types import Example

# Below any cosine similarity: a pool item identical to the query is only used when nothing else is left.
_SAME_TEXT_SIM = -2.0


@register_selector
class KNNSelector(Selector):
    """Nearest pool examples to each query, most similar last.

    Args:
        embedder: An :class:`~rl_select.embeddings.Embedder`; ``None`` or ``"minilm"`` for the bundled
            all-MiniLM-L6-v2; ``"scorer"`` for the LM's own embeddings (``ctx.scorer.embed``); any
            other string is a sentence-transformers model id or folder.
        exclude_same_text: Rank pool items whose input text equals the query's last, so a query that
            is also in the pool does not see its own answer.
        index: The pool's neighbour index (:data:`~rl_select.neighbours.BACKENDS`; ``"auto"``: exact for small
            pools, FAISS for large ones when installed).
    """

    name = "knn"
    # lm=False with the default embedder (embedder="scorer" embeds with the LM's own states)
    tags = SelectorTags(val_labels=False, pool_labels=True, trained=False, lm=False, per_query=True, count_arg=None,
                        lm_rows=lambda s: 0, labels_read=lambda s: s.n_pool, cost_note="0 (embedder, no LM)")

    def __init__(
        self, embedder: Embedder | str | Path | None = None, *, exclude_same_text: bool = True, index: str = "auto"
    ) -> None:
        if embedder is not None and not isinstance(embedder, (str, Path, Embedder)):
            raise SelectionError(
                f"embedder {embedder!r} has no encode(texts) method; "
                "expected an Embedder, 'minilm' or 'scorer'"
            )
        self.embedder = embedder
        self.exclude_same_text = exclude_same_text
        self.index = resolve_backend(index, 0) if index != "auto" else index  # an unknown name fails here
        self._minilm: MiniLMEmbedder | None = None
        self._last: tuple[tuple[Example, ...], Embedder, NeighbourIndex, dict[str, np.ndarray]] | None = None

    def _pool_index(self, emb: Embedder, pool: Sequence[Example]) -> tuple[NeighbourIndex, dict[str, np.ndarray]]:
        """The pool's neighbour index and its rows per input text; kept for the next call on the same pool."""
        pool = tuple(pool)
        last = self._last
        if last is not None and last[1] is emb and len(last[0]) == len(pool) and last[0] == pool:
            return last[2], last[3]
        index = NeighbourIndex(embed_examples(emb, pool), backend=self.index)
        rows: dict[str, list[int]] = {}
        for j, e in enumerate(pool):
            rows.setdefault(example_text(e), []).append(j)
        by_text = {t: np.array(r, dtype=np.int64) for t, r in rows.items()}
        self._last = (pool, emb, index, by_text)
        return index, by_text

    def _embedder(self, ctx: SelectionContext) -> Embedder:
        if self.embedder == "scorer":
            return ScorerEmbedder(ctx.scorer)
        if self.embedder is None or isinstance(self.embedder, (str, Path)):
            if self._minilm is None:
                model = None if self.embedder in (None, "minilm") else self.embedder
                self._minilm = MiniLMEmbedder(model)
            return self._minilm
        return self.embedder

    @staticmethod
    def _rank(sims: np.ndarray, k: int) -> np.ndarray:
        """Indices of the ``k`` most similar pool items per row, least similar first.

        Args:
            sims: ``(n_queries, n_pool)`` similarities.
            k: Number kept per row.

        Returns:
            ``(n_queries, k)`` int array; among equal similarities the lower pool index ranks higher.
        """
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # most similar first
        return order[:, ::-1]

    def select_for(self, ctx: SelectionContext, queries: Sequence[Example]) -> list[list[Example]]:
        """The ``k`` nearest pool examples for each query, most similar last.

        Returns:
            ``len(queries)`` lists of ``ctx.k`` distinct pool items.
        """
        check_k(ctx)
        if ctx.k == 0 or not queries:
            return [[] for _ in queries]
        emb = self._embedder(ctx)
        index, by_text = self._pool_index(emb, ctx.pool)
        query_emb = embed_examples(emb, queries)
        if index.emb.shape[1] != query_emb.shape[1]:
            raise SelectionError(
                f"pool and query embeddings differ in width ({index.emb.shape[1]} vs {query_emb.shape[1]})"
            )
        none = np.zeros(0, dtype=np.int64)
        exclude = [by_text.get(example_text(q), none) for q in queries] if self.exclude_same_text else None
        idx, _ = index.search(query_emb, ctx.k, exclude=exclude, excluded_sim=_SAME_TEXT_SIM)  # most similar first
        return [[ctx.pool[int(j)] for j in row[::-1]] for row in idx]

    def select(self, ctx: SelectionContext) -> list[Example]:
        """Global fallback: the ``k`` pool examples nearest the centroid of ``ctx.val``, most similar last.

        kNN is meant to be used per query through :meth:`select_for`; this gives one list for callers
        that need a single prompt, using the validation split as a stand-in for the test distribution.
        """
        check_k(ctx)
        if ctx.k == 0:
            return []
        if len(ctx.val) == 0:
            raise SelectionError("knn's global select() needs a non-empty validation split; got 0 examples")
        emb = self._embedder(ctx)
        centroid = embed_examples(emb, ctx.val).mean(axis=0, keepdims=True)  # (1, d)
        pool_emb = embed_examples(emb, ctx.pool)
        idx = self._rank((centroid @ pool_emb.T).astype(np.float64), ctx.k)[0]
        return [ctx.pool[int(j)] for j in idx]

    def __repr__(self) -> str:
        return f"KNNSelector(embedder={self.embedder!r})"
