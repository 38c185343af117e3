"""Greedy forward selection on validation accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rl_select.errors import SelectionError
from rl_select.lm.base import Scorer
from rl_select.metrics import label_ids
from rl_select.selectors.base import SelectionContext, Selector, check_k, check_val, register_selector
from rl_select.selectors.tags import CostSetting, SelectorTags
from rl_select.types import Example

_TIE_ATOL = 1e-12


def val_scores(
    scorer: Scorer, demos: Sequence[Example], val: Sequence[Example], gold: np.ndarray
) -> tuple[float, float]:
    """Accuracy and mean gold-label log-prob of ``demos`` on ``val``, from one scorer call.

    Args:
        gold: ``(len(val),)`` gold label indices.

    Returns:
        ``(accuracy, mean log p(gold))``.
    """
    lp = np.asarray(scorer.logprobs(demos=demos, queries=val))  # (n_val, n_labels)
    acc = float(np.mean(lp.argmax(axis=1) == gold))
    gold_lp = float(np.mean(lp[np.arange(len(gold)), gold]))
    return acc, gold_lp


def greedy_rows(s: CostSetting) -> int:
    """LM rows of greedy selection: each step scores its candidates (``max_candidates`` or all left) on val."""
    mc = s.args.get("max_candidates")
    return sum(min(s.n_pool - j, mc or s.n_pool) for j in range(s.k)) * s.n_val


@register_selector
class GreedySelector(Selector):
    """Forward selection: each step appends the candidate that maximises val accuracy of the prompt.

    Ties in accuracy go to the higher mean gold-label log-prob on val, remaining ties to ``ctx.rng``.
    Each step costs one scorer call (prefix + all of ``ctx.val``) per candidate tried, so about
    ``k * len(pool)`` calls in all; ``max_candidates`` bounds it to ``k * max_candidates``.

    Args:
        max_candidates: If set, each step tries only this many remaining candidates, drawn from
            ``ctx.rng`` without replacement.
    """

    name = "greedy"
    tags = SelectorTags(val_labels=True, pool_labels=True, trained=False, lm=True, per_query=False, count_arg=None,
                        lm_rows=greedy_rows, labels_read=lambda s: s.n_pool + s.n_val,
                        cost_note="sum_j min(P - j, max_candidates) x V, j < k")

    def __init__(self, max_candidates: int | None = None) -> None:
        if max_candidates is not None and (
            isinstance(max_candidates, bool) or not isinstance(max_candidates, int) or max_candidates < 1
        ):
            raise SelectionError(f"max_candidates={max_candidates!r}; expected None or an integer >= 1")
        self.max_candidates = max_candidates

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        if ctx.k == 0:
            return []
        check_val(ctx, self.name)
        gold = label_ids(ctx.scorer.spec.labels, ctx.val)
        remaining = list(range(len(ctx.pool)))
        current: list[Example] = []
        for _ in range(ctx.k):
            cands = remaining
            if self.max_candidates is not None and len(remaining) > self.max_candidates:
                picked = ctx.rng.choice(len(remaining), size=self.max_candidates, replace=False)
                cands = [remaining[int(j)] for j in np.sort(picked)]
            scores = np.array([val_scores(ctx.scorer, [*current, ctx.pool[i]], ctx.val, gold) for i in cands])
            accs, gold_lps = scores[:, 0], scores[:, 1]
            top = accs == accs.max()
            ties = np.flatnonzero(top & (gold_lps >= gold_lps[top].max() - _TIE_ATOL))
            pick = int(ties[0]) if len(ties) == 1 else int(ties[ctx.rng.integers(len(ties))])
            best = cands[pick]
            remaining.remove(best)
            current.append(ctx.pool[best])
        return current

    def __repr__(self) -> str:
        return f"GreedySelector(max_candidates={self.max_candidates})"
