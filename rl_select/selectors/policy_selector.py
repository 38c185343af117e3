"""A trained :class:`~rl_select.policy.SelectorPolicy` behind the baseline selector interface."""

from __future__ import annotations

from rl_select.policy import SelectorPolicy
from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.types import Example


@register_selector
class PolicySelector(Selector):
    """Greedy rollout of a learned Q-network (``rl-select train``) on the context's pool.

    Args:
        path: The policy's ``.safetensors`` file.
        strict: Refuse (instead of warn) when the scorer's LM is not the one the policy was trained with.
    """

    name = "policy"

    def __init__(self, path: str, strict: bool = False) -> None:
        self.path = str(path)
        self.strict = strict
        self.policy = SelectorPolicy.load(path)

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        if ctx.k == 0:
            return []
        return self.policy.select(ctx.pool, scorer=ctx.scorer, val=ctx.val, k=ctx.k, strict=self.strict)

    def __repr__(self) -> str:
        return f"PolicySelector({self.path!r})"
