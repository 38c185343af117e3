"""No demonstrations at all: the zero-shot baseline (``k`` is ignored)."""

from __future__ import annotations

from rl_select.selectors.base import SelectionContext, Selector, register_selector
from rl_select.types import Example


@register_selector
class ZeroShotSelector(Selector):
    """Always the empty prompt; ``ctx.k`` is ignored and no LM calls are made."""

    name = "zero_shot"

    def select(self, ctx: SelectionContext) -> list[Example]:
        return []
