"""Persistent memo of scorer results in SQLite, keyed by content.

A key is a hash of (scorer fingerprint, the prompt-defining task fields, the ordered demonstrations'
contents, the query's content): so the same prompt is free in any run, split or ablation. Values are
the raw (uncalibrated) label log-probs of one query, stored as float64 bytes; a row that dropped
demonstrations to fit the context window (:mod:`rl_select.lm.window`) has one more value, how many. The
database runs in WAL mode and every ``put_many`` is one transaction: a crash loses at most the batch
being written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from rl_select.errors import CacheError
from rl_select.types import Example

DEFAULT_CACHE_ENV = "RL_SELECT_CACHE"


def default_cache_path() -> Path:
    """``$RL_SELECT_CACHE``, else ``~/.cache/rl_select/scores.sqlite``."""
    env = os.environ.get(DEFAULT_CACHE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "rl_select" / "scores.sqlite"


def prefix_digest(fingerprint: str, task_fields: dict, demos: Sequence[Example]) -> str:
    """Hash of everything before the query: model, prompt format and ordered demos."""
    payload = json.dumps([fingerprint, task_fields, [d.content() for d in demos]], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def query_key(prefix: str, query: Example) -> str:
    """Cache key of one query under a prefix digest."""
    payload = json.dumps([prefix, query.content()], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def connect_wal(path: Path) -> sqlite3.Connection:
    """An autocommit SQLite connection in WAL mode (readers never block the writer), shared by the disk caches."""
    db = sqlite3.connect(path, timeout=60.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db


class ScoreCache:
    """SQLite key -> float64 vector store.

    Args:
        path: Database file (created with its folder if missing).
    """

    #: Entries kept in memory in front of SQLite (a warm env step then never touches the disk).
    MEMO_SIZE = 500_000

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self._memo: dict[str, np.ndarray] = {}
        #: When a list, every stored ``(key, vector)`` is also appended here (a Ray worker hands these back
        #: to the driver, whose cache then holds them even when the worker's disk is another machine's).
        self.journal: list[tuple[str, np.ndarray]] | None = None
        problem = cache_problem(self.path)
        if problem is not None:
            raise CacheError(problem)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create the cache folder {str(self.path.parent)!r} ({exc.strerror or exc}); "
                             f"{_ELSEWHERE}") from None
        try:
            self._db = connect_wal(self.path)
            self._db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
            self._db.execute("SELECT count(*) FROM scores LIMIT 1").fetchone()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise CacheError(
                    f"score cache {str(self.path)!r} is not a readable SQLite database ({exc}); "
                    f"move it aside or pass another --cache path (nothing was overwritten)"
                ) from None
            raise CacheError(f"cannot open score cache {str(self.path)!r} for writing ({exc}); {_ELSEWHERE}") from None

    def get_many(self, keys: Sequence[str], n_labels: int) -> dict[str, np.ndarray]:
        """Cached vectors for the keys that are present: ``n_labels`` values, or ``n_labels + 1`` for a row that
        dropped demonstrations (the last value is how many); entries of another length are ignored."""
        sizes = (n_labels, n_labels + 1)
        found = {k: self._memo[k] for k in keys if k in self._memo and len(self._memo[k]) in sizes}
        missing = [k for k in keys if k not in found]
        try:
            for start in range(0, len(missing), 500):
                chunk = missing[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, blob in self._db.execute(f"SELECT key, value FROM scores WHERE key IN ({marks})", chunk):
                    vec = np.frombuffer(blob, dtype=np.float64)
                    if len(vec) in sizes:
                        found[key] = self._remember(key, vec.copy())
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"score cache {str(self.path)!r} is corrupt ({exc}); move it aside") from None
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found

    def _remember(self, key: str, vec: np.ndarray) -> np.ndarray:
        if len(self._memo) >= self.MEMO_SIZE:
            self._memo.clear()
        self._memo[key] = vec
        return vec

    def put_many(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Store vectors in one transaction (and in the in-memory memo)."""
        items = [(k, np.asarray(v, dtype=np.float64)) for k, v in items]
        rows = [(k, v.tobytes()) for k, v in items]
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO scores (key, value) VALUES (?, ?)", rows)
        except sqlite3.DatabaseError as exc:
            raise CacheError(f"cannot write score cache {str(self.path)!r} ({exc})") from None
        for k, v in items:
            self._remember(k, v.copy())
        if self.journal is not None:
            self.journal.extend(items)

    def take_journal(self) -> list[tuple[str, np.ndarray]]:
        """The entries stored since the last call (journal on), emptying it."""
        out, self.journal = (self.journal or []), ([] if self.journal is not None else None)
        return out

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM scores").fetchone()[0])

    def close(self) -> None:
        self._db.close()


_ELSEWHERE = "expected a writable place: pass another --cache path, or --cache none"


def cache_problem(path: str | os.PathLike) -> str | None:
    """Why a score cache cannot be kept at ``path`` (one line), or ``None``; creates nothing.

    The file must be readable and writable, or else its nearest existing folder writable (SQLite also
    writes its WAL files beside the database).
    """
    path = Path(path)
    if path.is_dir():
        return f"score cache {str(path)!r} is a folder; expected a file path, e.g. {str(path / 'scores.sqlite')!r}"
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return f"score cache file {str(path)!r} is not writable; {_ELSEWHERE}"
    if path.is_file() and not _sqlite_or_empty(path):
        return (f"score cache {str(path)!r} is not a SQLite database; move it aside or pass another --cache path "
                "(nothing was overwritten)")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"the cache folder {str(folder)!r} is a file, not a folder; {_ELSEWHERE}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the cache folder {str(folder)!r} is not writable; {_ELSEWHERE}"
    return None


def _sqlite_or_empty(path: Path) -> bool:
    """Whether ``path`` starts like a SQLite database, or is empty (SQLite makes an empty file a database)."""
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError:
        return True  # unreadable: opening it says why
    return not head or head == b"SQLite format 3\x00"


def check_cache(path: str | None) -> None:
    """Refuse, before any model loads, a ``--cache`` value :func:`open_cache` could not open (nothing is created).

    Raises:
        CacheError: One line naming the file or folder.
    """
    if path and path.lower() == "none":
        return
    problem = cache_problem(path or default_cache_path())
    if problem is not None:
        raise CacheError(problem)


def open_cache(path: str | None) -> ScoreCache | None:
    """``None`` or ``""``: the default cache file; ``"none"``: no cache; else that file."""
    if path and path.lower() == "none":
        return None
    return ScoreCache(path or default_cache_path())
