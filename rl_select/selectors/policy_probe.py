"""The trained policy's probe critic as a label-free search: draw ``n_prompts`` random k-shot prompts (the
draws ``random_search`` and ``global_entropy`` make), score each on the reward-validation TEXTS, and keep the
one the critic values highest.

The critic (:mod:`rl_select.mdp.critic`) is the terminal-state value the offline agent's rollouts teach:
a ridge regression of each logged episode's return on label-free statistics of its final prompt's
predictions (how evenly they spread over the labels, how confident they are) and the prompt's label
balance. Trained on other tasks, it carries over to a new one because those statistics mean the same thing
on any classification task. Train it with ``agent.probe_critic = true``.

Label-free at selection: the val labels are never read (the demos' own labels are). LM cost:
``n_prompts`` scorer calls of ``len(val)`` queries, the rows ``random_search:n_prompts`` scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rl_select.errors import SelectionError
from rl_select.mdp.policy import SelectorPolicy
from rl_select.selectors.base import SelectionContext, Selector, check_k, register_selector
from rl_select.types import Example, is_int


@register_selector
class PolicyProbeSelector(Selector):
    """Best of ``n_prompts`` random prompts by the policy's probe critic (val texts only).

    Args:
        path: The policy's ``.safetensors`` file (trained with ``agent.probe_critic = true``).
        n_prompts: Random prompts drawn from the pool.
        force: Use the policy with a scorer other than its training one (warns).

    Attributes:
        last_info: After :meth:`select`: ``{"values": [...], "features": [[...], ...], "best": i}``.
    """

    name = "policy_probe"

    def __init__(self, path: str, n_prompts: int = 16, force: bool = False) -> None:
        if not is_int(n_prompts) or n_prompts < 1:
            raise SelectionError(f"n_prompts={n_prompts!r}; expected an integer >= 1")
        self.path, self.n_prompts, self.force = str(path), int(n_prompts), bool(force)
        self.policy = SelectorPolicy.load(path)
        if self.policy.critic is None:
            raise SelectionError(f"policy {self.path!r} has no probe critic; expected one trained with "
                                 "agent.probe_critic = true")
        self.last_info: dict[str, Any] | None = None

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        if ctx.k == 0:
            return []
        prompts = [[ctx.pool[int(i)] for i in ctx.rng.permutation(len(ctx.pool))[: ctx.k]]
                   for _ in range(self.n_prompts)]
        values, feats = self.policy.critic_values(prompts, scorer=ctx.scorer, val=ctx.val, force=self.force)
        best = int(np.argmax(values))  # ties: the first drawn
        self.last_info = {"values": values.tolist(), "features": feats.tolist(), "best": best}
        return prompts[best]

    def __repr__(self) -> str:
        return f"PolicyProbeSelector({self.path!r}, n_prompts={self.n_prompts})"
