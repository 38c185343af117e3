"""Large pools: the time to choose one query's demonstrations at pools of 1,000 / 10,000 / 100,000 rows.

For each pool size it builds the pool's table once (embeddings, neighbour index) and then times, per query,
the shipped per-query policy (``PerQueryPolicy.load("pretrained")``: M = 16 neighbours, k = 4) and the
``knn_majority`` neighbour rule choosing that one query's demonstrations: embedding the query, the index
search, the features, the Q-network. The LM is a stand-in (:class:`~rl_select.testing.ToyScorer`, hashing
arithmetic, no model) for the zero-shot rows the policy's features read, and its own time is subtracted:
"LM scoring excluded". Medians over ``--queries`` queries; also the index's recall of the exact neighbours
when it is approximate. Prints a table and writes JSON (default ``docs/bench_large_pool.json``).

    python benchmarks/large_pool.py                                 # hashing embedder, sizes 1k, 10k, 100k
    python benchmarks/large_pool.py --embedder random               # random unit vectors (no text structure)
    python benchmarks/large_pool.py --embedder minilm --sizes 1000  # the real MiniLM (CPU-heavy at 100k!)
    python benchmarks/large_pool.py --index exact                   # brute force at every size

Keep it light on a shared machine: ``OMP_NUM_THREADS=1 nice -n 19``. With ``--embedder minilm`` the pool is
embedded once and then read from the embedding cache (``$RL_SELECT_EMBED_CACHE`` /
``$RL_SELECT_HOME/embeddings.sqlite``); the JSON records both times.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rl_select.embeddings import Embedder, HashingEmbedder, MiniLMEmbedder, embed_examples, embedder_cache_key
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.per_query_table import QueryContexts
from rl_select.neighbours import ANN_MIN_ROWS, faiss_available, recall_at
from rl_select.selectors import make_selector
from rl_select.testing import ToyScorer, toy_examples, toy_task
from rl_select.types import Example

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 50.0


class RandomEmbedder:
    """Each text -> a random unit vector, seeded by the text's hash (deterministic, no structure). ``(n, dim)``."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def __repr__(self) -> str:
        return f"RandomEmbedder(dim={self.dim})"


def make_embedder(name: str) -> Embedder:
    """``hashing`` (384 buckets), ``random`` (384-d) or ``minilm`` (the bundled all-MiniLM-L6-v2)."""
    if name == "hashing":
        return HashingEmbedder(384)
    if name == "random":
        return RandomEmbedder(384)
    if name == "minilm":
        return MiniLMEmbedder()
    raise SystemExit(f"unknown embedder {name!r}; expected hashing, random or minilm")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ms(xs: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(xs) * 1000.0
    return {"median": round(float(np.median(arr)), 3), "p90": round(float(np.percentile(arr, 90)), 3),
            "max": round(float(arr.max()), 3)}


def bench_size(n_pool: int, *, n_queries: int, embedder: Embedder, index: str, policy: PerQueryPolicy,
               seed: int = 0, check_recall: bool = True) -> dict[str, Any]:
    """One pool size: build times, per-query selection times (LM stand-in subtracted), the index's recall."""
    spec = toy_task(3)
    data = toy_examples(spec, n_pool + n_queries, seed=seed)
    pool, queries = data[:n_pool], data[n_pool:]
    scorer = ToyScorer(spec)
    out: dict[str, Any] = {"n_pool": n_pool, "n_queries": n_queries}

    t = time.perf_counter()
    emb = embed_examples(embedder, pool)
    out["embed_s"] = round(time.perf_counter() - t, 3)
    out["embed_cached_s"] = None
    if embedder_cache_key(embedder) is not None:  # the second pass reads the disk cache
        t = time.perf_counter()
        embed_examples(embedder, pool)
        out["embed_cached_s"] = round(time.perf_counter() - t, 3)
    del emb

    # the table (embeddings again: from the disk cache when the embedder has one), then its index
    t = time.perf_counter()
    table = policy.pool_table(pool, labels=spec.labels, embedder=embedder, scorer=scorer, index=index)
    out["table_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    nindex = table.index
    out["index_s"] = round(time.perf_counter() - t, 3)
    out["index"] = nindex.backend
    t = time.perf_counter()
    _ = table.text_rows
    out["text_map_s"] = round(time.perf_counter() - t, 3)

    def timed(fn: Callable[[], object]) -> tuple[float, float]:
        """``(seconds, seconds minus the LM stand-in's)`` of one call."""
        lm0 = scorer.stats.seconds
        t0 = time.perf_counter()
        fn()
        total = time.perf_counter() - t0
        return total, total - (scorer.stats.seconds - lm0)

    rule = make_selector("knn_majority", m=policy.m, embedder=embedder)

    def by_rule(q: Example) -> list[Example]:  # what rule.select_for does for one query, on this table
        qc = QueryContexts.build(table, [q], m=policy.m, embedder=embedder)
        return qc.demos(table, 0, rule.order(table, qc, 0, policy.k))

    lm_rows0 = scorer.stats.queries
    pol_total, pol_no_lm, rule_ms, chosen = [], [], [], []
    for q in queries:
        a, b = timed(lambda q=q: chosen.append(policy.select_for(pool, [q], labels=spec.labels, embedder=embedder,
                                                                 scorer=scorer, index=index)[0]))
        pol_total.append(a)
        pol_no_lm.append(b)
        rule_ms.append(timed(lambda q=q: by_rule(q))[1])
    out["lm_rows"] = int(scorer.stats.queries - lm_rows0)
    out["policy_ms"] = _ms(pol_no_lm)
    out["policy_with_lm_stub_ms"] = _ms(pol_total)
    out["knn_majority_ms"] = _ms(rule_ms)

    if check_recall and nindex.approximate:
        exact = QueryContexts.build(dataclasses.replace(table, index_backend="exact"), queries, m=policy.m,
                                    embedder=embedder)
        approx = QueryContexts.build(table, queries, m=policy.m, embedder=embedder)
        out["recall_at_m"] = round(recall_at(approx.nbr, exact.nbr), 4)
        # tie-aware: the share of the index's neighbours at least as similar as the exact M-th one
        out["sim_recall_at_m"] = round(float(np.mean(approx.sims >= exact.sims[:, -1:] - 1e-6)), 4)
        pos = {e.uid: j for j, e in enumerate(table.pool)}
        inside = [np.isin([pos[d.uid] for d in ds], exact.nbr[i]).mean() for i, ds in enumerate(chosen)]
        out["policy_demos_in_exact_neighbours"] = round(float(np.mean(inside)), 4)
        # the same queries through an exact index, for comparison (another table: the pool is embedded again)
        policy.pool_table(pool, labels=spec.labels, embedder=embedder, scorer=scorer, index="exact")
        out["exact_policy_ms"] = _ms([timed(lambda q=q: policy.select_for(
            pool, [q], labels=spec.labels, embedder=embedder, scorer=scorer, index="exact"))[1] for q in queries])
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="pool sizes, comma-separated")
    ap.add_argument("--queries", type=int, default=50, help="queries timed per size (median reported)")
    ap.add_argument("--embedder", default="hashing", choices=["hashing", "random", "minilm"])
    ap.add_argument("--index", default="auto", help="neighbour index: auto, exact, faiss_flat, faiss_ivf")
    ap.add_argument("--no-recall", action="store_true", help="skip the approximate index's recall check")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_large_pool.json"), help="JSON file ('' for none)")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    embedder = make_embedder(args.embedder)
    policy = PerQueryPolicy.load("pretrained")
    faiss_version = None
    if faiss_available():
        import faiss

        faiss_version = faiss.__version__
    res: dict[str, Any] = {
        "what": "time to choose one query's demonstrations (LM scoring excluded), the pool's table built once",
        "cpu": cpu_name(), "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "faiss": faiss_version, "ann_min_rows": ANN_MIN_ROWS, "embedder": repr(embedder),
        "policy": repr(policy), "index": args.index, "target_ms": TARGET_MS, "sizes": [],
    }
    print(f"CPU: {res['cpu']} ({res['cpus']} cores, OMP_NUM_THREADS={res['omp_num_threads']}); "
          f"FAISS: {faiss_version or 'not installed'}; embedder {embedder!r}; {policy!r}")
    print(f"{'pool':>8} {'index':>10} {'embed s':>8} {'index s':>8} {'policy ms':>10} {'p90':>7} "
          f"{'knn_maj ms':>10} {'recall':>7} {'sim rec':>7}")
    for n in sizes:
        r = bench_size(n, n_queries=args.queries, embedder=embedder, index=args.index, policy=policy,
                       check_recall=not args.no_recall)
        res["sizes"].append(r)
        print(f"{n:>8} {r['index']:>10} {r['embed_s']:>8.2f} {r['index_s']:>8.2f} {r['policy_ms']['median']:>10.2f} "
              f"{r['policy_ms']['p90']:>7.2f} {r['knn_majority_ms']['median']:>10.2f} "
              f"{r.get('recall_at_m', float('nan')):>7.3f} {r.get('sim_recall_at_m', float('nan')):>7.3f}", flush=True)
    for r in res["sizes"]:
        if "exact_policy_ms" in r:
            print(f"{r['n_pool']:>8} {'exact':>10} {'':>8} {'':>8} {r['exact_policy_ms']['median']:>10.2f} "
                  f"{r['exact_policy_ms']['p90']:>7.2f}   (the same queries, exact neighbours)")
    largest = max(res["sizes"], key=lambda r: r["n_pool"]) if res["sizes"] else None
    if largest is not None:
        res["meets_target"] = largest["policy_ms"]["median"] <= TARGET_MS
        print(f"median at {largest['n_pool']:,} rows: {largest['policy_ms']['median']:.1f} ms "
              f"(target <= {TARGET_MS:.0f} ms: {'met' if res['meets_target'] else 'NOT met'})")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
