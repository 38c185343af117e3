"""A per-query kNN prompt file's rule: the embedder names a file stores, and the rule run for queries (no LM)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rl_select.prompt_file.fileformat import PromptFileError
from rl_select.types import Example

if TYPE_CHECKING:
    from rl_select.prompt_file.document import PerQuery


def embedder_name(embedder: Any) -> str:
    """The name a prompt file stores for a kNN embedder (see :class:`PerQuery`).

    Raises:
        PromptFileError: ``"scorer"`` (the LM's own states: a prompt file renders without the LM) or an
            embedder object it cannot name.
    """
    from rl_select.embeddings import HashingEmbedder, MiniLMEmbedder

    if embedder is None or embedder == "minilm":
        return "minilm"
    if isinstance(embedder, (str, Path)):
        name = str(embedder)
        if name == "scorer":
            raise PromptFileError("knn with embedder='scorer' needs the LM per query, and a prompt file renders "
                                  "without it; expected embedder 'minilm', 'hashing' or a sentence-transformers model")
        return name
    if isinstance(embedder, HashingEmbedder):
        return "hashing" if embedder.dim == 256 else f"hashing:{embedder.dim}"
    if isinstance(embedder, MiniLMEmbedder):
        return embedder.model or "minilm"
    raise PromptFileError(f"knn embedder {embedder!r} cannot be stored in a prompt file; expected 'minilm', "
                          "'hashing[:dim]' or a sentence-transformers model")


def embedder_from_name(name: str) -> Any:
    """The embedder a stored name stands for: MiniLM, the hashing embedder, or a sentence-transformers model."""
    from rl_select.embeddings import HashingEmbedder, MiniLMEmbedder

    if name == "minilm":
        return MiniLMEmbedder()
    if name == "hashing" or name.startswith("hashing:"):
        dim = name.partition(":")[2]
        if dim and not dim.isdigit():
            raise PromptFileError(f"embedder {name!r}; expected 'hashing' or 'hashing:<dim>'")
        return HashingEmbedder(int(dim) if dim else 256)
    embedder_name(name)  # refuses "scorer"
    return MiniLMEmbedder(name)


def _knn_demos(pq: PerQuery, queries: Sequence[Example]) -> list[list[Example]]:
    from rl_select.selectors import KNNSelector, SelectionContext

    knn = KNNSelector(embedder_from_name(pq.embedder), exclude_same_text=pq.exclude_same_text)
    ctx = SelectionContext(pool=pq.pool, val=(), k=pq.k, scorer=None, rng=np.random.default_rng(0))  # type: ignore[arg-type]
    return knn.select_for(ctx, list(queries))
