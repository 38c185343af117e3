"""The selector interface shared by every selector, and the name registry.

A selector turns a :class:`SelectionContext` (candidate pool, labelled reward-validation split, ``k``,
the frozen LM's scorer and a seeded generator) into an ordered demonstration list. All LM work goes
through ``ctx.scorer`` so the caller can measure spend from ``scorer.stats`` deltas; all randomness
comes from ``ctx.rng``. Each selector class declares what it needs and costs in ``tags``
(:class:`~rl_select.selectors.tags.SelectorTags`); :func:`register_selector` refuses a class without one.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rl_select.errors import SelectionError, one_of
from rl_select.lm.base import Scorer
from rl_select.selectors.tags import SelectorTags
from rl_select.types import Example


@dataclass
class SelectionContext:
    """Everything a selector may use.

    Attributes:
        pool: Candidate demonstrations; selectors return items of this sequence.
        val: Labelled reward-validation split (used by search-based selectors).
        k: Number of demonstrations to choose.
        scorer: The frozen LM (``rl_select.lm.base.Scorer``); the only route to LM work.
        rng: The only source of randomness.
    """

    pool: Sequence[Example]
    val: Sequence[Example]
    k: int
    scorer: Scorer
    rng: np.random.Generator


def check_k(ctx: SelectionContext) -> None:
    """Raise :class:`SelectionError` unless ``0 <= ctx.k <= len(ctx.pool)``."""
    k, n = ctx.k, len(ctx.pool)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise SelectionError(f"k={k!r} must be an integer between 0 and the pool size {n}")
    if k < 0:
        raise SelectionError(f"k={k} is negative; expected 0 <= k <= pool size {n}")
    if k > n:
        raise SelectionError(f"k={k} is larger than the pool size {n}; expected 0 <= k <= {n}")


def check_val(ctx: SelectionContext, selector: str) -> None:
    """Raise :class:`SelectionError` if ``ctx.val`` is empty (for selectors that measure accuracy)."""
    if len(ctx.val) == 0:
        raise SelectionError(f"selector {selector!r} needs a non-empty validation split; got 0 examples")


class Selector(ABC):
    """Chooses an ordered list of demonstrations from a pool.

    Subclasses set ``name`` (the registry key) and ``tags`` (their declaration) and implement
    :meth:`select`. Per-query selectors (``tags.per_query``, e.g. kNN) override :meth:`select_for`.

    Attributes:
        per_query: Whether this selector gives every query its own demonstrations (the class's
            ``tags.per_query`` where that is a bool; an instance whose arguments decide sets its own).
    """

    name: ClassVar[str]
    tags: ClassVar[SelectorTags]
    per_query: bool = False

    @abstractmethod
    def select(self, ctx: SelectionContext) -> list[Example]:
        """One ordered demonstration list (first item is placed first in the prompt).

        Returns:
            ``ctx.k`` distinct items of ``ctx.pool`` (fewer only where the selector says so).
        """

    def select_for(self, ctx: SelectionContext, queries: Sequence[Example]) -> list[list[Example]]:
        """Demonstrations for each query; the default repeats :meth:`select` for every query.

        Returns:
            A list of ``len(queries)`` ordered demonstration lists.
        """
        demos = self.select(ctx)
        return [list(demos) for _ in queries]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


SELECTORS: dict[str, type[Selector]] = {}


def register_selector(cls: type[Selector]) -> type[Selector]:
    """Class decorator: add ``cls`` to :data:`SELECTORS` under ``cls.name``.

    The class must declare its own ``tags`` (a :class:`SelectorTags`, not inherited); its ``per_query``
    follows the declaration where that is a bool.

    Raises:
        SelectionError: The name is taken by another class, or the class declares no tags.
    """
    if cls.name in SELECTORS and SELECTORS[cls.name] is not cls:
        raise SelectionError(f"selector name {cls.name!r} is already registered by {SELECTORS[cls.name]}")
    if not isinstance(vars(cls).get("tags"), SelectorTags):
        raise SelectionError(f"selector {cls.name!r} ({cls.__qualname__}) declares no tags; expected a class "
                             "attribute tags = SelectorTags(...) saying what it reads and costs")
    if isinstance(cls.tags.per_query, bool):
        cls.per_query = cls.tags.per_query
    SELECTORS[cls.name] = cls
    return cls


def selector_tags(entry: str) -> SelectorTags:
    """The declaration of a selector entry: a registered name, optionally ``NAME:LABEL``.

    Raises:
        SelectionError: An unknown name (the message lists the known names).
    """
    kind = entry.split(":")[0]
    if kind not in SELECTORS:
        raise SelectionError(f"unknown selector {kind!r}; expected one of {one_of(sorted(SELECTORS), kind)}")
    return SELECTORS[kind].tags


def make_selector(name: str, **kwargs: Any) -> Selector:
    """Instantiate the registered selector ``name`` with ``kwargs``.

    Raises:
        SelectionError: ``name`` is unknown (the message lists the known names), or the keyword
            arguments do not fit the selector.
    """
    try:
        cls = SELECTORS[name]
    except KeyError:
        raise SelectionError(f"unknown selector {name!r}; expected one of {one_of(sorted(SELECTORS), name)}") from None
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [p for p in params if p != "self"]
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise SelectionError(f"selector {name!r} has no setting {unknown[0]!r}; expected some of "
                                 f"{one_of(known, unknown[0]) if known else 'none (it takes no settings)'}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SelectionError(f"bad arguments {sorted(kwargs)} for selector {name!r}: {exc}") from None
