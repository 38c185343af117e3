"""The evaluation harness: selectors x seeds on one task, with the frozen LM's spend measured.

Every number it reports comes from the same code path: seeded splits (pool / val / test), the
selector's choice through the cached scorer, and test accuracy on held-out rows. LM spend is the
scorer's counter delta around each phase, so a selector cannot under-report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from rl_select.data import Splits, load_task, make_splits
from rl_select.errors import ConfigError, SelectionError, one_of
from rl_select.experiments.config import RunConfig
from rl_select.experiments.executors import Executor, ScorerFactory, add_stats
from rl_select.lm.base import CachedScorer, ScorerStats, grouped_logprobs
from rl_select.lm.cache import check_cache, open_cache
from rl_select.metrics import accuracy, label_ids
from rl_select.selectors import SELECTORS, SelectionContext, Selector, ZeroShotSelector, make_selector
from rl_select.tasks import TaskSpec, resolve_task
from rl_select.types import Example

log = logging.getLogger("rl_select")


def scorer_factory(cfg: RunConfig) -> Callable[[TaskSpec], CachedScorer]:
    """The ``[lm]`` section's scorer factory over the run's cache: the LM loads once, then a scorer per task."""
    return cfg.lm.factory(open_cache(cfg.cache))


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
        spec = resolve_task(cfg.task)
        train, test = load_task(spec, data=cfg.data)
        return cls(spec, train, test)

    def splits(self, cfg: RunConfig, seed: int) -> Splits:
        sp = cfg.splits
        return make_splits(
            self.train, self.test, n_pool=sp.n_pool, n_val=sp.n_val, n_test=sp.n_test, seed=seed,
            stratify=sp.stratify,
        )


def grouped_accuracy(scorer: CachedScorer, demo_lists: Sequence[Sequence[Example]], test: Sequence[Example]) -> float:
    """Accuracy when query ``i`` is prompted with ``demo_lists[i]``; queries sharing a list share a prefix."""
    pred = grouped_logprobs(scorer, demo_lists, test).argmax(axis=1)
    return float(np.mean(pred == label_ids(scorer.spec.labels, test)))


def _spend(prefix: str, stats: ScorerStats) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in stats.as_dict().items()}


def run_one(
    name: str, selector: Selector | None, scorer: CachedScorer, splits: Splits, *, k: int, seed: int,
    demos: Sequence[Example] | None = None,
) -> dict[str, Any]:
    """Select (or take ``demos``), then measure val and test accuracy; one result row (with the test rows over the
    LM's context window: ``test_rows_failed``, scored wrong, and ``test_rows_dropped_demos``)."""
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
    mid = scorer.stats.copy()
    test_acc = grouped_accuracy(scorer, lists, splits.test)
    eval_stats, test_stats = scorer.stats - before, scorer.stats - mid
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
        "test_rows_failed": test_stats.rows_failed,
        "test_rows_dropped_demos": test_stats.rows_dropped_demos,
    }


def make_jobs(cfg: RunConfig) -> list[tuple[str, Selector]]:
    """``(name, selector)`` for every configured selector; raises on unknown names or arguments.

    A name may carry a label after a colon (``"policy:dqn"``): the part before it picks the selector,
    the whole name its ``selector_args`` entry and its row in the tables, so one selector can appear
    several times with different arguments.
    """
    if not cfg.selectors.names:
        raise ConfigError("selectors is empty; expected at least one selector name")
    unknown = {name for name in cfg.selectors.args if name.split(":")[0] not in SELECTORS}
    if unknown:
        first = sorted(unknown)[0]
        raise ConfigError(f"selector_args names {sorted(unknown)}, which are not selectors; expected some of "
                          f"{one_of(sorted(SELECTORS), first.split(':')[0])}")
    args = cfg.selectors.args
    return [(name, make_selector(name.split(":")[0], **args.get(name, {}))) for name in cfg.selectors.names]


def check_plan(cfg: RunConfig, data: TaskData, *, demos: Sequence[Example] | None = None) -> None:
    """Refuse, before any model is loaded, a run that :func:`run_grid` would refuse part-way.

    Checks the selector names and arguments, that every seed's splits fit the data, that ``k``
    fits the pool for every selector that draws demonstrations from it, and that the score cache can be opened.

    Raises:
        ConfigError, SelectionError, DataError, CacheError: One line naming the bad value.
    """
    check_cache(cfg.cache)
    jobs = [] if demos is not None else make_jobs(cfg)
    for seed in cfg.seeds:
        data.splits(cfg, seed)
    choosers = [name for name, sel in jobs if not isinstance(sel, ZeroShotSelector)]
    if choosers and cfg.k < 1:
        raise SelectionError(f"k={cfg.k} for selector {choosers[0]!r}; expected k >= 1 (no demonstrations: the "
                             "zero_shot selector)")
    if choosers and cfg.k > cfg.splits.n_pool:
        n = cfg.splits.n_pool
        raise SelectionError(f"k={cfg.k} is larger than the pool size n_pool={n}; expected k <= {n}")


class EvalWorker:
    """Runs ``(seed, name)`` evaluation jobs: one selector's :func:`run_one` row on that seed's splits.

    The worker of :func:`run_grid`, on any :class:`~rl_select.experiments.executors.Executor`.

    Args:
        cfg: The run config (selectors, split sizes, k).
        data: The task's data.
        scorer: The LM.
        demos: Explicit ordered demonstrations instead of selectors: then the one job is ``label``.
        label: Their job name.
    """

    def __init__(self, cfg: RunConfig, data: TaskData, scorer: CachedScorer, *,
                 demos: Sequence[Example] | None = None, label: str = "explicit") -> None:
        self.cfg, self.data, self.demos = cfg, data, demos
        self.scorers = [scorer]
        self.jobs: dict[str, Selector | None] = {label: None} if demos is not None else dict(make_jobs(cfg))

    @classmethod
    def from_config(cls, cfg: RunConfig, factory: ScorerFactory) -> EvalWorker:
        """The worker of ``cfg``'s task and selectors, with the LM ``factory(cfg)`` loads."""
        data = TaskData.load(cfg)
        return cls(cfg, data, factory(cfg)(data.spec))

    def run(self, seed: int, name: str) -> tuple[dict[str, Any], str]:
        """Job ``name`` on seed ``seed``: its result row and the scorer's fingerprint."""
        scorer = self.scorers[0]
        row = run_one(name, self.jobs[name], scorer, self.data.splits(self.cfg, seed), k=self.cfg.k, seed=seed,
                      demos=self.demos)
        return row, scorer.fingerprint


class GridResult(NamedTuple):
    """What :func:`run_grid` measured."""

    rows: list[dict[str, Any]]
    lm: ScorerStats
    fingerprint: str


def run_grid(cfg: RunConfig, executor: Executor, *, names: Sequence[str] | None = None,
             on_row: Callable[[dict[str, Any]], None] | None = None) -> GridResult:
    """Every job on every seed of ``cfg``, on ``executor`` (of an :class:`EvalWorker`).

    Args:
        cfg: The run config (``seeds``; the jobs are ``cfg.selectors.names`` unless ``names`` is given).
        executor: Where the jobs run.
        names: The worker's job names, e.g. ``[label]`` for a worker with explicit demos.
        on_row: Called with each row, in the order of the result.

    Returns:
        The rows (seed by seed, jobs in order), the summed LM spend and the scorer fingerprint.
    """
    units = [(seed, name) for seed in cfg.seeds for name in (cfg.selectors.names if names is None else names)]
    rows: list[dict[str, Any]] = []
    lm, fingerprint = ScorerStats(), ""
    with executor:
        for done in executor.map(units):
            row, fingerprint = done.result
            log.info("%s seed=%d test_acc=%.4f select_misses=%d", row["selector"], row["seed"], row["test_acc"],
                     row["select_cache_misses"])
            rows.append(row)
            lm = add_stats(lm, done.spend)
            if on_row is not None:
                on_row(row)
    return GridResult(rows, lm, fingerprint)


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per selector: test accuracy mean and std over seeds, val accuracy, mean LM spend of selection, and the
    test rows over the LM's context window, summed over seeds (:mod:`rl_select.lm.window`)."""
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
            "test_rows_failed": sum(r.get("test_rows_failed", 0) for r in rs),
            "test_rows_dropped_demos": sum(r.get("test_rows_dropped_demos", 0) for r in rs),
        })
    return out
