"""Shared plain data types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Example:
    """One labelled row of a classification task.

    Attributes:
        text: The (first) input text.
        label: The canonical label name (a key of ``TaskSpec.verbalizers``).
        text2: The second input of a sentence-pair task (rte, cb), else ``None``.
        uid: A stable identifier within its source (``"train:17"``); not part of any cache key.
    """

    text: str
    label: str
    text2: str | None = None
    uid: str = field(default="", compare=False)

    def content(self) -> tuple[str, str | None, str]:
        """The fields that define the example's content (used in cache keys)."""
        return (self.text, self.text2, self.label)


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy integer (``bool`` is not)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
