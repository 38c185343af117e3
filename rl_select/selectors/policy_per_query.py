"""A trained :class:`~rl_select.mdp.per_query_policy.PerQueryPolicy` behind the selector interface.

Each query gets its own ``k`` demonstrations from its ``M`` nearest pool examples, chosen by the policy (its
verifier, its critic or its greedy Q rollout: :data:`~rl_select.mdp.per_query_policy.MODES`). Selection reads
pool labels only (no validation label); the LM features cost one zero-shot row per pool example and per query
(cached; a pool of more than 1,000 rows only its queries' neighbours' rows); the ``verify`` mode also scores
each query's candidate prompts (five, one row each, cached), the other modes none. The pool's table is kept
between calls on one pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rl_select.embeddings import Embedder, as_embedder
from rl_select.errors import SelectionError
from rl_select.mdp.per_query_policy import PRETRAINED, PerQueryPolicy, check_mode
from rl_select.mdp.shipped import per_query_for_pool
from rl_select.neighbours import resolve_backend
from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.selectors.tags import SelectorTags
from rl_select.types import Example


@register_selector
class PerQueryPolicySelector(Selector):
    """A trained per-query policy (``rl-select per-query train``) choosing each query's demonstrations.

    Args:
        path: The policy's ``.safetensors`` file (kind ``per_query_policy``); ``"pretrained"`` (the default) is
            the general per-query policy shipped in the package (trained on nine tasks for the bundled model with
            a 100-example pool; on a pool of 1,000 rows or more, the one trained with a 1,000-example pool,
            ``"pretrained-large"``: :func:`~rl_select.mdp.shipped.per_query_for_pool`).
        embedder: The sentence embedder of the neighbourhoods (MiniLM by default, as in training).
        force: Use the policy with a scorer other than its training one (warns); refused by default.
        mode: ``"verify"`` (the LM answers under each candidate prompt, the greedy rollout and the hand-written
            orders, and the policy's verifier, with its answer stacker when it has one, keeps the prompt whose
            answer they trust), ``"critic"`` (the Q-network values the
            same candidates without the LM) or ``"greedy"`` (its greedy rollout); ``None`` (default): ``verify``
            for a policy with a verifier, else ``critic``. See :mod:`rl_select.mdp.per_query_policy`.
        index: The pool's neighbour index (:data:`~rl_select.neighbours.BACKENDS`; ``"auto"``: exact for small
            pools, FAISS for large ones when installed).
    """

    name = "policy_pq"
    tags = SelectorTags(val_labels=False, pool_labels=True, trained=True, lm=True, per_query=True, count_arg=None,
                        lm_rows=lambda s: s.n_pool + 6 * (s.n_test or 0), labels_read=lambda s: s.n_pool,
                        cost_note="P + T zero-shot rows at most (pool and queries, cached), and in verify mode (the "
                                  "default with a verifier) 5 candidate prompts per query, each with its "
                                  "calibration rows")

    def __init__(self, path: str | Path = PRETRAINED, embedder: Embedder | str | Path | None = None,
                 force: bool = False, mode: str | None = None, *, index: str = "auto") -> None:
        self.path = str(path)
        self.index = resolve_backend(index, 0) if index != "auto" else index  # an unknown name fails here
        self.force = force
        if mode is not None:
            check_mode(mode)
        self.policy = PerQueryPolicy.load(path)
        self._by_name: dict[str, PerQueryPolicy] = {self.path: self.policy}
        self.mode = mode or self.policy.default_mode
        if self.mode == "verify" and self.policy.verifier is None:
            raise SelectionError(f"policy {self.path!r} has no verifier; expected mode 'critic' or 'greedy'")
        self.embedder = embedder
        self._emb = as_embedder(embedder)

    def select_for(self, ctx: SelectionContext, queries: Sequence[Example]) -> list[list[Example]]:
        """The policy's ``k`` demonstrations for every query (``ctx.k`` must equal the policy's ``k``)."""
        check_k(ctx)
        policy = self.policy_for(len(ctx.pool))
        if ctx.k != policy.k:
            raise SelectionError(f"k={ctx.k}, but policy {self.path!r} was trained for k={policy.k}; "
                                 f"expected k={policy.k}")
        return policy.select_for(ctx.pool, queries, labels=ctx.scorer.spec.labels, embedder=self._emb,
                                 scorer=ctx.scorer, force=self.force, mode=self.mode, index=self.index)

    def policy_for(self, n_pool: int) -> PerQueryPolicy:
        """The policy that chooses on a pool of ``n_pool`` rows (loaded once): the given one, or for ``"pretrained"``
        the shipped one for that pool size."""
        name = str(per_query_for_pool(self.path, n_pool))
        if name not in self._by_name:
            self._by_name[name] = PerQueryPolicy.load(name)
        return self._by_name[name]

    def select(self, ctx: SelectionContext) -> list[Example]:
        """Per-query only."""
        raise SelectionError(f"policy {self.path!r} is a per-query policy; call select_for(ctx, queries)")

    def __repr__(self) -> str:
        return f"PerQueryPolicySelector({self.path!r}, mode={self.mode!r})"
