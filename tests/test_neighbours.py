"""The neighbour index (rl_select.neighbours): exact search equals a stable full sort, FAISS's exact index equals
brute force, the approximate one finds most true neighbours, and the backend is chosen by size and availability."""

from __future__ import annotations

import numpy as np
import pytest

import rl_select.neighbours as nb
from rl_select.errors import ConfigError, SelectionError
from rl_select.neighbours import NeighbourIndex, recall_at, resolve_backend, top_m


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(rng: np.random.Generator, n: int, d: int = 32, centres: int = 40) -> np.ndarray:
    """Unit rows around ``centres`` directions (sentence embeddings are clustered like this, not uniform)."""
    c = rng.standard_normal((centres, d))
    x = (c[rng.integers(0, centres, n)] + 0.35 * rng.standard_normal((n, d))).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(emb: np.ndarray, q: np.ndarray, m: int, exclude=None, excluded_sim=-2.0):
    """The historical rule: every similarity, excluded rows set low, a stable sort of the whole row."""
    sims = (q @ emb.T).astype(np.float64)
    for i, rows in enumerate(exclude or []):
        sims[i, rows] = excluded_sim
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :m]
    return idx, np.take_along_axis(sims, idx, axis=1)


@pytest.mark.parametrize("full_sort_max", [4096, 8])
def test_top_m_is_a_stable_sorts_head_even_with_ties_at_the_cut(monkeypatch, full_sort_max):
    monkeypatch.setattr(nb, "FULL_SORT_MAX", full_sort_max)  # 8: the argpartition path on these small rows
    rng = np.random.default_rng(0)
    sims = rng.integers(0, 5, size=(50, 200)).astype(np.float64)  # many ties, also at the m-th value
    sims[3] = 1.0  # one row all equal
    for m in (1, 3, 17, 49):
        assert np.array_equal(top_m(sims, m), np.argsort(-sims, axis=1, kind="stable")[:, :m])


def test_exact_search_equals_the_historical_rule_with_exclusions_and_chunks(monkeypatch):
    rng = np.random.default_rng(1)
    emb, q = _unit(rng, 300), _unit(rng, 40)
    emb[7] = emb[8]  # a tie between two rows
    exclude = [np.array([i, i + 1]) if i % 3 == 0 else np.zeros(0, dtype=np.int64) for i in range(40)]
    want = _reference(emb, q, 12, exclude)
    index = NeighbourIndex(emb, backend="exact")
    got = index.search(q, 12, exclude=exclude)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    monkeypatch.setattr(nb, "CHUNK_ELEMENTS", 1000)  # 3 queries per chunk
    monkeypatch.setattr(nb, "FULL_SORT_MAX", 16)
    got = index.search(q, 12, exclude=exclude)
    assert np.array_equal(got[0], want[0]) and np.allclose(got[1], want[1], atol=1e-6)  # float32 products by chunk
    # the excluded rows are neighbours only when nothing else is left, in row order, at excluded_sim
    small = NeighbourIndex(emb[:5], backend="exact")
    idx, sims = small.search(q[:1], 5, exclude=[np.array([3, 1])])
    assert idx[0, -2:].tolist() == [1, 3] and sims[0, -2:].tolist() == [-2.0, -2.0]


def test_search_refuses_bad_arguments_in_one_line():
    index = NeighbourIndex(_unit(np.random.default_rng(2), 10), backend="exact")
    with pytest.raises(SelectionError, match="m=11 neighbours; expected an integer in 1..10"):
        index.search(_unit(np.random.default_rng(3), 2), 11)
    with pytest.raises(SelectionError, match=r"expected \(Q, 16\)"):
        index.search(np.zeros((2, 5), dtype=np.float32), 3)
    with pytest.raises(SelectionError, match="exclude lists 1 queries; expected 2"):
        index.search(_unit(np.random.default_rng(3), 2), 3, exclude=[np.zeros(0, dtype=np.int64)])
    with pytest.raises(SelectionError, match="non-empty"):
        NeighbourIndex(np.zeros((0, 4)))
    idx, sims = index.search(np.zeros((0, 16), dtype=np.float32), 3)
    assert idx.shape == (0, 3) == sims.shape


def test_auto_is_exact_below_the_threshold_and_without_faiss(monkeypatch):
    assert resolve_backend("auto", nb.ANN_MIN_ROWS - 1) == "exact"
    monkeypatch.setattr(nb, "faiss_available", lambda: False)
    assert resolve_backend("auto", 10 * nb.ANN_MIN_ROWS) == "exact"
    with pytest.raises(ConfigError, match="needs FAISS; pip install 'rl-select\\[ann\\]'"):
        resolve_backend("faiss_ivf", 10)
    with pytest.raises(ConfigError, match="unknown neighbour index 'annoy'"):
        resolve_backend("annoy", 10)
    monkeypatch.setattr(nb, "faiss_available", lambda: True)
    assert resolve_backend("auto", nb.ANN_MIN_ROWS) == "faiss_ivf"


def test_faiss_exact_index_equals_brute_force(ann_extra):
    rng = np.random.default_rng(4)
    emb, q = _unit(rng, 500, 24), _unit(rng, 30, 24)
    exclude = [np.array([i]) for i in range(30)]
    want = _reference(emb, q, 10, exclude)
    flat = NeighbourIndex(emb, backend="faiss_flat")
    got = flat.search(q, 10, exclude=exclude)
    assert not flat.approximate
    assert np.array_equal(got[0], want[0]) and np.allclose(got[1], want[1], atol=1e-5)
    # a pool with fewer other rows than m: the excluded ones come last, in row order, as the exact rule has it
    tiny = NeighbourIndex(emb[:6], backend="faiss_flat")
    got, want = tiny.search(q[:2], 6, exclude=[np.array([4, 0]), np.zeros(0, np.int64)]), _reference(
        emb[:6], q[:2], 6, [np.array([4, 0]), np.zeros(0, np.int64)])
    assert np.array_equal(got[0], want[0]) and np.allclose(got[1], want[1], atol=1e-5)


def test_faiss_ivf_finds_most_true_neighbours_and_never_an_excluded_row(ann_extra):
    rng = np.random.default_rng(5)
    emb = _clustered(rng, 6000)
    q = emb[rng.choice(6000, 60, replace=False)]
    exclude = [np.flatnonzero((emb == row).all(axis=1)) for row in q]  # the query's own row
    truth, _ = _reference(emb, q, 16, exclude)
    ivf = NeighbourIndex(emb, backend="faiss_ivf")
    idx, sims = ivf.search(q, 16, exclude=exclude)
    assert ivf.approximate and ivf.backend == "faiss_ivf"
    assert recall_at(idx, truth) >= 0.9
    assert all(not np.isin(ex, row).any() for ex, row in zip(exclude, idx))
    assert np.all(np.diff(sims, axis=1) <= 1e-7)  # most similar first
    assert np.allclose(sims, np.take_along_axis(q @ emb.T, idx, axis=1), atol=1e-5)
    # one cell scanned and many neighbours asked: the index comes back short, the query is scanned exactly
    few = NeighbourIndex(emb[:800], backend="faiss_ivf", nprobe=1)
    got, want = few.search(q[:3], 200), _reference(emb[:800], q[:3], 200)
    assert np.array_equal(got[0], want[0])


def test_recall_at_counts_shared_rows():
    assert recall_at(np.array([[1, 2, 3], [4, 5, 6]]), np.array([[3, 2, 9], [7, 8, 9]])) == pytest.approx(1 / 3)
