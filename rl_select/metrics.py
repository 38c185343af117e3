"""Accuracy of an ordered demonstration list on a split: the reward of the selection MDP."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rl_select.errors import SelectionError
from rl_select.lm.base import Scorer
from rl_select.types import Example


def label_ids(labels: Sequence[str], examples: Sequence[Example]) -> np.ndarray:
    """Gold label indices. Shape: ``(len(examples),)``, int64."""
    index = {lab: i for i, lab in enumerate(labels)}
    try:
        return np.array([index[e.label] for e in examples], dtype=np.int64)
    except KeyError as exc:
        raise SelectionError(f"label {exc.args[0]!r} is not one of the task's labels {list(labels)}") from None


def accuracy(scorer: Scorer, *, demos: Sequence[Example], examples: Sequence[Example]) -> float:
    """Fraction of ``examples`` whose arg-max label under ``demos`` is the gold one."""
    if not examples:
        raise SelectionError("cannot measure accuracy on an empty split; expected at least one example")
    lp = scorer.logprobs(demos=demos, queries=examples)
    gold = label_ids(scorer.spec.labels, examples)
    return float(np.mean(lp.argmax(axis=1) == gold))
