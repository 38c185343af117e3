"""The evaluation harness: selectors x seeds on one task, with the frozen LM's spend measured.

Every number it reports comes from the same code path: seeded splits (pool / val / test), the
selector's choice through the cached scorer, and test accuracy on held-out rows. LM spend is the
scorer's counter delta around each phase, so a selector cannot under-report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl_select.data import Splits, load_task, make_splits
from rl_select.errors import ConfigError, SelectionError
from rl_select.experiments.config import RunConfig
from rl_select.lm.base import CachedScorer, ScorerStats
from rl_select.lm.cache import ScoreCache, default_cache_path
from rl_select.reward import accuracy, label_ids
from rl_select.selectors import SELECTORS, SelectionContext, Selector, ZeroShotSelector, make_selector
from rl_select.tasks import TaskSpec, get_task, load_task_spec
from rl_select.types import Example

log = logging.getLogger("rl_select")


def resolve_spec(task: str) -> TaskSpec:
    """A built-in task name, or a path to a JSON/TOML spec file."""
    if task.endswith((".json", ".toml")) or Path(task).is_file():
        return load_task_spec(task)
    return get_task(task)


def open_cache(path: str) -> ScoreCache | None:
    """``""``: the default cache file; ``"none"``: no cache; else that file."""
    if path.lower() == "none":
        return None
    return ScoreCache(path or default_cache_path())


def scorer_factory(cfg: RunConfig) -> Callable[[TaskSpec], CachedScorer]:
    """Load the configured LM once; the returned function wraps it in a scorer for any task spec."""
    if cfg.backend == "openai":
        from rl_select.lm.openai_compat import OpenAICompletionsScorer

        cache = open_cache(cfg.cache)
        return lambda spec: OpenAICompletionsScorer(
            spec, base_url=cfg.base_url or None, model=None if cfg.model == "bundled" else cfg.model,
            mode=cfg.mode, length_norm=cfg.length_norm, calibrate=cfg.calibrate, cache=cache,
            batch_size=cfg.batch_size, max_concurrency=cfg.max_concurrency, timeout=cfg.timeout,
            max_retries=cfg.max_retries,
        )
    from rl_select.lm.hf import HFScorer, load_causal_lm

    model, tokenizer = load_causal_lm(cfg.model, dtype=cfg.dtype, device=cfg.device)
    cache = open_cache(cfg.cache)
    fingerprint: list[str] = []

    def make(spec: TaskSpec) -> CachedScorer:
        scorer = HFScorer(
            model, tokenizer, spec, model_id=cfg.model, mode=cfg.mode, calibrate=cfg.calibrate,
            length_norm=cfg.length_norm, batch_size=cfg.batch_size, cache=cache,
            fingerprint=fingerprint[0] if fingerprint else None,
        )
        fingerprint[:] = [scorer.model_fingerprint]
        return scorer

    return make


def build_scorer(cfg: RunConfig, spec: TaskSpec) -> CachedScorer:
    """The HF scorer the config asks for (loads the model)."""
    return scorer_factory(cfg)(spec)


@dataclass
class TaskData:
    """A task's spec and its full train / test examples."""

    spec: TaskSpec
    train: list[Example]
    test: list[Example]

    @classmethod
    def load(cls, cfg: RunConfig) -> TaskData:
        spec = resolve_spec(cfg.task)
        train, test = load_task(spec, data=cfg.data)
        return cls(spec, train, test)

    def splits(self, cfg: RunConfig, seed: int) -> Splits:
        return make_splits(
            self.train, self.test, n_pool=cfg.n_pool, n_val=cfg.n_val, n_test=cfg.n_test or None, seed=seed,
            stratify=cfg.stratify,
        )


def grouped_accuracy(scorer: CachedScorer, demo_lists: Sequence[Sequence[Example]], test: Sequence[Example]) -> float:
    """Accuracy when query ``i`` is prompted with ``demo_lists[i]``; queries sharing a list share a prefix."""
    groups: dict[tuple, list[int]] = {}
    for i, demos in enumerate(demo_lists):
        groups.setdefault(tuple(d.content() for d in demos), []).append(i)
    pred = np.empty(len(test), dtype=np.int64)
    for rows in groups.values():
        lp = scorer.logprobs(demos=demo_lists[rows[0]], queries=[test[i] for i in rows])
        pred[rows] = lp.argmax(axis=1)
    return float(np.mean(pred == label_ids(scorer.spec.labels, test)))


def _spend(prefix: str, stats: ScorerStats) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in stats.as_dict().items()}


def run_one(
    name: str, selector: Selector | None, scorer: CachedScorer, splits: Splits, *, k: int, seed: int,
    demos: Sequence[Example] | None = None,
) -> dict[str, Any]:
    """Select (or take ``demos``), then measure val and test accuracy; one result row."""
    ctx = SelectionContext(pool=splits.pool, val=splits.val, k=k, scorer=scorer, rng=np.random.default_rng(seed))
    before = scorer.stats.copy()
    if demos is not None:
        lists = [list(demos)] * len(splits.test)
    elif selector is not None and selector.per_query:
        lists = selector.select_for(ctx, splits.test)
    elif selector is not None:
        chosen = selector.select(ctx)
        lists = [chosen] * len(splits.test)
    else:
        raise SelectionError("run_one needs a selector or an explicit demo list")
    select_stats = scorer.stats - before
    fixed = all(lst is lists[0] or lst == lists[0] for lst in lists)
    before = scorer.stats.copy()
    val_acc = accuracy(scorer, demos=lists[0], examples=splits.val) if fixed and splits.val else None
    test_acc = grouped_accuracy(scorer, lists, splits.test)
    eval_stats = scorer.stats - before
    return {
        "selector": name,
        "seed": seed,
        "k": k,
        "test_acc": test_acc,
        "val_acc": val_acc,
        "n_test": len(splits.test),
        "demos": [d.uid for d in lists[0]] if fixed else "per-query",
        **_spend("select", select_stats),
        **_spend("eval", eval_stats),
    }


def make_jobs(cfg: RunConfig) -> list[tuple[str, Selector]]:
    """``(name, selector)`` for every configured selector; raises on unknown names or arguments.

    A name may carry a label after a colon (``"policy:dqn"``): the part before it picks the selector,
    the whole name its ``selector_args`` entry and its row in the tables, so one selector can appear
    several times with different arguments.
    """
    if not cfg.selectors:
        raise ConfigError("selectors is empty; expected at least one selector name")
    unknown = {name for name in cfg.selector_args if name.split(":")[0] not in SELECTORS}
    if unknown:
        raise ConfigError(f"selector_args names {sorted(unknown)}, which are not selectors; expected some of "
                          f"{sorted(SELECTORS)}")
    return [(name, make_selector(name.split(":")[0], **cfg.selector_args.get(name, {}))) for name in cfg.selectors]


def check_plan(cfg: RunConfig, data: TaskData, *, demos: Sequence[Example] | None = None) -> None:
    """Refuse, before any model is loaded, a run that :func:`run_grid` would refuse part-way.

    Checks the selector names and arguments, that every seed's splits fit the data, and that ``k``
    fits the pool for every selector that draws demonstrations from it.

    Raises:
        ConfigError, SelectionError, DataError: One line naming the bad value.
    """
    jobs = [] if demos is not None else make_jobs(cfg)
    for seed in cfg.seeds:
        data.splits(cfg, seed)
    if any(not isinstance(sel, ZeroShotSelector) for _, sel in jobs) and cfg.k > cfg.n_pool:
        raise SelectionError(f"k={cfg.k} is larger than the pool size n_pool={cfg.n_pool}; expected k <= {cfg.n_pool}")


def run_grid(
    cfg: RunConfig, data: TaskData, scorer: CachedScorer, *, on_row: Callable[[dict[str, Any]], None] | None = None,
    demos: Sequence[Example] | None = None, label: str = "explicit",
) -> list[dict[str, Any]]:
    """Every configured selector (or the explicit ``demos``) on every seed."""
    rows: list[dict[str, Any]] = []
    jobs: list[tuple[str, Selector | None]] = [(label, None)] if demos is not None else make_jobs(cfg)
    for seed in cfg.seeds:
        splits = data.splits(cfg, seed)
        for name, selector in jobs:
            row = run_one(name, selector, scorer, splits, k=cfg.k, seed=seed, demos=demos)
            log.info("%s seed=%d test_acc=%.4f select_misses=%d", name, seed, row["test_acc"],
                     row["select_cache_misses"])
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per selector: test accuracy mean and std over seeds, val accuracy, mean LM spend of selection."""
    out = []
    for name in dict.fromkeys(r["selector"] for r in rows):
        rs = [r for r in rows if r["selector"] == name]
        acc = np.array([r["test_acc"] for r in rs])
        vals = [r["val_acc"] for r in rs if r["val_acc"] is not None]
        queries = sum(r["select_queries"] for r in rs)
        hits = sum(r["select_cache_hits"] for r in rs)
        out.append({
            "selector": name,
            "seeds": len(rs),
            "test_acc_mean": float(acc.mean()),
            "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "val_acc_mean": float(np.mean(vals)) if vals else None,
            "select_lm_queries": queries / len(rs),
            "select_lm_misses": sum(r["select_cache_misses"] for r in rs) / len(rs),
            "select_cache_hit_rate": hits / queries if queries else None,
            "select_seconds": sum(r["select_seconds"] for r in rs) / len(rs),
        })
    return out
