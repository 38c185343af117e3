"""What a selector needs and costs, declared on its class (scikit-learn's estimator tags, for selectors).

Every registered :class:`~rl_select.selectors.base.Selector` sets ``tags = SelectorTags(...)``. The cost
estimates of ``rl-select ablate``, the grouping of ``docs/results.md``, the prompt files' LM check and the
CLI read these declarations; no module keeps its own list of selector names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CostSetting:
    """The settings a selector's cost formulas read.

    Attributes:
        n_pool: P, the candidate pool size.
        n_val: V, the reward-validation size.
        n_test: T, the test rows (``None``: the whole test file, not known here).
        k: Demonstrations to choose.
        args: The entry's selector arguments; an entry ``NAME:M`` has ``M`` under its
            :attr:`SelectorTags.count_arg`.
        feature_set: The trained policy's feature set (:data:`~rl_select.mdp.feature_spec.FEATURE_SETS`).
    """

    n_pool: int
    n_val: int
    n_test: int | None
    k: int
    args: Mapping[str, Any] = field(default_factory=dict)
    feature_set: str = "active"


Formula = Callable[[CostSetting], int]
"""A cost as a function of the settings."""


@dataclass(frozen=True, kw_only=True)
class SelectorTags:
    """A selector's declaration: what it reads, whether it needs a policy or the LM, and what it costs.

    Every field is required, so a selector states each fact itself.

    Attributes:
        val_labels: Reads validation labels at selection (a search judged on val accuracy).
        pool_labels: Reads pool labels (its demonstrations are shown with their labels).
        trained: Needs a trained policy file (``rl-select ablate`` trains one per cell and seed).
        lm: Calls the LM at selection (with its default arguments).
        per_query: Gives every query its own demonstrations: a bool, or ``per_query(args)`` where an
            argument decides.
        count_arg: The argument an entry ``NAME:M`` sets to ``M`` (``policy_search:4``: ``m = 4``), or
            ``None`` where a label is only a name.
        lm_rows: ``lm_rows(setting)``: estimated LM query rows to select (the scorer's ``queries``
            counter, cache hits included); an upper bound before the cache.
        labels_read: ``labels_read(setting)``: labelled examples read at selection (demonstrations shown,
            val labels scored), training not included.
        cost_note: :attr:`lm_rows` as a formula in words (P pool, V val, k).
    """

    val_labels: bool
    pool_labels: bool
    trained: bool
    lm: bool
    per_query: bool | Callable[[Mapping[str, Any]], bool]
    count_arg: str | None
    lm_rows: Formula
    labels_read: Formula
    cost_note: str

    @property
    def label_free(self) -> bool:
        """Reads no validation label at selection."""
        return not self.val_labels

    @property
    def label_free_trained(self) -> bool:
        """A trained selector whose selection reads only pool labels (no validation label)."""
        return self.trained and not self.val_labels

    def is_per_query(self, args: Mapping[str, Any]) -> bool:
        """Whether the selector with ``args`` prompts every query with its own demonstrations."""
        return bool(self.per_query(args) if callable(self.per_query) else self.per_query)

    def labels(self) -> str:
        """The labels it reads at selection, in words: ``none``, ``pool labels`` or ``pool + val labels``."""
        if self.val_labels:
            return "pool + val labels"
        return "pool labels" if self.pool_labels else "none"


def prompts_drawn(s: CostSetting, default: int) -> int:
    """The ``n_prompts`` argument (random prompts drawn), else ``default``."""
    return int(s.args.get("n_prompts", default))
