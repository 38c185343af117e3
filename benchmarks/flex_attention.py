"""The scorer's packed forwards with FlexAttention (a block-sparse tree mask) against SDPA's dense mask.

    python benchmarks/flex_attention.py --json docs/bench_flex_attention.json

A lever tried for issue 21's "≥ 80 % of raw": SDPA's CPU flash kernel computes every block a tree mask hides;
FlexAttention (``torch.compile``d, transformers' ``flex_attention`` implementation) skips the blocks a
``BlockMask`` marks empty. The three workloads of ``rl-select bench scorer`` (SST-2, k=4, pool 100, calibrated,
caches off): one prompt x N queries, kNN's N per-query prompts, E per-query episodes (4 of 16 nearest, 100 per
call). Each runs twice per attention (the best is kept; flex's first run pays the compiles), beside the raw
forward of the same tokens (batch 16, SDPA). Shapes compile statically: with automatic dynamic shapes the
CPU template failed to build (inductor C++ error) on torch 2.13.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch._dynamo
from torch.nn.attention.flex_attention import BlockMask, create_block_mask

from rl_select.data import load_task
from rl_select.data.splits import make_splits
from rl_select.experiments.bench_scorer import _prompt_tokens, cpu_name, peak_rss_mb, raw_throughput
from rl_select.lm.hf import HFScorer
from rl_select.lm.hf_load import cpu_has_fast_bf16, load_causal_lm
from rl_select.selectors.base import SelectionContext
from rl_select.selectors.knn import KNNSelector
from rl_select.tasks import resolve_task


class FlexScorer(HFScorer):
    """:class:`HFScorer` whose packed forwards pass a :class:`BlockMask` (model set to ``flex_attention``)."""

    def _attention_mask(self, mask: torch.Tensor) -> BlockMask:
        b, t, kv = mask.shape
        dense = mask.to(self.device)
        return create_block_mask(lambda bi, h, q, k: dense[bi, q, k], b, None, t, kv, device=str(self.device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-queries", type=int, default=500)
    ap.add_argument("--n-episodes", type=int, default=400)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.n_queries < 1 or args.n_episodes < 100:
        raise SystemExit(f"--n-queries {args.n_queries} --n-episodes {args.n_episodes}; expected >= 1 and >= 100")
    torch._dynamo.config.automatic_dynamic_shapes = False
    torch._dynamo.config.cache_size_limit = torch._dynamo.config.recompile_limit = 512
    spec = resolve_task("sst2")
    train, test = load_task(spec)
    sp = make_splits(train, test, n_pool=100, n_val=100, n_test=args.n_queries, seed=0)
    queries = list(sp.test)
    model, tok = load_causal_lm("bundled")
    info = {"cpu": cpu_name(), "native_bf16": cpu_has_fast_bf16(), "dtype": str(model.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads()}
    print(info, flush=True)
    rng = np.random.default_rng(0)
    demos = [sp.pool[i] for i in rng.choice(len(sp.pool), size=4, replace=False)]

    def nearest(k: int) -> list:
        return KNNSelector().select_for(SelectionContext(pool=sp.pool, val=sp.val, k=k, scorer=None, rng=rng),
                                        queries)

    lists, near = nearest(4), nearest(16)
    picks = [int(i) for i in rng.integers(len(queries), size=args.n_episodes)]
    eps_q = [queries[i] for i in picks]
    eps_d = [[near[i][j] for j in rng.permutation(16)[:4]] for i in picks]

    def episodes(sc: HFScorer) -> np.ndarray:
        return np.concatenate([sc.logprobs_many(demo_lists=eps_d[s:s + 100], queries=eps_q[s:s + 100])
                               for s in range(0, args.n_episodes, 100)])

    work = {"one prompt": (lambda sc: sc.logprobs(demos=demos, queries=queries), [demos] * len(queries), queries),
            "per-query prompts (kNN)": (lambda sc: sc.logprobs_many(demo_lists=lists, queries=queries), lists,
                                        queries),
            "per-query episodes (M=16)": (episodes, eps_d, eps_q)}
    rows = []
    for name, (run, demo_lists, qs) in work.items():
        outs = {}
        for impl, cls in (("sdpa", HFScorer), ("flex", FlexScorer)):
            model.set_attn_implementation("flex_attention" if impl == "flex" else "sdpa")
            times = []
            for _ in range(2):
                sc = cls(model, tok, spec, model_id="bundled", calibrate=True)
                t0 = time.perf_counter()
                outs[impl] = run(sc)
                times.append(time.perf_counter() - t0)
            model.set_attn_implementation("sdpa")
            tokens = sc.stats.forward_tokens
            raw = raw_throughput(model, batch=16, length=int(round(np.mean(_prompt_tokens(sc, demo_lists, qs)))))
            rows.append({"workload": name, "attention": impl, "first_run_s": times[0], "best_s": min(times),
                         "lm_tokens": tokens, "tokens_per_s": tokens / min(times), "raw_tokens_per_s": raw,
                         "fraction_of_raw": tokens / min(times) / raw})
            print(f"{name}, {impl}: first run {times[0]:.1f} s, best {min(times):.1f} s, "
                  f"{tokens / min(times):,.0f} tokens/s = {100 * rows[-1]['fraction_of_raw']:.0f} % of raw", flush=True)
        agree = float(np.mean(outs["sdpa"].argmax(1) == outs["flex"].argmax(1)))
        diff = float(np.abs(outs["sdpa"] - outs["flex"]).max())
        rows[-1].update(prediction_agreement=agree, max_abs_logprob_diff=diff)
        print(f"{name}: flex and sdpa agree on {100 * agree:.1f} % of predictions", flush=True)
    info["peak_rss_mb"] = peak_rss_mb()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
