"""Policy-guided search: the trained Q proposes ``m`` prompts, the reward-validation split picks one.

The choice of search: **sampled rollouts**, not beam search. Rollout 1 is the policy's greedy rollout
(exactly :class:`~rl_select.selectors.policy_selector.FixedPromptPolicySelector`'s choice); rollouts 2..m draw each
action from the softmax of the masked Q-values over ``temperature``
(:meth:`SelectorPolicy.select(temperature=, rng=) <rl_select.mdp.policy.SelectorPolicy.select>`), so every
rollout is the same :class:`~rl_select.mdp.episode.SelectionEpisode` + ``run_episode`` as the greedy policy
and the training env (one episode rule). Each distinct proposal is scored once on ``ctx.val`` (labels
used); the most accurate is returned, ties to the earliest, so ``m = 1`` is the greedy policy and a
larger ``m`` never has a lower val accuracy than ``m = 1`` on the same pool and val.

**Screening** (``screen=S``, ``keep=K``, successive halving): every distinct proposal is first scored on the
first ``S`` val rows only; the ``K`` best (ties to the earliest) are then scored on the remaining ``V - S``
rows and the best of those on all ``V`` rows is returned. It buys more proposals for the same val rows:
``m = 6, S = 25, K = 2`` scores ``6 x 25 + 2 x 75 = 300`` rows, as many as ``m = 3`` without screening.

Cost (query rows, all through ``ctx.scorer``): ``m`` rollouts of ``k`` feature calls of ``N + V`` rows each
for the prompt-scoring feature sets (the table sets: the pool's table rows once, reused by every rollout;
repeats are cache hits on a cached scorer, still counted), plus at most ``m`` scorings of ``V`` rows
(screening: ``m x S + K x (V - S)``).
"""

from __future__ import annotations

from typing import Any

from rl_select.errors import SelectionError
from rl_select.mdp.shipped import PRETRAINED_CRITIC
from rl_select.metrics import accuracy
from rl_select.selectors.base import SelectionContext, Selector, check_k, check_val, register_selector
from rl_select.selectors.policy_selector import load_policy, policy_labels, rollout_rows
from rl_select.selectors.tags import CostSetting, SelectorTags
from rl_select.types import Example, is_int


def search_rows(s: CostSetting) -> int:
    """LM rows of the search: the rollouts (the table sets' table once, reused) plus the proposals' val rows
    (``M x V``, or ``M x S + K x (V - S)`` with ``screen = S``, ``keep = K``)."""
    m, v = int(s.args.get("m", 1)), s.n_val
    rollouts = rollout_rows(s) + (0 if s.feature_set in ("table", "table_labelled") else (m - 1) * rollout_rows(s))
    screen, keep = s.args.get("screen"), int(s.args.get("keep", 2))
    if screen is None or int(screen) >= v or m <= keep:
        return rollouts + m * v
    return rollouts + m * int(screen) + keep * (v - int(screen))


@register_selector
class PolicySearchSelector(Selector):
    """Best of ``m`` policy rollouts (greedy first, then softmax-sampled) on val accuracy.

    Args:
        path: The policy's ``.safetensors`` file (default ``"pretrained-critic"``, the shipped one).
        m: Rollouts proposed (``1``: the greedy policy, no val scoring needed but done for the record).
        temperature: Softmax temperature of rollouts 2..m, in Q-value units (Q-values are val-accuracy
            returns, so differences are a few hundredths; ``0.05`` by default).
        force: Use the policy with a scorer other than its training one (warns).
        screen: If set, score every proposal on the first ``screen`` val rows first (see the module
            docstring); ``None`` (default): every proposal on all of val.
        keep: Proposals kept after screening and scored on the rest of val (ignored without ``screen``).

    Attributes:
        last_search_info: After :meth:`select`: ``{"m", "proposals": [[pool index, ...], ...],
            "val_acc": [...], "best": i}`` (``val_acc`` of distinct proposals on all of val; repeats reuse
            it; with screening, proposals dropped after it have ``None`` there and their screening
            accuracy in ``"screen_acc"``).
    """

    name = "policy_search"
    tags = SelectorTags(val_labels=True, pool_labels=True, trained=True, lm=True, per_query=False, count_arg="m",
                        lm_rows=search_rows, labels_read=lambda s: policy_labels(s, int(s.args.get("m", 1))) + s.n_val,
                        cost_note="M x (policy + V); table sets: the table once + M x V (screen S, keep K: "
                                  "M x S + K x (V - S))")

    def __init__(self, path: str = PRETRAINED_CRITIC, m: int = 4, temperature: float = 0.05, force: bool = False,
                 screen: int | None = None, keep: int = 2) -> None:
        if not is_int(m) or isinstance(m, bool) or m < 1:
            raise SelectionError(f"m={m!r}; expected an integer >= 1")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise SelectionError(f"temperature={temperature!r}; expected a number > 0")
        if screen is not None and (not is_int(screen) or screen < 1):
            raise SelectionError(f"screen={screen!r}; expected None or an integer >= 1 (val rows of the first round)")
        if not is_int(keep) or keep < 1:
            raise SelectionError(f"keep={keep!r}; expected an integer >= 1")
        self.path, self.m, self.temperature, self.force = str(path), int(m), float(temperature), bool(force)
        self.screen, self.keep = (None if screen is None else int(screen)), int(keep)
        self.policy = load_policy(path)
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
        keys = [tuple(index[id(d)] for d in p) for p in proposals]
        first = {key: keys.index(key) for key in dict.fromkeys(keys)}  # distinct proposals, in order
        val, info_extra = list(ctx.val), {}
        if self.screen is not None and self.screen < len(val) and len(first) > self.keep:
            head, rest = val[: self.screen], val[self.screen:]
            screen_acc = {key: accuracy(ctx.scorer, demos=proposals[i], examples=head) for key, i in first.items()}
            kept = sorted(first, key=lambda key: (-screen_acc[key], first[key]))[: self.keep]
            scored: dict[tuple, float | None] = {key: None for key in first}
            for key in kept:
                tail = accuracy(ctx.scorer, demos=proposals[first[key]], examples=rest)
                scored[key] = (screen_acc[key] * len(head) + tail * len(rest)) / len(val)
            info_extra = {"screen": self.screen, "keep": self.keep, "screen_acc": [screen_acc[key] for key in keys]}
        else:
            scored = {key: accuracy(ctx.scorer, demos=proposals[i], examples=val) for key, i in first.items()}
        accs = [scored[key] for key in keys]
        best = max((i for i in range(len(proposals)) if accs[i] is not None), key=lambda i: (accs[i], -i))
        self.last_search_info = {"m": self.m, "proposals": [list(key) for key in keys], "val_acc": accs,
                                 "best": best, **info_extra}
        return proposals[best]

    def __repr__(self) -> str:
        screen = "" if self.screen is None else f", screen={self.screen}, keep={self.keep}"
        return f"PolicySearchSelector({self.path!r}, m={self.m}, temperature={self.temperature}{screen})"
