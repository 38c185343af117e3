"""Top-M nearest rows by inner product (cosine, for unit rows): one index per pool, built once, queried often.

:class:`NeighbourIndex` answers "the ``M`` pool rows most similar to each query, most similar first", with
rows a caller names per query (the query's own text in the pool) ranked last. Backends:

* ``"exact"`` — numpy brute force: a similarity matrix per chunk of queries (at most
  :data:`CHUNK_ELEMENTS` values at once), then a stable full sort (pools of at most :data:`FULL_SORT_MAX`
  rows: the historical path, bit for bit) or ``argpartition`` with the same tie rule (lower row first);
* ``"faiss_flat"`` — FAISS ``IndexFlatIP``: exact, the same neighbours up to float rounding;
* ``"faiss_ivf"`` — FAISS ``IndexIVFFlat`` (inverted lists over k-means cells, trained on at most 40 rows a
  cell): approximate, it scans ``nprobe`` of ``nlist ~ 4 sqrt(P)`` cells (``nlist // 8`` by default: about
  an eighth of the pool); it may miss some of the exact neighbours (the benchmark reports its recall);
* ``"auto"`` (default) — ``"exact"`` below :data:`ANN_MIN_ROWS` rows, else ``"faiss_ivf"`` when FAISS is
  installed (``pip install 'rl-select[ann]'``), else ``"exact"``.

Why the threshold: one query's exact scan reads the whole ``(P, d)`` matrix (1.5 KB a row for 384-d MiniLM
vectors): at 50,000 rows ~75 MB and ~6 ms a query on one core, 13 ms at 100,000, 130 ms at a million,
growing with ``P``, while the IVF index answers in 1-3 ms. Below it the scan is quick and exact neighbours
(what a small pool has always had) cost nothing extra. Pass ``backend="exact"`` to keep exact neighbours at
any size: many queries at once are one matrix product per chunk, which stays fast (a few ms a query).

Shapes: ``P`` indexed rows, ``d`` dimensions, ``Q`` queries, ``M`` neighbours.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import numpy as np

from rl_select.errors import ConfigError, SelectionError

ANN_MIN_ROWS = 50_000
"""``"auto"`` uses an approximate FAISS index from this many rows on (when FAISS is installed)."""

FULL_SORT_MAX = 4096
"""Up to this many rows the exact backend sorts each query's whole row (stable); above, it partitions first."""

CHUNK_ELEMENTS = 1 << 22
"""The exact backend holds at most this many similarities (float64, 32 MiB) at once."""

BACKENDS: tuple[str, ...] = ("auto", "exact", "faiss_flat", "faiss_ivf")
"""Accepted ``backend`` names (see the module)."""

_NO_ROWS = np.zeros(0, dtype=np.int64)


def faiss_available() -> bool:
    """Whether the optional ``faiss`` package (extra ``ann``) can be imported."""
    try:
        return importlib.util.find_spec("faiss") is not None
    except (ImportError, ValueError):
        return False


def resolve_backend(backend: str, n_rows: int) -> str:
    """The backend ``backend`` stands for at ``n_rows`` rows (``"auto"`` resolved; see the module).

    Raises:
        ConfigError: An unknown name, or a FAISS backend without FAISS installed (one line).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown neighbour index {backend!r}; expected one of {list(BACKENDS)}")
    if backend == "auto":
        return "faiss_ivf" if n_rows >= ANN_MIN_ROWS and faiss_available() else "exact"
    if backend.startswith("faiss") and not faiss_available():
        raise ConfigError(f"neighbour index {backend!r} needs FAISS; pip install 'rl-select[ann]' (faiss-cpu), "
                          "or use 'exact'")
    return backend


def top_m(sims: np.ndarray, m: int) -> np.ndarray:
    """Column indices of each row's ``m`` largest values, largest first, ties to the lower index.

    The same as ``np.argsort(-sims, axis=1, kind="stable")[:, :m]``, without sorting whole rows when they are
    long. Args: ``sims (Q, P)``, ``1 <= m <= P``. Returns: ``int64 (Q, m)``.
    """
    n_rows, n_cols = sims.shape
    if n_cols <= FULL_SORT_MAX or 4 * m >= n_cols or n_rows == 0:
        return np.argsort(-sims, axis=1, kind="stable")[:, :m].astype(np.int64)
    neg = -sims
    part = np.argpartition(neg, m - 1, axis=1)[:, :m]  # the m smallest of -sims, in no order
    vals = np.take_along_axis(neg, part, axis=1)
    order = np.lexsort((part, vals), axis=1)  # by value, then by index
    out = np.take_along_axis(part, order, axis=1).astype(np.int64)
    # a tie at the m-th value may have kept a higher index than a left-out equal one: sort those rows fully
    ties = np.flatnonzero((neg <= vals.max(axis=1, keepdims=True)).sum(axis=1) > m)
    for r in ties:
        out[r] = np.argsort(neg[r], kind="stable")[:m]
    return out


class NeighbourIndex:
    """The rows of one matrix, ready for top-``M`` inner-product queries.

    Args:
        emb: ``(P, d)`` rows (unit rows make the inner product a cosine). The exact backend keeps their
            dtype; FAISS copies them as float32.
        backend: One of :data:`BACKENDS`.
        nprobe: ``faiss_ivf`` only: cells scanned per query (default ``max(16, nlist // 8)``).
        seed: ``faiss_ivf`` only: the seed of its k-means training sample.

    Raises:
        ConfigError: An unknown backend, or a FAISS one without FAISS.
        SelectionError: ``emb`` is not a non-empty 2-D array.
    """

    def __init__(self, emb: np.ndarray, *, backend: str = "auto", nprobe: int | None = None, seed: int = 0) -> None:
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise SelectionError(f"a neighbour index needs a non-empty (P, d) array; got shape {emb.shape}")
        self.emb = emb
        self.backend = resolve_backend(backend, emb.shape[0])
        self._faiss = None
        if self.backend != "exact":
            self._faiss = self._build_faiss(nprobe, seed)

    @property
    def n_rows(self) -> int:
        """``P``."""
        return int(self.emb.shape[0])

    @property
    def approximate(self) -> bool:
        """Whether a query may miss some of its true nearest rows."""
        return self.backend == "faiss_ivf"

    def __repr__(self) -> str:
        return f"NeighbourIndex(P={self.n_rows}, d={self.emb.shape[1]}, backend={self.backend!r})"

    def _build_faiss(self, nprobe: int | None, seed: int):  # -> faiss.Index
        import faiss

        x = np.ascontiguousarray(self.emb, dtype=np.float32)
        n, d = x.shape
        if self.backend == "faiss_flat":
            index = faiss.IndexFlatIP(d)
        else:
            nlist = max(1, min(n // 39, round(4 * math.sqrt(n))))  # FAISS wants >= 39 training rows per cell
            quantiser = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantiser, d, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = x
            if n > 40 * nlist:
                sample = x[np.sort(np.random.default_rng(seed).choice(n, 40 * nlist, replace=False))]
            index.train(sample)
            index.nprobe = min(nlist, int(nprobe) if nprobe else max(16, nlist // 8))
        index.add(x)
        return index

    def search(self, queries: np.ndarray, m: int, *, exclude: Sequence[np.ndarray] | None = None,
               excluded_sim: float = -2.0) -> tuple[np.ndarray, np.ndarray]:
        """Each query's ``m`` most similar rows, most similar first (ties: lower row first).

        Args:
            queries: ``(Q, d)``.
            m: Neighbours per query, ``1 <= m <= P``.
            exclude: Per query, ``int`` row indices that rank last, after every other row (in row order),
                with similarity ``excluded_sim``: they are neighbours only when nothing else is left.
            excluded_sim: The similarity reported for an excluded row (below any cosine by default).

        Returns:
            ``(idx int64 (Q, m), sims float64 (Q, m))``.

        Raises:
            SelectionError: ``m`` outside ``1..P``, a width other than ``d``, or ``exclude`` of another length.
        """
        queries = np.asarray(queries)
        n_q = queries.shape[0] if queries.ndim == 2 else -1
        if queries.ndim != 2 or (n_q and queries.shape[1] != self.emb.shape[1]):
            raise SelectionError(f"queries of shape {queries.shape}; expected (Q, {self.emb.shape[1]}) like the index")
        if not 1 <= m <= self.n_rows:
            raise SelectionError(f"m={m} neighbours; expected an integer in 1..{self.n_rows} (the indexed rows)")
        if exclude is not None and len(exclude) != n_q:
            raise SelectionError(f"exclude lists {len(exclude)} queries; expected {n_q}")
        if n_q == 0:
            return np.zeros((0, m), dtype=np.int64), np.zeros((0, m), dtype=np.float64)
        if self._faiss is None:
            return self._search_exact(queries, m, exclude, excluded_sim)
        return self._search_faiss(queries, m, exclude, excluded_sim)

    def similarities(self, queries: np.ndarray) -> np.ndarray:
        """``float64 (Q, P)``: every query against every row (exact; for checks and small inputs)."""
        return (np.asarray(queries) @ self.emb.T).astype(np.float64)

    def _search_exact(self, queries: np.ndarray, m: int, exclude: Sequence[np.ndarray] | None,
                      excluded_sim: float) -> tuple[np.ndarray, np.ndarray]:
        n_q = queries.shape[0]
        step = max(1, min(256, CHUNK_ELEMENTS // self.n_rows)) if n_q * self.n_rows > CHUNK_ELEMENTS else n_q
        idx, sims = np.empty((n_q, m), dtype=np.int64), np.empty((n_q, m), dtype=np.float64)
        for lo in range(0, n_q, step):
            s = self.similarities(queries[lo:lo + step])  # (r, P)
            if exclude is not None:
                for r, rows in enumerate(exclude[lo:lo + step]):
                    s[r, rows] = excluded_sim
            top = top_m(s, m)
            idx[lo:lo + step], sims[lo:lo + step] = top, np.take_along_axis(s, top, axis=1)
        return idx, sims

    def _search_faiss(self, queries: np.ndarray, m: int, exclude: Sequence[np.ndarray] | None,
                      excluded_sim: float) -> tuple[np.ndarray, np.ndarray]:
        n_q = queries.shape[0]
        ex = [np.asarray(e, dtype=np.int64) for e in exclude] if exclude is not None else [_NO_ROWS] * n_q
        want = min(self.n_rows, m + max(len(e) for e in ex))
        d_all, i_all = self._faiss.search(np.ascontiguousarray(queries, dtype=np.float32), want)
        idx, sims = np.empty((n_q, m), dtype=np.int64), np.empty((n_q, m), dtype=np.float64)
        for r in range(n_q):
            rows, vals = i_all[r], d_all[r].astype(np.float64)
            keep = rows >= 0
            if len(ex[r]):
                keep &= ~np.isin(rows, ex[r])
            rows, vals = rows[keep].astype(np.int64), vals[keep]
            n_other = self.n_rows - len(np.unique(ex[r]))
            if len(rows) < min(m, n_other):  # the approximate index came back short: scan this query exactly
                idx[r:r + 1], sims[r:r + 1] = self._search_exact(queries[r:r + 1], m, ex[r:r + 1], excluded_sim)
                continue
            order = np.lexsort((rows, -vals))[:m]
            rows, vals = rows[order], vals[order]
            if len(rows) < m:  # nothing else left: the excluded rows, in row order
                fill = np.unique(ex[r])[: m - len(rows)]
                rows, vals = np.concatenate([rows, fill]), np.concatenate([vals, np.full(len(fill), excluded_sim)])
            idx[r], sims[r] = rows, vals
        return idx, sims


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth (Q, M)`` present in the same row of ``found (Q, M')``."""
    hits = [len(np.intersect1d(f, t)) / max(len(t), 1) for f, t in zip(found, truth)]
    return float(np.mean(hits)) if hits else 1.0
