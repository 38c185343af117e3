"""Maximum-entropy active selection (the MaxEntropy baseline of Zhang et al. 2022, "Active Example
Selection for In-Context Learning").

Starting from the empty prompt, each step scores every remaining candidate *as a query* under the
current prompt and appends the candidate the LM is least sure about (highest entropy of its label
distribution). Choosing never reads the candidates' labels: only their texts are scored. A chosen
candidate then joins the prompt as a demonstration, which needs a label: by default its gold label
(the active-learning view: an example is annotated once it is picked), or with
``demo_labels="predicted"`` the LM's own arg-max label for it, which makes the whole run label-free.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np

from rl_select.errors import SelectionError
from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.selectors.tags import SelectorTags
from rl_select.types import Example

_TIE_ATOL = 1e-12


def label_entropy(logprobs: np.ndarray) -> np.ndarray:
    """Entropy (nats) of the label distribution renormalised from log-probs.

    Args:
        logprobs: ``(n, n_labels)`` label log-probabilities (need not sum to one in prob space).

    Returns:
        ``(n,)`` float64 entropies, each in ``[0, log n_labels]``.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    logp = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)  # log-softmax over labels
    return -(np.exp(logp) * logp).sum(axis=1)


@register_selector
class MaxEntropySelector(Selector):
    """Greedy highest-entropy selection; one scorer call per step.

    Args:
        demo_labels: Label shown for a chosen demonstration in later steps' prompts: ``"gold"`` (its
            own label) or ``"predicted"`` (the LM's arg-max label at the step it was chosen). The
            returned items are always the pool's own examples.
    """

    name = "max_entropy"
    tags = SelectorTags(val_labels=False, pool_labels=True, trained=False, lm=True, per_query=False, count_arg=None,
                        lm_rows=lambda s: sum(s.n_pool - j for j in range(s.k)), labels_read=lambda s: s.k,
                        cost_note="sum_j (P - j), j < k")

    def __init__(self, demo_labels: Literal["gold", "predicted"] = "gold") -> None:
        if demo_labels not in ("gold", "predicted"):
            raise SelectionError(f"demo_labels={demo_labels!r}; expected 'gold' or 'predicted'")
        self.demo_labels = demo_labels

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        labels = ctx.scorer.spec.labels
        remaining = list(range(len(ctx.pool)))
        chosen: list[int] = []
        prompt: list[Example] = []
        for _ in range(ctx.k):
            cands = [ctx.pool[i] for i in remaining]
            lp = np.asarray(ctx.scorer.logprobs(demos=prompt, queries=cands))  # (n_remaining, n_labels)
            ent = label_entropy(lp)
            ties = np.flatnonzero(ent >= ent.max() - _TIE_ATOL)
            pick = int(ties[0]) if len(ties) == 1 else int(ties[ctx.rng.integers(len(ties))])
            idx = remaining.pop(pick)
            chosen.append(idx)
            demo = ctx.pool[idx]
            if self.demo_labels == "predicted":
                demo = replace(demo, label=labels[int(np.argmax(lp[pick]))])
            prompt.append(demo)
        return [ctx.pool[i] for i in chosen]

    def __repr__(self) -> str:
        return f"MaxEntropySelector(demo_labels={self.demo_labels!r})"
