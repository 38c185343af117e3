"""The scorer's packing settings against the raw forward: pack width, sequences and slots per forward.

    python benchmarks/pack_sweep.py 512,16,4096 64,64,4096 64,128,8192 32,128,4096

A lever tried for issue 21's "≥ 80 % of raw" on the one-prompt workload: the queries of one prompt are short and
packed rows of ``pack_tokens`` attend densely to the cached prefix and to the whole row (the CPU flash kernel
computes every block a tree mask hides). Narrower rows cut that attention; more rows a forward keep the matrix
products large. Each setting ``PACK,ROWS,SLOTS`` (``pack_tokens``, ``batch_size``, ``max_batch_tokens`` of
:class:`~rl_select.lm.hf.HFScorer`) runs two workloads of ``rl-select bench scorer`` (SST-2, k=4, pool 100,
calibrated, caches off, 500 test rows): one random prompt x 500 queries and kNN's 500 per-query prompts, each
twice (the faster kept), against the raw forward of the same machine (batch 16, the workload's mean prompt).
``--profile`` then prints a cProfile of one more one-prompt call at the first setting.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np

from rl_select.data import load_task
from rl_select.data.splits import make_splits
from rl_select.experiments.bench_scorer import _prompt_tokens, cpu_name, raw_throughput
from rl_select.lm.hf import HFScorer
from rl_select.lm.hf_load import cpu_has_fast_bf16, load_causal_lm
from rl_select.selectors.base import SelectionContext
from rl_select.selectors.knn import KNNSelector
from rl_select.tasks import resolve_task


def _setting(text: str) -> tuple[int, int, int]:
    """A ``PACK,ROWS,SLOTS`` argument: three positive integers."""
    try:
        pack, rows, slots = (int(v) for v in text.split(","))
    except ValueError:
        pack = rows = slots = 0
    if min(pack, rows, slots) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}; expected PACK,ROWS,SLOTS: 3 positive integers (512,16,4096)")
    return pack, rows, slots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="+", type=_setting, help="PACK,ROWS,SLOTS triples, e.g. 512,16,4096")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--profile", action="store_true", help="cProfile one one-prompt call at the first setting")
    a = ap.parse_args()
    settings = a.settings
    spec = resolve_task("sst2")
    train, test = load_task(spec)
    sp = make_splits(train, test, n_pool=100, n_val=100, n_test=a.queries, seed=0)
    queries = list(sp.test)
    model, tok = load_causal_lm("bundled", dtype="auto")
    rng = np.random.default_rng(0)
    demos = [sp.pool[i] for i in rng.choice(len(sp.pool), size=4, replace=False)]
    base = HFScorer(model, tok, spec, model_id="bundled", calibrate=True)
    base.logprobs(demos=sp.pool[:1], queries=queries[:2])  # warm-up
    lists = KNNSelector().select_for(SelectionContext(pool=sp.pool, val=sp.val, k=4, scorer=base, rng=rng), queries)
    work = {"one prompt": ([demos] * len(queries)), "kNN prompts": lists}
    raw = {}
    for name, dl in work.items():
        length = int(round(float(np.mean(_prompt_tokens(base, dl, queries)))))
        raw[name] = raw_throughput(model, batch=16, length=length)
    print(f"CPU: {cpu_name()}; native bf16: {cpu_has_fast_bf16()}; {model.dtype}; raw forward tokens/s: "
          + ", ".join(f"{n} {v:.0f}" for n, v in raw.items()), flush=True)
    for pack, rows, slots in settings:
        for name, dl in work.items():
            s = HFScorer(model, tok, spec, model_id="bundled", calibrate=True, pack_tokens=pack, batch_size=rows,
                         max_batch_tokens=slots)
            best, tokens = float("inf"), 0
            for _ in range(2):
                before = s.stats.copy()
                t0 = time.perf_counter()
                if name == "one prompt":
                    s.logprobs(demos=demos, queries=queries)
                else:
                    s.logprobs_many(demo_lists=dl, queries=queries)
                best = min(best, time.perf_counter() - t0)
                tokens = (s.stats - before).forward_tokens
            print(f"pack {pack}, {rows} rows, {slots} slots, {name}: {best:.2f} s, {tokens} LM tokens, "
                  f"{tokens / best:.0f} tok/s, {100 * tokens / best / raw[name]:.0f} % of raw", flush=True)
    if a.profile:
        pack, rows, slots = settings[0]
        s = HFScorer(model, tok, spec, model_id="bundled", calibrate=True, pack_tokens=pack, batch_size=rows,
                     max_batch_tokens=slots)
        prof = cProfile.Profile()
        prof.enable()
        s.logprobs(demos=demos, queries=queries)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
