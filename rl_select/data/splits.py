"""Seeded splits of a task's examples: pool, validation, rest and test (optionally label-balanced)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rl_select.errors import DataError
from rl_select.types import Example


@dataclass(frozen=True)
class Splits:
    """The seeded splits of one task.

    Attributes:
        pool: Candidate demonstrations (labelled), length ``n_pool``.
        val: Reward / validation queries (labelled), length ``n_val``; disjoint from ``pool``.
        rest: The rest of the train file, unused as demos or val (for unlabelled uses, e.g. features).
        test: Held-out evaluation queries, the whole test file or a seeded subsample.
    """

    pool: tuple[Example, ...]
    val: tuple[Example, ...]
    rest: tuple[Example, ...]
    test: tuple[Example, ...]

    def sizes(self) -> dict[str, int]:
        """``{"pool": n, "val": n, "rest": n, "test": n}``."""
        return {"pool": len(self.pool), "val": len(self.val), "rest": len(self.rest), "test": len(self.test)}


def make_splits(
    train: Sequence[Example],
    test: Sequence[Example],
    *,
    n_pool: int,
    n_val: int,
    n_test: int | None = None,
    seed: int,
    stratify: bool = False,
) -> Splits:
    """Draw the pool, the validation set and (optionally) a test subsample, seeded.

    Both inputs are first put in a stable order (sorted by content), so the result depends only on
    the data, the sizes and ``seed``, not on file order or machine. ``val`` is drawn first and
    ``pool`` from what remains, so changing ``n_pool`` keeps ``val`` fixed (comparable rewards), and
    without ``stratify`` a smaller pool is a prefix of a larger one. The test subsample uses its own
    random stream: it does not change with ``n_pool`` / ``n_val`` and is never stratified; with
    ``n_test=None`` (or ``0``) the test split is kept whole, in its given order.

    Args:
        train: Labelled examples to draw pool and val from.
        test: Held-out examples.
        n_pool: Pool size (>= 1).
        n_val: Validation size (>= 0).
        n_test: Test subsample size; ``None`` or ``0`` keeps the whole test split.
        seed: Seed for ``numpy.random.default_rng``.
        stratify: Balance labels in pool and val as evenly as the data allows (a rare class gives
            all it has; the others fill the rest).

    Returns:
        The :class:`Splits`.

    Raises:
        DataError: An empty split, a negative size, or sizes larger than the data (with the numbers).
    """
    if not train:
        raise DataError("train split is empty; expected at least one example")
    if not test:
        raise DataError("test split is empty; expected at least one example")
    if n_pool < 1 or n_val < 0:
        raise DataError(f"n_pool={n_pool}, n_val={n_val}; expected n_pool >= 1 and n_val >= 0")
    if n_pool + n_val > len(train):
        raise DataError(
            f"n_pool + n_val = {n_pool} + {n_val} = {n_pool + n_val} exceeds the {len(train)} train examples"
        )
    if n_test == 0:
        n_test = None  # the run config's "0: the whole test file"
    if n_test is not None and not 1 <= n_test <= len(test):
        raise DataError(f"n_test={n_test} but the test split has {len(test)} rows; expected 1..{len(test)}, or 0 for "
                        "the whole test split")
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    ordered = _stable_order(train)
    if stratify:
        val_idx = _draw_stratified(ordered, range(len(ordered)), n_val, train_rng)
        left = sorted(set(range(len(ordered))) - set(val_idx))
        pool_idx = _draw_stratified(ordered, left, n_pool, train_rng)
        used = set(val_idx) | set(pool_idx)
        rest_idx = [int(i) for i in train_rng.permutation(len(ordered)) if i not in used]
    else:
        perm = [int(i) for i in train_rng.permutation(len(ordered))]
        val_idx, pool_idx, rest_idx = perm[:n_val], perm[n_val : n_val + n_pool], perm[n_val + n_pool :]
    test_kept = list(test)
    if n_test is not None:
        stable = _stable_order(test)
        test_kept = [stable[int(i)] for i in test_rng.permutation(len(stable))[:n_test]]
    return Splits(
        pool=tuple(ordered[i] for i in pool_idx),
        val=tuple(ordered[i] for i in val_idx),
        rest=tuple(ordered[i] for i in rest_idx),
        test=tuple(test_kept),
    )


def _stable_order(examples: Sequence[Example]) -> list[Example]:
    """Examples sorted by (text, text2, label, uid): independent of file order and machine."""
    return sorted(examples, key=lambda e: (e.text, e.text2 or "", e.label, e.uid))


def _draw_stratified(
    examples: Sequence[Example], candidates: Iterable[int], n: int, rng: np.random.Generator
) -> list[int]:
    """Indices of ``n`` label-balanced examples from ``candidates``, in random order.

    Args:
        examples: All examples (indexed by ``candidates``).
        candidates: Indices that may be drawn, in a stable order.
        n: How many to draw (<= number of candidates).
        rng: The random stream.

    Returns:
        ``n`` distinct indices, shuffled.
    """
    by_label: dict[str, list[int]] = {}
    for i in candidates:
        by_label.setdefault(examples[i].label, []).append(i)
    labels = sorted(by_label)
    quota = balanced_counts({lab: len(by_label[lab]) for lab in labels}, n, rng)
    drawn: list[int] = []
    for lab in labels:
        members = by_label[lab]
        drawn.extend(members[int(j)] for j in rng.permutation(len(members))[: quota[lab]])
    return [drawn[int(j)] for j in rng.permutation(len(drawn))]


def balanced_counts(available: Mapping[str, int], n: int, rng: np.random.Generator) -> dict[str, int]:
    """Split ``n`` draws over labels as evenly as ``available`` allows ("water filling").

    A label with fewer examples than its fair share gives all of them and the others share the rest;
    when ``n`` does not divide evenly, the extra draws go to labels chosen by ``rng``.

    Args:
        available: Label -> number of examples available.
        n: Total draws, at most ``sum(available.values())``.
        rng: Breaks ties for the remainder.

    Returns:
        Label -> draws, summing to ``n``; each at most its availability, and any two labels that are
        not at their availability differ by at most one.
    """
    if n > sum(available.values()):
        raise DataError(f"cannot draw {n} examples from {sum(available.values())} ({dict(available)})")
    counts = {lab: 0 for lab in available}
    active = sorted(lab for lab, a in available.items() if a > 0)
    remaining = n
    while remaining > 0:
        share, extra = divmod(remaining, len(active))
        capped = [lab for lab in active if available[lab] - counts[lab] <= share]
        if capped:
            for lab in capped:
                remaining -= available[lab] - counts[lab]
                counts[lab] = available[lab]
            active = [lab for lab in active if lab not in capped]
            continue
        for lab in active:
            counts[lab] += share
        for j in rng.choice(len(active), size=extra, replace=False):
            counts[active[int(j)]] += 1
        remaining = 0
    return counts


def label_counts(examples: Iterable[Example]) -> dict[str, int]:
    """Label -> number of examples, sorted by label name."""
    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex.label] = counts.get(ex.label, 0) + 1
    return dict(sorted(counts.items()))
