"""Policy-guided search: the trained Q proposes ``m`` prompts, the reward-validation split picks one.

The choice of search: **sampled rollouts**, not beam search. Rollout 1 is the policy's greedy rollout
(exactly :class:`~rl_select.selectors.policy_selector.PolicySelector`'s choice); rollouts 2..m draw each
action from the softmax of the masked Q-values over ``temperature``
(:meth:`SelectorPolicy.select(temperature=, rng=) <rl_select.mdp.policy.SelectorPolicy.select>`), so every
rollout is the same :class:`~rl_select.mdp.episode.SelectionEpisode` + ``run_episode`` as the greedy policy
and the training env (one episode rule). Each distinct proposal is scored once on ``ctx.val`` (labels
used); the most accurate is returned, ties to the earliest, so ``m = 1`` is the greedy policy and a
larger ``m`` never has a lower val accuracy than ``m = 1`` on the same pool and val.

Cost (query rows, all through ``ctx.scorer``): ``m`` rollouts of ``k`` feature calls of ``N + V`` rows each
(repeats are cache hits on a cached scorer, still counted), plus at most ``m`` scorings of ``V`` rows.
"""

from __future__ import annotations

from typing import Any

from rl_select.errors import SelectionError
from rl_select.mdp.policy import SelectorPolicy
from rl_select.metrics import accuracy
from rl_select.selectors.base import SelectionContext, Selector, check_k, check_val, register_selector
from rl_select.types import Example, is_int


@register_selector
class PolicySearchSelector(Selector):
    """Best of ``m`` policy rollouts (greedy first, then softmax-sampled) on val accuracy.

    Args:
        path: The policy's ``.safetensors`` file.
        m: Rollouts proposed (``1``: the greedy policy, no val scoring needed but done for the record).
        temperature: Softmax temperature of rollouts 2..m, in Q-value units (Q-values are val-accuracy
            returns, so differences are a few hundredths; ``0.05`` by default).
        force: Use the policy with a scorer other than its training one (warns).

    Attributes:
        last_search_info: After :meth:`select`: ``{"m", "proposals": [[pool index, ...], ...],
            "val_acc": [...], "best": i}`` (``val_acc`` of distinct proposals; repeats reuse it).
    """

    name = "policy_search"

    def __init__(self, path: str, m: int = 4, temperature: float = 0.05, force: bool = False) -> None:
        if not is_int(m) or isinstance(m, bool) or m < 1:
            raise SelectionError(f"m={m!r}; expected an integer >= 1")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise SelectionError(f"temperature={temperature!r}; expected a number > 0")
        self.path, self.m, self.temperature, self.force = str(path), int(m), float(temperature), bool(force)
        self.policy = SelectorPolicy.load(path)
        self.last_search_info: dict[str, Any] | None = None

    def select(self, ctx: SelectionContext) -> list[Example]:
        check_k(ctx)
        if ctx.k == 0:
            return []
        check_val(ctx, self.name)
        index = {id(d): i for i, d in enumerate(ctx.pool)}
        proposals: list[list[Example]] = []
        for i in range(self.m):
            sampled = {} if i == 0 else {"temperature": self.temperature, "rng": ctx.rng}
            proposals.append(self.policy.select(ctx.pool, scorer=ctx.scorer, val=ctx.val, k=ctx.k,
                                                force=self.force, **sampled))
        scored: dict[tuple, float] = {}
        accs: list[float] = []
        for demos in proposals:
            key = tuple(index[id(d)] for d in demos)
            if key not in scored:
                scored[key] = accuracy(ctx.scorer, demos=demos, examples=ctx.val)
            accs.append(scored[key])
        best = max(range(len(proposals)), key=lambda i: (accs[i], -i))
        self.last_search_info = {"m": self.m, "proposals": [[index[id(d)] for d in p] for p in proposals],
                                 "val_acc": accs, "best": best}
        return proposals[best]

    def __repr__(self) -> str:
        return f"PolicySearchSelector({self.path!r}, m={self.m}, temperature={self.temperature})"
