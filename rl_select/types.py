"""Shared plain data types."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
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


def document_sha256(doc: Mapping[str, Any], *, exclude: str = "sha256", extra: str = "") -> str:
    """SHA-256 of a JSON document's canonical text: every field but ``exclude`` (the hash's own field).

    The text is ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` of the document as
    JSON reads it back (tuples as lists, keys as strings), so the digest written is the digest a reader
    recomputes. ``extra`` (e.g. the hash of a file's tensors) is hashed after it.

    Args:
        doc: A JSON-serialisable mapping.
        exclude: The top-level field left out (where the digest itself is stored).
        extra: Text hashed after the document (after a NUL byte).

    Returns:
        The hex digest.
    """
    body = json.loads(json.dumps({k: v for k, v in doc.items() if k != exclude}))
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    h = hashlib.sha256(text.encode("utf-8", "surrogatepass"))
    h.update(b"\0" + extra.encode("utf-8", "surrogatepass"))
    return h.hexdigest()
