"""Best-of-N random search: the strongest cheap baseline for any learned selector."""

from __future__ import annotations

from rl_select.errors import SelectionError
from rl_select.metrics import accuracy
from rl_select.selectors.base import SelectionContext, Selector, check_k, check_val, register_selector
from rl_select.selectors.tags import SelectorTags, prompts_drawn
from rl_select.types import Example


@register_selector
class RandomSearchSelector(Selector):
    """Draw ``n_prompts`` random ordered ``k``-subsets; keep the most accurate on ``ctx.val``.

    Costs ``n_prompts`` scorer calls of ``len(ctx.val)`` queries each. Ties go to the first drawn.

    Args:
        n_prompts: Number of random demonstration lists tried (N in best-of-N).
    """

    name = "random_search"
    tags = SelectorTags(val_labels=True, pool_labels=True, trained=False, lm=True, per_query=False, count_arg=None,
                        lm_rows=lambda s: prompts_drawn(s, 8) * s.n_val,
                        labels_read=lambda s: min(s.n_pool, prompts_drawn(s, 8) * s.k) + s.n_val,
                        cost_note="n_prompts x V")

    def __init__(self, n_prompts: int = 8) -> None:
        if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
            raise SelectionError(f"n_prompts={n_prompts!r}; expected an integer >= 1")
        self.n_prompts = n_prompts

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        if ctx.k == 0:
            return []
        check_val(ctx, self.name)
        best: list[Example] = []
        best_acc = -1.0
        for _ in range(self.n_prompts):
            idx = ctx.rng.permutation(len(ctx.pool))[: ctx.k]
            demos = [ctx.pool[int(i)] for i in idx]
            acc = accuracy(ctx.scorer, demos=demos, examples=ctx.val)
            if acc > best_acc:
                best, best_acc = demos, acc
        return best

    def __repr__(self) -> str:
        return f"RandomSearchSelector(n_prompts={self.n_prompts})"
