"""``rl-select bench scale``: the scale-out paths measured side by side in one run.

1. **Backends.** The same (demos, query, label) prompts scored by the OpenAI-compatible backend against a
   local llama-cpp-python server (serving the bundled GGUF) and by the in-process HF backend, caches
   off. Printed: wall time, prompts and prompt tokens per second, the ratio, prediction agreement and
   the mean |log-prob| gap.
2. **Executors.** Random-policy rollout collection of the same config (caches off, fresh stores) in
   process, and on Ray with 1 and 2 workers. Printed: wall time (Ray's includes starting the actors,
   each of which loads the LM), time to the first written episode, episodes per second over the whole
   run and after the first episode, the ratio to in-process, and whether the stores hold the same
   episodes (actions exactly, numbers to float noise).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rl_select.experiments.config import RunConfig
from rl_select.tasks import TaskSpec


def bench_backends(*, spec: TaskSpec, data: str | None, k: int, n_queries: int, seed: int = 0,
                   server_threads: int = 2, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Server backend vs HF backend on the same prompts (see the module docstring)."""
    from rl_select.data import load_task, make_splits
    from rl_select.lm.hf import HFScorer, load_causal_lm
    from rl_select.lm.local_server import LlamaCppServer
    from rl_select.lm.openai import OpenAICompletionsScorer

    train, test = load_task(spec, data=data)
    splits = make_splits(train, test, n_pool=max(16, k), n_val=n_queries, n_test=1, seed=seed)
    demos, queries = list(splits.pool[:k]), list(splits.val)
    model, tokenizer = load_causal_lm("bundled", dtype="auto")
    hf = HFScorer(model, tokenizer, spec, model_id="bundled")
    hf.logprobs(demos=demos[:1], queries=queries[:1])  # warm-up
    hf.stats.__init__()
    t0 = time.perf_counter()
    hf_lp = hf.logprobs(demos=demos, queries=queries)
    hf_s = time.perf_counter() - t0
    if progress is not None:
        progress("starting the llama-cpp-python server ...")
    with LlamaCppServer(n_threads=server_threads) as server:
        client = OpenAICompletionsScorer(spec, base_url=server.url, model=server.alias, batch_size=1,
                                         max_concurrency=1, logprob_style="echo_shifted", timeout=600.0)
        client.logprobs(demos=[], queries=queries[:1])  # warm-up
        client.stats.__init__()
        if progress is not None:
            progress(f"scoring {len(queries) * len(spec.labels)} prompts on the server ...")
        t0 = time.perf_counter()
        server_lp = client.logprobs(demos=demos, queries=queries)
        server_s = time.perf_counter() - t0
    n_prompts = len(queries) * len(spec.labels)
    prompt_tokens = client.stats.forward_tokens
    return {
        "task": spec.name, "k": k, "n_queries": len(queries), "n_prompts": n_prompts, "prompt_tokens": prompt_tokens,
        "hf_dtype": str(model.dtype).removeprefix("torch."), "server_threads": server_threads,
        "hf_seconds": hf_s, "server_seconds": server_s,
        "hf_prompts_per_s": n_prompts / hf_s, "server_prompts_per_s": n_prompts / server_s,
        "hf_prompt_tokens_per_s": prompt_tokens / hf_s, "server_prompt_tokens_per_s": prompt_tokens / server_s,
        "hf_speedup_over_server": server_s / hf_s,
        "agreement": float(np.mean(hf_lp.argmax(1) == server_lp.argmax(1))),
        "mean_abs_logprob_diff": float(np.abs(hf_lp - server_lp).mean()),
    }


def bench_executors(cfg: RunConfig, *, workers: tuple[int, ...] = (1, 2),
                    progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Rollout collection in process and on a local Ray with each worker count (see the module docstring)."""
    from agents.rollout_store import RolloutStore
    from rl_select.experiments.collection import EpisodeWorker, collect_rollouts
    from rl_select.experiments.executors import Executor, LocalExecutor, RayExecutor
    from rl_select.experiments.harness import scorer_factory
    from rl_select.experiments.task_envs import build_task_envs

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rl-select-bench-") as tmp:
        stores: dict[str, list] = {}
        runs: list[tuple[str, int]] = [("in-process", 0)] + [("ray", w) for w in workers]
        for kind, w in runs:
            name = kind if kind == "in-process" else f"ray x{w}"
            c = cfg.updated(cache="none", store=str(Path(tmp) / f"{name.replace(' ', '')}.jsonl"),
                            train_tasks=[], executor="local" if w == 0 else "ray", workers=max(1, w))
            firsts: list[float] = []
            t0 = time.perf_counter()

            def tick(_text: str, t0: float = t0, firsts: list[float] = firsts, name: str = name) -> None:
                firsts.append(time.perf_counter() - t0)
                if progress is not None:
                    progress(f"{name}: episode {len(firsts)}/{cfg.agent.episodes}")

            executor: Executor = RayExecutor(EpisodeWorker, c) if w else \
                LocalExecutor(EpisodeWorker(build_task_envs(c, scorer_factory(c))))
            collect_rollouts(c, executor, progress=tick)
            if w:
                import ray

                ray.shutdown()  # a fresh local Ray per worker count
            wall = time.perf_counter() - t0
            stores[name] = RolloutStore(c.store).load()
            after = wall - firsts[0] if firsts else float("nan")
            results.append({"executor": name, "workers": w, "episodes": c.episodes, "seconds": wall,
                            "first_episode_s": firsts[0] if firsts else float("nan"),
                            "episodes_per_s": c.episodes / wall,
                            "episodes_per_s_after_first": (c.episodes - 1) / after if after > 0 else float("nan")})
        base = stores["in-process"]
        for r in results:
            r["speedup_vs_in_process"] = results[0]["seconds"] / r["seconds"]
            r["same_episodes"] = _same(base, stores[r["executor"]])
    return {"task": cfg.task, "k": cfg.k, "n_val": cfg.splits.n_val, "n_candidates": cfg.n_candidates,
            "episodes": cfg.agent.episodes, "rows": results}


def _same(a: list, b: list) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if (x.actions, x.chosen, x.env_seed) != (y.actions, y.chosen, y.env_seed):
            return False
        if not (np.allclose(x.rewards, y.rewards, atol=1e-6) and np.allclose(x.states, y.states, atol=1e-4)
                and np.allclose(x.candidates, y.candidates, atol=1e-4)):
            return False
    return True
