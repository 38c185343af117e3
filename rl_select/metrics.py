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


PROBE_STATS: tuple[str, ...] = ("pred_entropy", "mean_entropy", "mean_max", "query_entropy")
"""Label-free statistics of a prompt's predictions on unlabelled queries (:func:`probe_stats`), in order."""


def _norm_entropy(p: np.ndarray, n_labels: int) -> np.ndarray:
    """Entropy of each row of ``p`` ``(..., L)`` divided by log L (0 for one label)."""
    if n_labels < 2:
        return np.zeros(p.shape[:-1])
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1) / np.log(n_labels)


def probe_stats(logprobs: np.ndarray) -> np.ndarray:
    """Label-free statistics of one prompt from its label log-probs on unlabelled queries ``(n, L)``.

    Returns ``(4,)`` float64 in :data:`PROBE_STATS` order, each in ``[0, 1]``:

    * ``pred_entropy``: entropy of the histogram of arg-max predictions / log L (GlobalE of Lu et al. 2022,
      "Fantastically Ordered Prompts"): 0 when every query gets the same label;
    * ``mean_entropy``: entropy of the mean predicted label distribution / log L;
    * ``mean_max``: mean top label probability (confidence);
    * ``query_entropy``: mean of each query's own entropy / log L.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[0] == 0:
        raise SelectionError(f"probe log-probs have shape {lp.shape}; expected (n >= 1, labels)")
    n_labels = lp.shape[1]
    probs = np.exp(lp - np.logaddexp.reduce(lp, axis=1, keepdims=True))
    hist = np.bincount(probs.argmax(axis=1), minlength=n_labels) / lp.shape[0]
    return np.array([_norm_entropy(hist, n_labels), _norm_entropy(probs.mean(axis=0), n_labels),
                     probs.max(axis=1).mean(), _norm_entropy(probs, n_labels).mean()], dtype=np.float64)
