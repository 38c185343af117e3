"""The trained Q as a critic of random prompts: draw ``n_sets`` random k-shot orders, return the one whose
predicted return (the Q-value of its last step) is highest.

Why: the greedy policy takes the arg-max of Q over the whole pool at every step, which drives it to the
edges of the features the logged random episodes covered (an offline Q extrapolates there). Ranking random
prompts keeps every prompt it judges inside the distribution it was trained on. In the LM-free check
``python benchmarks/q_ranking.py "runs/rollouts/*table_labelled*.jsonl" --leave-one-out --seeds 0,1,2``
(each reference task's store held out, the Q trained on the other three) the top-ranked of 32 held-out
random sets beat the average held-out set by 4.3 points of validation accuracy (``rank32``), where the
greedy policy's own choices were not better than random on test. ``n_sets = 32`` is that check's setting.

Label-free at selection like ``policy`` (it reads what the policy's features read: with ``table_labelled``,
the pool's own labels; never a validation label). LM cost: the feature set's; for the table sets the
pool's table rows once (``P``), no prompt scored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rl_select.errors import SelectionError
from rl_select.mdp.shipped import PRETRAINED_CRITIC
from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.selectors.policy_selector import load_policy, policy_labels, rollout_rows, uses_table
from rl_select.selectors.tags import CostSetting, SelectorTags
from rl_select.types import Example, is_int


def rank_rows(s: CostSetting) -> int:
    """LM rows of ranking: the table sets' table once; the prompt-scoring sets score every step of every order."""
    if uses_table(s) and s.feature_set != "zeroshot":
        return rollout_rows(s)
    return int(s.args.get("n_sets", 32)) * rollout_rows(s)


@register_selector
class PolicyRankSelector(Selector):
    """Best of ``n_sets`` random orders by the policy's predicted return (no val labels, no prompt scored).

    Args:
        path: The policy's ``.safetensors`` file (default ``"pretrained-critic"``, the shipped one).
        n_sets: Random k-shot orders drawn from the pool (``ctx.rng``, without replacement within an order).
        force: Use the policy with a scorer other than its training one (warns).

    Attributes:
        last_rank_info: After :meth:`select`: ``{"orders": [[pool index, ...], ...], "q": [...], "best": i}``.
    """

    name = "policy_rank"
    tags = SelectorTags(val_labels=False, pool_labels=True, trained=True, lm=True, per_query=False, count_arg=None,
                        lm_rows=rank_rows, labels_read=policy_labels,
                        cost_note="table sets: P table rows; else n_sets x policy")

    def __init__(self, path: str = PRETRAINED_CRITIC, n_sets: int = 32, force: bool = False) -> None:
        if not is_int(n_sets) or n_sets < 1:
            raise SelectionError(f"n_sets={n_sets!r}; expected an integer >= 1")
        self.path, self.n_sets, self.force = str(path), int(n_sets), bool(force)
        self.policy = load_policy(path)
        self.last_rank_info: dict[str, Any] | None = None

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        if ctx.k == 0:
            return []
        n = len(ctx.pool)
        orders = [ctx.rng.choice(n, size=ctx.k, replace=False).tolist() for _ in range(self.n_sets)]
        q = self.policy.q_of_orders(ctx.pool, orders, scorer=ctx.scorer, val=ctx.val, force=self.force)
        best = int(np.argmax(q))  # ties: the first drawn
        self.last_rank_info = {"orders": orders, "q": q.tolist(), "best": best}
        return [ctx.pool[i] for i in orders[best]]

    def __repr__(self) -> str:
        return f"PolicyRankSelector({self.path!r}, n_sets={self.n_sets})"
