"""No demonstrations at all: the zero-shot baseline (``k`` is ignored)."""

from __future__ import annotations

from rl_select.selectors.base import SelectionContext, Selector, register_selector
from rl_select.selectors.tags import SelectorTags
from rl_select.types import Example


@register_selector
class ZeroShotSelector(Selector):
    """Always the empty prompt; ``ctx.k`` is ignored and no LM calls are made."""

    name = "zero_shot"
    tags = SelectorTags(val_labels=False, pool_labels=False, trained=False, lm=False, per_query=False, count_arg=None,
                        lm_rows=lambda s: 0, labels_read=lambda s: 0, cost_note="0")

    def select(self, ctx: SelectionContext) -> list[Example]:
        return []
