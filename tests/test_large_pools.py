"""Large pools: lazy zero-shot LM rows, one table (embeddings, index) per pool across calls, the neighbour index
behind the per-query selectors, and the benchmark script (toy scorer, hashing embedder: no model)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from rl_select.embeddings import HashingEmbedder
from rl_select.mdp.per_query import (
    LAZY_LM_MIN_ROWS,
    STATE_FEATURES,
    FeatureView,
    PoolTable,
    QueryContexts,
    features,
    pool_reliability,
)
from rl_select.mdp.per_query_policy import PerQueryPolicy, greedy_orders
from rl_select.selectors import SelectionContext, make_selector
from rl_select.testing import ToyScorer, toy_examples, toy_task

SPEC = toy_task(3)
EMB = HashingEmbedder(64)
ROOT = Path(__file__).resolve().parents[1]
BIG = toy_examples(SPEC, LAZY_LM_MIN_ROWS + 1220, seed=5)
BIG_POOL, BIG_QUERIES = BIG[:LAZY_LM_MIN_ROWS + 1200], BIG[LAZY_LM_MIN_ROWS + 1200:]


def test_a_large_pool_is_scored_only_where_its_queries_look():
    scorer = ToyScorer(SPEC)
    table = PoolTable.build(BIG_POOL, labels=SPEC.labels, embedder=EMB, scorer=scorer)
    assert scorer.stats.queries == 0 and np.isnan(table.own_gold).all()
    ctx = QueryContexts.build(table, BIG_QUERIES[:5], m=8, embedder=EMB, scorer=scorer)
    rows = np.unique(ctx.nbr)
    assert scorer.stats.queries == len(rows) + 5  # the neighbours' rows and the queries', nothing else
    assert np.flatnonzero(~np.isnan(table.own_gold)).tolist() == rows.tolist()
    QueryContexts.build(table, BIG_QUERIES[:5], m=8, embedder=EMB, scorer=scorer)
    assert scorer.stats.queries == len(rows) + 10  # pool rows are scored once

    before = scorer.stats.queries
    zs_acc, _ = pool_reliability(table, 8)
    assert 0 < scorer.stats.queries - before <= 1000  # the reliability sample, not the pool
    eager = PoolTable.build(BIG_POOL, labels=SPEC.labels, embedder=EMB, scorer=ToyScorer(SPEC), lazy_lm=False)
    assert not np.isnan(eager.own_gold).any()
    probe = np.unique(np.linspace(0, len(BIG_POOL) - 1, 1000).round().astype(int))
    assert zs_acc == pytest.approx(eager.zs_correct[probe].mean())
    ectx = QueryContexts.build(eager, BIG_QUERIES[:5], m=8, embedder=EMB, scorer=scorer)
    for i in range(5):  # lazily or all at once: the same features
        for chosen in ([], [3], [0, 7]):
            a, b = features(table, ctx, i, chosen, 4), features(eager, ectx, i, chosen, 4)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_a_small_pool_is_scored_at_once_as_before():
    scorer = ToyScorer(SPEC)
    table = PoolTable.build(BIG_POOL[:100], labels=SPEC.labels, embedder=EMB, scorer=scorer)
    assert scorer.stats.queries == 100 and not np.isnan(table.own_gold).any()
    assert table.index.backend == "exact"


def test_pool_reliability_is_computed_only_for_feature_sets_that_read_it():
    scorer = ToyScorer(SPEC)
    table = PoolTable.build(BIG_POOL[:200], labels=SPEC.labels, embedder=EMB, scorer=scorer)
    ctx = QueryContexts.build(table, BIG_QUERIES[:6], m=8, embedder=EMB, scorer=scorer)
    from rl_select.mdp.qnet import CandidateQNet

    full = FeatureView.of("full")
    greedy_orders(CandidateQNet(*full.dims), full, table, ctx, 3)
    assert not any(k[0] == "pool_reliability" for k in table._memo)
    full_pool = FeatureView.of("full_pool")
    greedy_orders(CandidateQNet(*full_pool.dims), full_pool, table, ctx, 3)
    assert ("pool_reliability", 8, 1000) in table._memo
    a, b = features(table, ctx, 0, [1], 3), features(table, ctx, 0, [1], 3, with_pool=False)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0][:-2], b[0][:-2])
    assert b[0][-2:].tolist() == pytest.approx([1 / 3, 1 / 3]) and len(a[0]) == len(STATE_FEATURES)


def test_the_policy_builds_a_pools_table_once_across_calls(monkeypatch):
    builds = []
    real = PoolTable.build.__func__
    monkeypatch.setattr(PoolTable, "build", classmethod(lambda cls, *a, **kw: builds.append(1) or real(cls, *a, **kw)))
    policy = PerQueryPolicy.load("pretrained")
    scorer = ToyScorer(SPEC)
    pool, queries = BIG_POOL[:300], BIG_QUERIES
    first = policy.select_for(pool, queries[:2], labels=SPEC.labels, embedder=EMB, scorer=scorer)
    again = policy.select_for(list(pool), queries[:2], labels=SPEC.labels, embedder=EMB, scorer=scorer)
    assert first == again and len(builds) == 1
    policy.select_for(pool[:299], queries[:2], labels=SPEC.labels, embedder=EMB, scorer=scorer)
    other = ToyScorer(SPEC)
    policy.select_for(pool[:299], queries[:2], labels=SPEC.labels, embedder=EMB, scorer=other)
    assert len(builds) == 3  # another pool, another scorer: rebuilt
    table = policy.pool_table(pool[:299], labels=SPEC.labels, embedder=EMB, scorer=other)
    assert table.scorer is other and len(builds) == 3


class RandomEmbedder:
    """Each text -> a random unit vector seeded by its text: no tied similarities (float rounding cannot reorder)."""

    def encode(self, texts: list[str]) -> np.ndarray:
        seeds = [int.from_bytes(t.encode()[-8:].rjust(8, b"\0"), "little") for t in texts]
        x = np.stack([np.random.default_rng(s).standard_normal(48) for s in seeds]).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_policy_through_faiss_exact_chooses_as_through_numpy(ann_extra):
    policy = PerQueryPolicy.load("pretrained")
    scorer, emb = ToyScorer(SPEC), RandomEmbedder()
    pool = BIG_POOL[:400]
    a = policy.select_for(pool, BIG_QUERIES[:10], labels=SPEC.labels, embedder=emb, scorer=scorer, index="exact")
    b = policy.select_for(pool, BIG_QUERIES[:10], labels=SPEC.labels, embedder=emb, scorer=scorer,
                          index="faiss_flat")
    assert a == b and policy.pool_table(pool, labels=SPEC.labels, embedder=emb, scorer=scorer,
                                        index="faiss_flat").index.backend == "faiss_flat"


def test_auto_index_switches_to_faiss_at_the_threshold(ann_extra, monkeypatch):
    import rl_select.neighbours as nb

    monkeypatch.setattr(nb, "ANN_MIN_ROWS", 1000)
    table = PoolTable.build(BIG_POOL, labels=SPEC.labels, embedder=EMB)
    assert table.index.backend == "faiss_ivf"
    ctx = QueryContexts.build(table, [BIG_POOL[3], *BIG_QUERIES[:10]], m=8, embedder=EMB)
    assert 3 not in ctx.nbr[0] and np.all(np.diff(ctx.sims, axis=1) <= 1e-7)
    assert PoolTable.build(BIG_POOL[:999], labels=SPEC.labels, embedder=EMB).index.backend == "exact"


def test_knn_embeds_the_pool_once_per_pool():
    class Counting(HashingEmbedder):
        def __init__(self) -> None:
            super().__init__(32)
            self.texts = 0

        def encode(self, texts):
            self.texts += len(texts)
            return super().encode(texts)

    e = Counting()
    sel = make_selector("knn", embedder=e)
    ctx = SelectionContext(pool=BIG_POOL[:200], val=[], k=3, scorer=ToyScorer(SPEC), rng=np.random.default_rng(0))
    a = sel.select_for(ctx, BIG_QUERIES[:4])
    b = sel.select_for(ctx, BIG_QUERIES[:4])
    assert a == b and e.texts == 200 + 4 + 4
    rule = make_selector("knn_majority", m=8, embedder=e)
    rule.select_for(ctx, BIG_QUERIES[:4])
    rule.select_for(ctx, BIG_QUERIES[4:8])
    assert e.texts == 208 + 200 + 8


def test_the_large_pool_benchmark_runs_small_and_writes_json(tmp_path):
    spec = importlib.util.spec_from_file_location("large_pool_bench", ROOT / "benchmarks" / "large_pool.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    res = bench.main(["--sizes", "150,300", "--queries", "3", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc == json.loads(json.dumps(res)) and [r["n_pool"] for r in doc["sizes"]] == [150, 300]
    r = doc["sizes"][1]
    assert r["index"] == "exact" and r["policy_ms"]["median"] > 0 and r["knn_majority_ms"]["median"] > 0
    assert 0 < r["lm_rows"] <= 3 * 16 + 3 + 300 and doc["cpu"] and "meets_target" in doc


@pytest.mark.parametrize("name", ["knn", "knn_majority", "knn_mmr"])
def test_the_per_query_selectors_take_an_index_backend(name, ann_extra):
    from rl_select.errors import ConfigError

    kw = {} if name == "knn" else {"m": 8}
    ctx = SelectionContext(pool=BIG_POOL[:300], val=[], k=3, scorer=ToyScorer(SPEC), rng=np.random.default_rng(0))
    emb = RandomEmbedder()
    exact = make_selector(name, embedder=emb, index="exact", **kw).select_for(ctx, BIG_QUERIES[:6])
    flat = make_selector(name, embedder=emb, index="faiss_flat", **kw).select_for(ctx, BIG_QUERIES[:6])
    assert exact == flat == make_selector(name, embedder=emb, **kw).select_for(ctx, BIG_QUERIES[:6])
    with pytest.raises(ConfigError, match="unknown neighbour index 'annoy'"):
        make_selector(name, embedder=emb, index="annoy", **kw)
