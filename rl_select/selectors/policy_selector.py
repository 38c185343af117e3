"""A trained :class:`~rl_select.mdp.policy.SelectorPolicy` behind the selector interface, and the LM cost of
its rollouts that every policy selector shares.

The policy module (and torch) is imported when a policy is loaded, so the registry itself stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rl_select.mdp.shipped import PRETRAINED_CRITIC
from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.selectors.tags import CostSetting, SelectorTags
from rl_select.types import Example

if TYPE_CHECKING:
    from rl_select.mdp.policy import SelectorPolicy

LABELLED_SETS = ("labelled", "table_labelled")
"""Feature sets that read every candidate's label."""


def load_policy(path: str) -> SelectorPolicy:
    """The policy file at ``path`` (:meth:`SelectorPolicy.load <rl_select.mdp.policy.SelectorPolicy.load>`);
    ``"pretrained-critic"`` is the fixed-prompt policy with its probe critic shipped in the package."""
    from rl_select.mdp.policy import SelectorPolicy

    return SelectorPolicy.load(path)


def uses_table(s: CostSetting) -> bool:
    """Whether the policy's feature set reads the one-off row table."""
    from rl_select.mdp.feature_spec import FeatureSpec

    return FeatureSpec(s.feature_set).uses_table


def rollout_rows(s: CostSetting) -> int:
    """LM rows of one greedy rollout: ``k x (P + V)`` for the prompt-scoring sets; the table sets: ``P`` table
    rows once (``zeroshot``: ``P + V`` table rows and ``k x V`` under the prompts)."""
    if not uses_table(s):
        return s.k * (s.n_pool + s.n_val)
    return s.n_pool + (s.n_val + s.k * s.n_val if s.feature_set == "zeroshot" else 0)


def policy_labels(s: CostSetting, m: int = 1) -> int:
    """Labels ``m`` rollouts read: the pool's (the labelled sets) or the chosen demos' (label-free sets)."""
    return s.n_pool if s.feature_set in LABELLED_SETS else min(s.n_pool, m * s.k)


@register_selector
class FixedPromptPolicySelector(Selector):
    """Greedy rollout of a learned Q-network (``rl-select train``) on the context's pool.

    Args:
        path: The policy's ``.safetensors`` file (default ``"pretrained-critic"``, the shipped one).
        force: Use the policy with a scorer other than the one it was trained with (warns); by default
            that is refused with one line naming both.
    """

    name = "policy"
    tags = SelectorTags(val_labels=False, pool_labels=True, trained=True, lm=True, per_query=False, count_arg=None,
                        lm_rows=rollout_rows, labels_read=policy_labels,
                        cost_note="k x (P + V); table sets: P table rows (zeroshot: P + V, and k x V)")

    def __init__(self, path: str = PRETRAINED_CRITIC, force: bool = False) -> None:
        self.path = str(path)
        self.force = force
        self.policy = load_policy(path)

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        if ctx.k == 0:
            return []
        return self.policy.select(ctx.pool, scorer=ctx.scorer, val=ctx.val, k=ctx.k, force=self.force)

    def __repr__(self) -> str:
        return f"FixedPromptPolicySelector({self.path!r})"
