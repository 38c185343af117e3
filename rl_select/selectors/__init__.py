"""Demonstration selectors behind one interface (:class:`Selector`), and their registry.

The non-RL baselines, ``policy`` (a trained :class:`~rl_select.mdp.policy.SelectorPolicy`) and
``policy_search`` (the best of ``m`` policy rollouts on val), ``policy_rank`` (the best of random prompts
by the policy's predicted return, no val labels) and ``policy_probe`` (the best of random prompts by the
policy's probe critic, from the val texts' predictions, no val labels).

Importing this package registers every built-in selector in :data:`SELECTORS`, so
``make_selector("greedy", max_candidates=16)`` works from anywhere. Each selector class declares what it
needs and costs in ``tags`` (:class:`SelectorTags`; ``selector_tags("policy_search:4")`` reads an entry's).
"""

from rl_select.selectors.base import (
    SELECTORS,
    SelectionContext,
    Selector,
    check_k,
    check_val,
    make_selector,
    register_selector,
    selector_tags,
)
from rl_select.selectors.tags import CostSetting, SelectorTags

# isort: off
# Registration order is the registry's order (help texts, the results' baselines): the label-free baselines
# cheapest first, then the searches on val accuracy, then the trained selectors.
from rl_select.selectors.zero_shot import ZeroShotSelector
from rl_select.selectors.random_selector import RandomSelector
from rl_select.selectors.knn import KNNSelector
from rl_select.selectors.neighbour_rules import (
    BalancedNeighboursSelector,
    MajorityNeighboursSelector,
    MMRNeighboursSelector,
)
from rl_select.selectors.max_entropy import MaxEntropySelector
from rl_select.selectors.global_entropy import GlobalEntropySelector
from rl_select.selectors.random_search import RandomSearchSelector
from rl_select.selectors.greedy import GreedySelector
from rl_select.selectors.policy_selector import FixedPromptPolicySelector
from rl_select.selectors.policy_search import PolicySearchSelector
from rl_select.selectors.policy_rank import PolicyRankSelector
from rl_select.selectors.policy_probe import PolicyProbeSelector
from rl_select.selectors.policy_per_query import PerQueryPolicySelector
# isort: on

__all__ = [
    "SELECTORS",
    "BalancedNeighboursSelector",
    "MajorityNeighboursSelector",
    "MMRNeighboursSelector",
    "PerQueryPolicySelector",
    "GlobalEntropySelector",
    "GreedySelector",
    "KNNSelector",
    "MaxEntropySelector",
    "PolicyProbeSelector",
    "PolicyRankSelector",
    "PolicySearchSelector",
    "FixedPromptPolicySelector",
    "RandomSearchSelector",
    "RandomSelector",
    "CostSetting",
    "SelectionContext",
    "Selector",
    "SelectorTags",
    "ZeroShotSelector",
    "check_k",
    "check_val",
    "make_selector",
    "register_selector",
    "selector_tags",
]
