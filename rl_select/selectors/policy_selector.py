"""A trained :class:`~rl_select.mdp.policy.SelectorPolicy` behind the baseline selector interface."""

from __future__ import annotations

from rl_select.mdp.policy import SelectorPolicy
from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.types import Example


@register_selector
class PolicySelector(Selector):
    """Greedy rollout of a learned Q-network (``rl-select train``) on the context's pool.

    Args:
        path: The policy's ``.safetensors`` file.
        force: Use the policy with a scorer other than the one it was trained with (warns); by default
            that is refused with one line naming both.
    """

    name = "policy"

    def __init__(self, path: str, force: bool = False) -> None:
        self.path = str(path)
        self.force = force
        self.policy = SelectorPolicy.load(path)

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        if ctx.k == 0:
            return []
        return self.policy.select(ctx.pool, scorer=ctx.scorer, val=ctx.val, k=ctx.k, force=self.force)

    def __repr__(self) -> str:
        return f"PolicySelector({self.path!r})"
