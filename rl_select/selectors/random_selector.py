"""Uniformly random demonstrations: the baseline every other selector must beat."""

from __future__ import annotations

from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.selectors.tags import SelectorTags
from rl_select.types import Example


@register_selector
class RandomSelector(Selector):
    """``k`` distinct pool items in a uniformly random order (no LM calls)."""

    name = "random"
    tags = SelectorTags(val_labels=False, pool_labels=True, trained=False, lm=False, per_query=False, count_arg=None,
                        lm_rows=lambda s: 0, labels_read=lambda s: s.k, cost_note="0")

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        idx = ctx.rng.permutation(len(ctx.pool))[: ctx.k]
        return [ctx.pool[int(i)] for i in idx]
