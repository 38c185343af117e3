"""``rl-select bench scorer``: the scorer's three workloads against the raw forward of the same machine.

Measured side by side in one process, caches off, calibrated (each prompt also scores its content-free rows):

1. **one prompt**: ``k`` random pool demonstrations, ``n_queries`` test rows (the fixed-prompt path);
2. **per-query prompts**: kNN's ``k`` nearest pool examples for each of ``n_queries`` test rows, all in one
   :meth:`~rl_select.lm.base.CachedScorer.logprobs_many` call (the packed many-prompt path); beside it the
   path it replaces (one scorer call per prompt) on the same prompts, for the speed ratio and agreement;
3. **per-query episodes**: ``n_episodes`` episodes of the per-query MDP under a random policy (a query, ``k``
   of its ``m`` nearest pool examples in random order, one LM row), scored ``episodes_per_call`` at a time as
   collection does; the resident memory after 10 % and 100 % of them shows whether anything grows.

Each workload's throughput is the LM tokens it ran per second; ``raw`` is the bare model forward (body, head at
the last position) over dense random ids, batch ``batch_size``, as long as that workload's average prompt.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from rl_select.data import load_task, make_splits
from rl_select.lm.base import CachedScorer
from rl_select.lm.hf import HFScorer, cpu_has_fast_bf16, load_causal_lm
from rl_select.prompts import content_free_queries, render_prompt
from rl_select.selectors import SelectionContext
from rl_select.selectors.knn import KNNSelector
from rl_select.tasks import TaskSpec
from rl_select.types import Example


def _best_of(fn, repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


@torch.inference_mode()
def raw_throughput(model, *, batch: int, length: int, all_logits: bool = False, repeats: int = 3) -> float:
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


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def rss_mb() -> float:
    """Resident memory of this process now, MB (``/proc/self/status``; the peak where that is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prompt_tokens(scorer: HFScorer, lists: Sequence[Sequence[Example]], queries: Sequence[Example]) -> list[int]:
    """Tokens of each whole prompt (demonstrations + query), what a scorer without sharing would run."""
    texts = [render_prompt(scorer.spec, demos, q) for demos, q in zip(lists, queries)]
    return [len(ids) for ids in scorer.tokens.encode(texts)]


def _one_call_per_prompt(scorer: CachedScorer, lists: Sequence[Sequence[Example]],
                         queries: Sequence[Example]) -> np.ndarray:
    """The path the many-prompt call replaces: one scorer call per distinct demo list."""
    return np.stack([scorer.logprobs(demos=demos, queries=[q])[0] for demos, q in zip(lists, queries)])


def _workload(name: str, scorer: HFScorer, model, run: Callable[[], np.ndarray], tokens_per_prompt: list[int],
              n_prompts: int, batch_size: int) -> tuple[dict[str, Any], np.ndarray]:
    before = scorer.stats.copy()
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    spent = scorer.stats - before
    length = max(1, int(round(float(np.mean(tokens_per_prompt)))))
    raw = raw_throughput(model, batch=batch_size, length=length)
    tok_s = spent.forward_tokens / seconds
    n_cf = len(content_free_queries(scorer.spec)) if scorer.calibrate else 0
    return {
        "workload": name, "prompts": n_prompts, "seconds": seconds, "lm_tokens": spent.forward_tokens,
        "lm_tokens_per_s": tok_s, "rows": spent.queries, "content_free_rows_per_prompt": n_cf,
        "prompt_tokens_answered_per_s": sum(tokens_per_prompt) / seconds,
        "raw_tokens_per_s": raw, "raw_length": length, "fraction_of_raw": tok_s / raw,
        "peak_rss_mb": peak_rss_mb(),
    }, out


def bench_scorer(
    *, spec: TaskSpec, data: str | None = None, model_id: str = "bundled", dtype: str = "auto", k: int = 4,
    n_queries: int = 500, n_pool: int = 100, n_episodes: int = 2000, m: int = 16, episodes_per_call: int = 100,
    batch_size: int = 16, calibrate: bool = True, compare: bool = True, seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the three workloads; returns every measured figure (see the module docstring)."""
    say = progress or (lambda _s: None)
    train, test = load_task(spec, data=data)
    splits = make_splits(train, test, n_pool=n_pool, n_val=min(100, max(1, len(train) - n_pool - 1)),
                         n_test=n_queries, seed=seed)
    queries = list(splits.test)
    rng = np.random.default_rng(seed)
    model, tokenizer = load_causal_lm(model_id, dtype=dtype)
    scorer = HFScorer(model, tokenizer, spec, model_id=model_id, batch_size=batch_size, calibrate=calibrate)
    ctx = SelectionContext(pool=splits.pool, val=splits.val, k=k, scorer=scorer, rng=rng)
    knn = KNNSelector()
    scorer.logprobs(demos=splits.pool[:1], queries=queries[:2])  # warm-up
    res: dict[str, Any] = {
        "task": spec.name, "model": model_id, "dtype": str(model.dtype).removeprefix("torch."), "k": k,
        "n_pool": len(splits.pool), "calibrated": calibrate, "threads": torch.get_num_threads(),
        "cpu": cpu_name(), "native_bf16": cpu_has_fast_bf16(), "device": str(scorer.device),
        "rss_after_load_mb": rss_mb(), "workloads": [],
    }

    say(f"one prompt x {len(queries)} queries")
    demos = [splits.pool[i] for i in rng.choice(len(splits.pool), size=k, replace=False)]
    w1, _ = _workload("one prompt", scorer, model, lambda: scorer.logprobs(demos=demos, queries=queries),
                      _prompt_tokens(scorer, [demos] * len(queries), queries), len(queries), batch_size)
    res["workloads"].append(w1)

    say(f"kNN: {len(queries)} per-query prompts")
    lists = knn.select_for(ctx, queries)
    tokens = _prompt_tokens(scorer, lists, queries)
    w2, many = _workload("per-query prompts (kNN)", scorer, model,
                         lambda: scorer.logprobs_many(demo_lists=lists, queries=queries), tokens, len(queries),
                         batch_size)
    if compare:
        say("kNN, one scorer call per prompt (the path it replaces)")
        before = scorer.stats.copy()
        t0 = time.perf_counter()
        single = _one_call_per_prompt(scorer, lists, queries)
        w2["one_call_per_prompt_seconds"] = time.perf_counter() - t0
        w2["one_call_per_prompt_lm_tokens"] = (scorer.stats - before).forward_tokens
        w2["speedup_over_one_call_per_prompt"] = w2["one_call_per_prompt_seconds"] / w2["seconds"]
        w2["prediction_agreement"] = float(np.mean(single.argmax(1) == many.argmax(1)))
        w2["max_abs_logprob_diff"] = float(np.abs(single - many).max())
        margin = np.sort(single, axis=1)
        w2["max_margin_where_predictions_differ"] = float(
            np.max((margin[:, -1] - margin[:, -2])[single.argmax(1) != many.argmax(1)], initial=0.0))
    res["workloads"].append(w2)

    say(f"per-query episodes: {n_episodes}")
    res["workloads"].append(_episodes(scorer, model, knn, ctx, queries, n_episodes=n_episodes, m=m, k=k,
                                      per_call=episodes_per_call, batch_size=batch_size, rng=rng, say=say))
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def _episodes(scorer: HFScorer, model, knn: KNNSelector, ctx: SelectionContext, queries: Sequence[Example], *,
              n_episodes: int, m: int, k: int, per_call: int, batch_size: int, rng: np.random.Generator,
              say: Callable[[str], None]) -> dict[str, Any]:
    """Random-policy per-query episodes: a query, ``k`` of its ``m`` nearest pool examples in random order."""
    m = min(m, len(ctx.pool))
    near = knn.select_for(SelectionContext(pool=ctx.pool, val=ctx.val, k=m, scorer=ctx.scorer, rng=ctx.rng),
                          queries)
    eps_q = [queries[i] for i in rng.integers(len(queries), size=n_episodes)]
    index = {q.uid: i for i, q in enumerate(queries)}
    eps_d = [[near[index[q.uid]][j] for j in rng.permutation(m)[:k]] for q in eps_q]
    tokens = _prompt_tokens(scorer, eps_d, eps_q)
    rss_at: dict[str, float] = {}

    def run() -> np.ndarray:
        out = []
        for start in range(0, n_episodes, per_call):
            part = slice(start, start + per_call)
            out.append(scorer.logprobs_many(demo_lists=eps_d[part], queries=eps_q[part]))
            done = min(n_episodes, start + per_call)
            if "10%" not in rss_at and done >= n_episodes / 10:
                rss_at["10%"] = rss_mb()
            say(f"per-query episodes: {done}/{n_episodes}")
        rss_at["100%"] = rss_mb()
        return np.concatenate(out)

    w, _ = _workload(f"per-query episodes (M={m})", scorer, model, run, tokens, n_episodes, batch_size)
    w["episodes_per_minute"] = 60 * n_episodes / w["seconds"]
    w["rss_at_10pct_mb"], w["rss_at_100pct_mb"] = rss_at.get("10%", float("nan")), rss_at["100%"]
    w["episodes_per_call"] = per_call
    return w
