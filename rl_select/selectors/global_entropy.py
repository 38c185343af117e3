"""GlobalE (Lu et al. 2022, "Fantastically Ordered Prompts and Where to Find Them"): a label-free search.

Draw ``n_prompts`` random ordered k-subsets of the pool, score each on the reward-validation queries' TEXTS
(their labels are never read), and keep the prompt whose arg-max predictions are spread most evenly over the
labels: the highest entropy of the predicted-label histogram. A prompt that makes a small LM answer one label
for everything scores near 0. Ties go to the higher entropy of the mean predicted distribution, then to the
first drawn.

LM cost: ``n_prompts`` scorer calls of ``len(ctx.val)`` queries each, like best-of-N random search, with no
validation label.
"""

from __future__ import annotations

from typing import Any

from rl_select.errors import SelectionError
from rl_select.metrics import probe_stats
from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.selectors.tags import SelectorTags, prompts_drawn
from rl_select.types import Example, is_int


@register_selector
class GlobalEntropySelector(Selector):
    """Best of ``n_prompts`` random prompts by the entropy of their predicted labels on unlabelled queries.

    Args:
        n_prompts: Random demonstration lists tried.

    Attributes:
        last_info: After :meth:`select`: ``{"stats": [[pred_entropy, mean_entropy, mean_max, query_entropy],
            ...], "best": i}`` per prompt drawn.
    """

    name = "global_entropy"
    tags = SelectorTags(val_labels=False, pool_labels=True, trained=False, lm=True, per_query=False, count_arg=None,
                        lm_rows=lambda s: prompts_drawn(s, 16) * s.n_val,
                        labels_read=lambda s: min(s.n_pool, prompts_drawn(s, 16) * s.k),
                        cost_note="n_prompts x V (val texts only)")

    def __init__(self, n_prompts: int = 16) -> None:
        if not is_int(n_prompts) or n_prompts < 1:
            raise SelectionError(f"n_prompts={n_prompts!r}; expected an integer >= 1")
        self.n_prompts = int(n_prompts)
        self.last_info: dict[str, Any] | None = None

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        if ctx.k == 0:
            return []
        if not ctx.val:
            raise SelectionError("global_entropy needs unlabelled probe queries (the val split); got none")
        best, best_i, best_key = [], 0, (-1.0, -1.0)
        stats = []
        for i in range(self.n_prompts):
            idx = ctx.rng.permutation(len(ctx.pool))[: ctx.k]  # the draws random_search makes
            demos = [ctx.pool[int(j)] for j in idx]
            s = probe_stats(ctx.scorer.logprobs(demos=demos, queries=ctx.val))
            stats.append(s.tolist())
            key = (round(float(s[0]), 12), round(float(s[1]), 12))
            if key > best_key:
                best, best_i, best_key = demos, i, key
        self.last_info = {"stats": stats, "best": best_i}
        return best

    def __repr__(self) -> str:
        return f"GlobalEntropySelector(n_prompts={self.n_prompts})"
