"""The one-off row table: what an episode needs about a train row that does not depend on the prompt.

For every row (a pool candidate or a validation query) the table holds, computed once per
(model, task, row) and read by every episode, run and seed:

* ``logprobs``: its zero-shot label log-probs, ``scorer.logprobs(demos=[], queries=[row])``
  (calibrated when the scorer calibrates);
* ``embedding``: its unit embedding (the featurizer's embedder, hashed bag of words by default);
* ``length``: ``min(log1p(words) / log1p(256), 1)``, its length on a fixed scale ``[0, 1]``.

The table is keyed by :func:`table_key` (scorer fingerprint, task digest, calibration, embedder,
:data:`TABLE_VERSION`). Saved as ``<folder>/rows-<key>.npz`` (:meth:`RowTable.in_folder`), a file whose
recorded key differs from the scorer's is rebuilt, never reused. Missing rows are filled in one batched
scorer call (:meth:`RowTable.ensure`); the file is rewritten atomically after a fill.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rl_select.embeddings import Embedder, HashingEmbedder, example_text, l2_normalise
from rl_select.lm.base import Scorer
from rl_select.types import Example

TABLE_VERSION = 1
"""Layout version of a row table file."""

LENGTH_SCALE_WORDS = 256
"""``length = min(log1p(words) / log1p(LENGTH_SCALE_WORDS), 1)``."""


def row_id(example: Example) -> str:
    """Content hash of one row (text, text2, label)."""
    return hashlib.sha256(json.dumps(example.content(), ensure_ascii=False).encode()).hexdigest()[:32]


def _embedder_name(embedder: Embedder) -> str:
    return f"{type(embedder).__module__}.{type(embedder).__name__}:{getattr(embedder, 'dim', '')}"


def table_identity(scorer: Scorer, embedder: Embedder) -> dict[str, Any]:
    """What a table's values depend on: scorer fingerprint, task digest, calibration, embedder, version."""
    return {
        "version": TABLE_VERSION,
        "scorer": str(scorer.fingerprint),
        "task": scorer.spec.digest_fields(),
        "calibrate": bool(getattr(scorer, "calibrate", False)),
        "embedder": _embedder_name(embedder),
    }


def table_key(scorer: Scorer, embedder: Embedder) -> str:
    """Short hash of :func:`table_identity`."""
    return hashlib.sha256(json.dumps(table_identity(scorer, embedder), sort_keys=True).encode()).hexdigest()[:20]


def row_length(example: Example) -> float:
    """The ``length`` feature of a row."""
    words = len(example_text(example).split())
    return min(math.log1p(words) / math.log1p(LENGTH_SCALE_WORDS), 1.0)


class RowTable:
    """Prompt-independent per-row values, filled lazily, optionally kept in a file.

    Args:
        scorer: The frozen LM (its zero-shot log-probs fill the table).
        embedder: The embedder (``None``: :class:`HashingEmbedder`).
        path: The table file (``None``: in memory only). A file with another key is rebuilt.

    Attributes:
        key: :func:`table_key` of this scorer and embedder.
        lm_rows: Rows this table asked the scorer for (its one-off LM cost in this process).
        rebuilt: ``None``, or why an existing file was not reused.
    """

    def __init__(self, scorer: Scorer, *, embedder: Embedder | None = None, path: str | Path | None = None) -> None:
        self.scorer = scorer
        self.embedder: Embedder = embedder if embedder is not None else HashingEmbedder()
        self.identity = table_identity(scorer, self.embedder)
        self.key = table_key(scorer, self.embedder)
        self.path = Path(path) if path is not None else None
        self.n_labels = len(scorer.spec.labels)
        self._index: dict[str, int] = {}
        self._lp: list[np.ndarray] = []
        self._emb: list[np.ndarray] = []
        self._len: list[float] = []
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.lm_rows = 0
        self.rebuilt: str | None = None
        if self.path is not None and self.path.exists():
            self._load()

    @classmethod
    def in_folder(cls, scorer: Scorer, folder: str | Path, *, embedder: Embedder | None = None) -> RowTable:
        """The table of this scorer and embedder in ``folder`` (file ``rows-<key>.npz``)."""
        emb = embedder if embedder is not None else HashingEmbedder()
        return cls(scorer, embedder=emb, path=Path(folder) / f"rows-{table_key(scorer, emb)}.npz")

    def __len__(self) -> int:
        return len(self._index)

    # --- filling and reading ----------------------------------------------------------------------

    def ensure(self, examples: Sequence[Example]) -> int:
        """Compute the rows of ``examples`` not yet in the table (one scorer call); returns how many."""
        todo: dict[str, Example] = {}
        for e in examples:
            rid = row_id(e)
            if rid not in self._index and rid not in todo:
                todo[rid] = e
        if not todo:
            return 0
        rows = list(todo.values())
        lp = np.asarray(self.scorer.logprobs(demos=[], queries=rows), dtype=np.float64)
        self.lm_rows += len(rows)
        emb = l2_normalise(self.embedder.encode([example_text(e) for e in rows])).astype(np.float32)
        for j, rid in enumerate(todo):
            self._index[rid] = len(self._lp)
            self._lp.append(lp[j])
            self._emb.append(emb[j])
            self._len.append(row_length(rows[j]))
        self._arrays = None
        if self.path is not None:
            self.save()
        return len(rows)

    def lookup(self, examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(logprobs (n, L) float64, embeddings (n, d) float32, lengths (n,) float64)``, filling misses first."""
        self.ensure(examples)
        if self._arrays is None:
            self._arrays = (np.stack(self._lp), np.stack(self._emb), np.asarray(self._len, dtype=np.float64))
        lp, emb, length = self._arrays
        idx = np.fromiter((self._index[row_id(e)] for e in examples), dtype=np.int64, count=len(examples))
        return lp[idx], emb[idx], length[idx]

    # --- the file ---------------------------------------------------------------------------------

    def save(self) -> None:
        """Write the table atomically (temp file, then rename)."""
        if self.path is None or not self._index:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps({"format": "rl_select.rows", **self.identity, "key": self.key}, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, meta=np.array(meta), ids=np.array(list(self._index)), logprobs=np.stack(self._lp),
                         embeddings=np.stack(self._emb), lengths=np.asarray(self._len, dtype=np.float64))
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _load(self) -> None:
        assert self.path is not None
        try:
            with np.load(self.path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                ids, lp, emb, lens = list(z["ids"]), z["logprobs"], z["embeddings"], z["lengths"]
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            self.rebuilt = f"unreadable ({type(exc).__name__})"
            return
        if meta.get("key") != self.key or {k: meta.get(k) for k in self.identity} != json.loads(
                json.dumps(self.identity)):
            diff = sorted(k for k in self.identity if meta.get(k) != json.loads(json.dumps(self.identity[k])))
            self.rebuilt = f"built for another {', '.join(diff) or 'key'}"
            return
        if lp.ndim != 2 or lp.shape[1] != self.n_labels or not (len(ids) == len(lp) == len(emb) == len(lens)):
            self.rebuilt = "inconsistent arrays"
            return
        self._index = {str(r): i for i, r in enumerate(ids)}
        self._lp, self._emb, self._len = list(lp), list(emb), [float(x) for x in lens]
