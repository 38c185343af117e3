"""Best-of-N random search: the strongest cheap baseline for any learned selector."""

from __future__ import annotations

from rl_select.errors import SelectionError
from rl_select.reward import accuracy
from rl_select.selectors.base import SelectionContext, Selector, check_k, check_val, register_selector
from rl_select.types import Example


@register_selector
class RandomSearchSelector(Selector):
    """Draw ``n_candidates`` random ordered ``k``-subsets; keep the most accurate on ``ctx.val``.

    Costs ``n_candidates`` scorer calls of ``len(ctx.val)`` queries each. Ties go to the first drawn.

    Args:
        n_candidates: Number of random demonstration lists tried (N in best-of-N).
    """

    name = "random_search"

    def __init__(self, n_candidates: int = 8) -> None:
        if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < 1:
            raise SelectionError(f"n_candidates={n_candidates!r}; expected an integer >= 1")
        self.n_candidates = n_candidates

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        if ctx.k == 0:
            return []
        check_val(ctx, self.name)
        best: list[Example] = []
        best_acc = -1.0
        for _ in range(self.n_candidates):
            idx = ctx.rng.permutation(len(ctx.pool))[: ctx.k]
            demos = [ctx.pool[int(i)] for i in idx]
            acc = accuracy(ctx.scorer, demos=demos, examples=ctx.val)
            if acc > best_acc:
                best, best_acc = demos, acc
        return best

    def __repr__(self) -> str:
        return f"RandomSearchSelector(n_candidates={self.n_candidates})"
