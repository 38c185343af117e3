"""``rl-select bench collect``: random-policy rollout collection per feature set and reward mode, side by side.

One process, one loaded model. Every configuration starts from an empty score cache, an empty row table
and an empty store (in a temporary folder); its one-off row table (the zero-shot rows of the whole
train pool and val, for the table feature sets) is built first and timed separately, then ``E``
episodes are collected into the store exactly as ``rl-select collect`` does (:func:`run_logged_episode`).

Printed per configuration: episodes per minute (after the table), the table's seconds, the projected
wall time of 2,000 episodes (table included), LM query rows and forward tokens per episode (measured,
and the declared cost :meth:`FeatureSpec.lm_rows <rl_select.mdp.features.FeatureSpec.lm_rows>`), the
share of wall time inside model forwards (the LM body and head, timed by forward hooks), and the
process's peak resident memory so far. Beside them: the raw forward throughput of the same model and
dtype, and whether the CPU has native bf16.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.rollout_store import RolloutStore
from agents.rollouts import random_valid_action, run_logged_episode
from envs.demo_selection import DemoSelectionEnv
from rl_select.data import load_task, make_splits
from rl_select.experiments.bench_scorer import raw_throughput
from rl_select.lm.cache import ScoreCache
from rl_select.lm.hf import HFScorer, cpu_has_fast_bf16, dtype_name, load_causal_lm, model_fingerprint
from rl_select.mdp.feature_spec import FeatureSpec
from rl_select.mdp.table import RowTable
from rl_select.prompts import content_free_queries, render_prefix, render_query
from rl_select.tasks import TaskSpec

TARGET_EPISODES = 2000
"""The projection's episode count (Zhang et al. 2022: 2,000 random episodes per task)."""


class _ForwardClock:
    """Wall seconds inside ``modules``' forwards (hooks; nested calls are not double counted)."""

    def __init__(self, modules: Sequence[torch.nn.Module]) -> None:
        self.seconds = 0.0
        self._depth = 0
        self._t0 = 0.0
        self._handles = []
        for m in modules:
            self._handles.append(m.register_forward_pre_hook(self._pre))
            self._handles.append(m.register_forward_hook(self._post))

    def _pre(self, *_: Any) -> None:
        if self._depth == 0:
            self._t0 = time.perf_counter()
        self._depth += 1

    def _post(self, *_: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.seconds += time.perf_counter() - self._t0

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_collect(
    *, spec: TaskSpec, data: str | None = None, model_id: str = "bundled", dtype: str = "auto", k: int = 4,
    n_candidates: int = 32, n_val: int = 32, train_pool: int = 512, episodes: int = 8,
    feature_sets: Sequence[str] = ("active", "labelled", "zeroshot", "table"),
    rewards: Sequence[str] = ("marginal", "terminal"), calibrate: bool = True, mode: str = "direct",
    length_norm: bool = False, batch_size: int = 16, seed: int = 0, stratify: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns every figure (see the module docstring)."""
    for fs in feature_sets:
        FeatureSpec(fs)
    train, test = load_task(spec, data=data)
    splits = make_splits(train, test, n_pool=min(train_pool, len(train) - n_val), n_val=n_val, n_test=1, seed=seed,
                         stratify=stratify)
    model, tokenizer = load_causal_lm(model_id, dtype=dtype)
    fingerprint = model_fingerprint(model)

    # raw forward throughput at the length of a k-demo prompt plus a query
    rng = np.random.default_rng(seed)
    demos = [splits.pool[i] for i in rng.choice(len(splits.pool), size=k, replace=False)]
    enc = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    q_len = float(np.mean([enc(render_query(spec, q)) for q in splits.val]))
    prompt_len = int(round(enc(render_prefix(spec, demos)) + q_len))
    if progress is not None:
        progress("raw forward throughput")
    raw = raw_throughput(model, batch=batch_size, length=prompt_len, all_logits=False)
    raw_query = raw_throughput(model, batch=batch_size, length=max(1, int(round(q_len))), all_logits=False)

    rows: list[dict[str, Any]] = []
    extra = len(content_free_queries(spec)) if calibrate else 0
    for fs in feature_sets:
        fspec = FeatureSpec(fs)
        for reward in rewards:
            if progress is not None:
                progress(f"{fs} / {reward}: {episodes} episodes")
            with tempfile.TemporaryDirectory(prefix="rl_select_bench_") as tmp:
                cache = ScoreCache(Path(tmp) / "scores.sqlite")
                scorer = HFScorer(model, tokenizer, spec, model_id=model_id, mode=mode, length_norm=length_norm,
                                  batch_size=batch_size, cache=cache, calibrate=calibrate, fingerprint=fingerprint)
                clock = _ForwardClock([scorer._body, scorer._head])
                t0 = time.perf_counter()
                table = RowTable.in_folder(scorer, Path(tmp) / "tables") if fspec.uses_table else None
                if table is not None:
                    table.ensure(tuple(splits.pool) + tuple(splits.val))  # the one-off rows, all at once
                table_s = time.perf_counter() - t0
                table_stats = scorer.stats.copy()
                env = DemoSelectionEnv(scorer=scorer, pool=splits.pool, val=splits.val, k=k, n_candidates=n_candidates,
                                       feature_set=fs, reward=reward, row_table=table)
                store = RolloutStore(Path(tmp) / "store.jsonl")
                t1 = time.perf_counter()
                for i in range(episodes):
                    store.append(run_logged_episode(env, index=i, seed=seed, choose=random_valid_action,
                                                    policy="random"))
                ep_s = time.perf_counter() - t1
                wall = time.perf_counter() - t0
                clock.close()
                spent = scorer.stats - table_stats
                cache.close()
            per_min = 60.0 * episodes / ep_s
            declared = fspec.lm_rows(n_candidates, n_val, reward=reward, k=k, extra_per_call=extra)
            rows.append({
                "feature_set": fs, "reward": reward, "episodes": episodes,
                "table_seconds": table_s, "table_rows": table_stats.cache_misses,
                "table_tokens": table_stats.forward_tokens,
                "episode_seconds": ep_s, "episodes_per_min": per_min,
                "projected_2000_min": (table_s + TARGET_EPISODES * ep_s / episodes) / 60.0,
                "lm_rows_per_episode": spent.cache_misses / episodes,
                "rows_asked_per_episode": spent.queries / episodes,
                "declared_rows_per_episode": declared["per_episode"],
                "declared_rows_per_step": declared["per_step"],
                "forward_tokens_per_episode": spent.forward_tokens / episodes,
                "prefix_forwards_per_episode": spent.prefix_forwards / episodes,
                "forward_share": clock.seconds / wall if wall else 0.0,
                "lm_tokens_per_s": (spent.forward_tokens + table_stats.forward_tokens) / clock.seconds
                if clock.seconds else 0.0,
                "peak_rss_mb": _peak_rss_mb(),
            })
    return {
        "task": spec.name, "model": model_id, "dtype": dtype_name(model.dtype), "native_bf16": cpu_has_fast_bf16(),
        "threads": torch.get_num_threads(), "k": k, "n_candidates": n_candidates, "n_val": n_val,
        "train_pool": len(splits.pool), "calibrate": calibrate, "batch_size": batch_size, "episodes": episodes,
        "raw_forward_tokens_per_s": raw, "raw_forward_prompt_length": prompt_len,
        "raw_forward_tokens_per_s_query_length": raw_query, "raw_forward_query_length": int(round(q_len)),
        "target_episodes": TARGET_EPISODES, "rows": rows,
    }
