"""``rl-select bench scorer``: the fast scorer against the reference scorer, side by side in one process.

Both score the same k demonstrations and the same validation queries with the caches off. Printed:
wall times and their ratio, prediction agreement and the largest log-prob gap, the tokens per second the
fast scorer ran through the LM, the prompt tokens per second it answered for (what a naive scorer would
have to run), and the model's raw forward throughput on this machine for the same dtype.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from rl_select.data import load_task, make_splits
from rl_select.lm.hf import HFScorer, load_causal_lm
from rl_select.lm.reference import ReferenceScorer
from rl_select.tasks import TaskSpec


def _best_of(fn, repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


@torch.inference_mode()
def raw_throughput(model, *, batch: int, length: int, all_logits: bool, repeats: int = 3) -> float:
    """Tokens/s of one forward over random ids ``(batch, length)``: LM head at the last position or everywhere."""
    ids = torch.randint(100, model.config.vocab_size - 100, (batch, length), device=next(model.parameters()).device)

    def step():
        if all_logits:
            model(input_ids=ids).logits.float()
        else:
            h = model.base_model(input_ids=ids).last_hidden_state[:, -1]
            model.get_output_embeddings()(h).float()

    step()
    seconds, _ = _best_of(step, repeats)
    return batch * length / seconds


def bench_scorer(
    *, spec: TaskSpec, data: str | None = None, model_id: str = "bundled", dtype: str = "auto", k: int = 4,
    n_queries: int = 64, batch_size: int = 16, seed: int = 0, repeats: int = 3, progress=None,
) -> dict[str, Any]:
    """Run the benchmark; returns every measured figure (see the module docstring)."""
    train, test = load_task(spec, data=data)
    splits = make_splits(train, test, n_pool=max(32, k), n_val=n_queries, n_test=1, seed=seed)
    rng = np.random.default_rng(seed)
    demos = [splits.pool[i] for i in rng.choice(len(splits.pool), size=k, replace=False)]
    queries = list(splits.val)

    fast_model, tokenizer = load_causal_lm(model_id, dtype=dtype)
    ref_model = fast_model if fast_model.dtype == torch.float32 else load_causal_lm(model_id, dtype="fp32")[0]
    fast = HFScorer(fast_model, tokenizer, spec, model_id=model_id, batch_size=batch_size)
    ref = ReferenceScorer(ref_model, tokenizer, spec, model_id=model_id)

    fast.logprobs(demos=demos[:1], queries=queries[:2])  # warm-up
    ref.logprobs(demos=demos[:1], queries=queries[:1])
    fast.stats.__init__()
    ref.stats.__init__()
    fast_s, fast_lp = _best_of(lambda: fast.logprobs(demos=demos, queries=queries), repeats)
    fast_tokens = fast.stats.forward_tokens // repeats
    t0 = time.perf_counter()
    ref_lp = ref.logprobs(demos=demos, queries=queries)
    ref_s = time.perf_counter() - t0
    if progress is not None:
        progress("raw throughput")
    mean_len = int(round(ref.stats.forward_tokens / (len(queries) * len(spec.labels))))
    raw_fast = raw_throughput(fast_model, batch=batch_size, length=mean_len, all_logits=False)
    raw_ref = raw_throughput(ref_model, batch=1, length=mean_len, all_logits=True)
    return {
        "task": spec.name, "model": model_id, "dtype": str(fast_model.dtype).removeprefix("torch."),
        "k": k, "n_queries": len(queries), "n_labels": len(spec.labels), "batch_size": batch_size,
        "threads": torch.get_num_threads(), "device": str(fast.device),
        "fast_seconds": fast_s, "reference_seconds": ref_s, "speedup": ref_s / fast_s,
        "agreement": float(np.mean(fast_lp.argmax(1) == ref_lp.argmax(1))),
        "max_abs_logprob_diff": float(np.abs(fast_lp - ref_lp).max()),
        "fast_lm_tokens": fast_tokens, "reference_lm_tokens": ref.stats.forward_tokens,
        "fast_lm_tokens_per_s": fast_tokens / fast_s,
        "prompt_tokens_answered_per_s": ref.stats.forward_tokens / fast_s,
        "raw_forward_tokens_per_s_last_logits": raw_fast,
        "raw_forward_tokens_per_s_all_logits_fp32_batch1": raw_ref,
        "fraction_of_raw_throughput": (fast_tokens / fast_s) / raw_fast,
        "mean_prompt_tokens": mean_len,
    }
