"""The trained policy's probe critic as a label-free search: draw ``n_prompts`` random k-shot prompts (the
draws ``random_search`` and ``global_entropy`` make), score each on the reward-validation TEXTS, and keep the
one the critic values highest.

The critic (:mod:`rl_select.mdp.critic`) is the terminal-state value the offline agent's rollouts teach:
a ridge regression of each logged episode's return on label-free statistics of its final prompt's
predictions (how evenly they spread over the labels, how confident they are) and the prompt's label
balance. Trained on other tasks, it carries over to a new one because those statistics mean the same thing
on any classification task. Train it with ``agent.probe_critic = true``; without a ``path``, the selector uses
``pretrained-critic``, the policy with its probe critic shipped in the package (nine tasks, the bundled model).

With ``with_knn = true`` the kNN per-query prompts (:class:`~rl_select.selectors.knn.KNNSelector`: each query's
k nearest pool examples) are one more candidate: they are scored on the val texts the same way (each val query
with its own neighbours) and judged by the same critic; when they win, every test query gets its own
neighbours. The critic then chooses between a fixed prompt and retrieval for the task at hand.

Label-free at selection: the val labels are never read (the demos' own labels are). LM cost:
``n_prompts`` scorer calls of ``len(val)`` queries, the rows ``random_search:n_prompts`` scores (``with_knn``:
``len(val)`` more, one prompt each).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rl_select.embeddings import Embedder
from rl_select.errors import SelectionError
from rl_select.mdp.shipped import PRETRAINED_CRITIC
from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.selectors.knn import KNNSelector
from rl_select.selectors.policy_selector import load_policy
from rl_select.selectors.tags import CostSetting, SelectorTags, prompts_drawn
from rl_select.types import Example, is_int


def _with_knn(args: Mapping[str, Any]) -> bool:
    return bool(args.get("with_knn", False))


def probe_labels(s: CostSetting) -> int:
    """Labels read: the drawn prompts' demos, or (``with_knn``) the whole pool kNN may show."""
    return s.n_pool if _with_knn(s.args) else min(s.n_pool, prompts_drawn(s, 16) * s.k)


@register_selector
class PolicyProbeSelector(Selector):
    """Best of ``n_prompts`` random prompts (and, ``with_knn``, kNN's per-query prompts) by the policy's probe
    critic (val texts only).

    Args:
        path: The policy's ``.safetensors`` file (trained with ``agent.probe_critic = true``); ``"pretrained-critic"``
            (the default) is the one shipped in the package.
        n_prompts: Random prompts drawn from the pool.
        with_knn: Also judge kNN's per-query prompts; then the selector is per-query.
        embedder: kNN's embedder (see :class:`~rl_select.selectors.knn.KNNSelector`); only with ``with_knn``.
        force: Use the policy with a scorer other than its training one (warns).

    Attributes:
        last_info: After selecting: ``{"values": [...], "features": [[...], ...], "best": i}``; with ``with_knn``
            also ``"knn_value"``, ``"knn_features"`` and ``"chose"`` (``"knn"`` or ``"fixed"``).
    """

    name = "policy_probe"
    tags = SelectorTags(val_labels=False, pool_labels=True, trained=True, lm=True, per_query=_with_knn, count_arg=None,
                        lm_rows=lambda s: (prompts_drawn(s, 16) + _with_knn(s.args)) * s.n_val,
                        labels_read=probe_labels,
                        cost_note="n_prompts x V (val texts only; with_knn: + V, one prompt per query)")

    def __init__(self, path: str = PRETRAINED_CRITIC, n_prompts: int = 16, with_knn: bool = False,
                 embedder: Embedder | str | Path | None = None, force: bool = False) -> None:
        if not is_int(n_prompts) or n_prompts < 1:
            raise SelectionError(f"n_prompts={n_prompts!r}; expected an integer >= 1")
        if not isinstance(with_knn, bool):
            raise SelectionError(f"with_knn={with_knn!r}; expected true or false")
        self.path, self.n_prompts, self.force = str(path), int(n_prompts), bool(force)
        self.with_knn = with_knn
        self.per_query = with_knn  # the harness then asks select_for for the test queries
        self.knn = KNNSelector(embedder) if with_knn else None
        self.policy = load_policy(path)
        if self.policy.critic is None:
            raise SelectionError(f"policy {self.path!r} has no probe critic; expected one trained with "
                                 "agent.probe_critic = true")
        self.last_info: dict[str, Any] | None = None

    def _best_fixed(self, ctx: SelectionContext) -> tuple[list[Example], float]:
        prompts = [[ctx.pool[int(i)] for i in ctx.rng.permutation(len(ctx.pool))[: ctx.k]]
                   for _ in range(self.n_prompts)]
        values, feats = self.policy.critic_values(prompts, scorer=ctx.scorer, val=ctx.val, force=self.force)
        best = int(np.argmax(values))  # ties: the first drawn
        self.last_info = {"values": values.tolist(), "features": feats.tolist(), "best": best}
        return prompts[best], float(values[best])

    def select(self, ctx: SelectionContext) -> list[Example]:
        """The best fixed prompt (also with ``with_knn``: one list for callers that need a single prompt)."""
        check_k(ctx)
        if ctx.k == 0:
            return []
        return self._best_fixed(ctx)[0]

    def select_for(self, ctx: SelectionContext, queries: Sequence[Example]) -> list[list[Example]]:
        """Demonstrations per query: the best fixed prompt for all, or (``with_knn``, when the critic values
        retrieval higher) each query's nearest pool examples."""
        check_k(ctx)
        if ctx.k == 0 or not queries:
            return [[] for _ in queries]
        fixed, value = self._best_fixed(ctx)
        if self.knn is None:
            return [list(fixed) for _ in queries]
        knn_value, knn_feats = self.policy.critic_value_per_query(
            self.knn.select_for(ctx, ctx.val), scorer=ctx.scorer, val=ctx.val, force=self.force)
        use_knn = knn_value > value
        assert self.last_info is not None
        self.last_info.update(knn_value=knn_value, knn_features=knn_feats.tolist(),
                              chose="knn" if use_knn else "fixed")
        if use_knn:
            return self.knn.select_for(ctx, queries)
        return [list(fixed) for _ in queries]

    def __repr__(self) -> str:
        return f"PolicyProbeSelector({self.path!r}, n_prompts={self.n_prompts}, with_knn={self.with_knn})"
