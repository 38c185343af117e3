"""Ray as the executor for rollout collection and evaluation (``--executor ray``).

Work is cut into units that are pure functions of the config: a rollout episode ``(task, index)`` (every
random draw comes from ``SeedSequence([seed, index])``, see :mod:`agents.rollouts`) and an evaluation job
``(seed, selector)``. Each Ray actor builds its own envs / scorer from the config once (so each holds a
loaded LM) and runs units; the driver

* writes episodes to the SAME rollout store, in index order (out-of-order arrivals wait in memory), so
  the file is the one the in-process executor writes for the same seed, and a killed run resumes;
* merges every score an actor computed into the driver's score cache (actors journal their cache
  writes and hand them back with each unit), so a later run on any executor finds them, even when a
  worker's disk is another machine's;
* sums the LM spend the actors report.

``address``: ``None`` starts a local Ray with ``workers`` CPUs; ``"auto"`` or ``ray://host:10001``
joins an existing cluster (``$RL_SELECT_RAY_ADDRESS``, then ``$RAY_ADDRESS``, are read when no address
is given). Each actor asks Ray for ``cpus_per_worker`` CPUs and sets torch to that many threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_select.errors import ConfigError, ModelError
from rl_select.experiments.config import RunConfig
from rl_select.lm.base import CachedScorer, ScorerStats
from rl_select.tasks import TaskSpec

#: ``factory(cfg) -> (spec -> scorer)``: how an actor gets its LM (module-level, so Ray pickles it by name).
ScorerFactory = Callable[[RunConfig], Callable[[TaskSpec], CachedScorer]]

ADDRESS_ENVS = ("RL_SELECT_RAY_ADDRESS", "RAY_ADDRESS")


def default_factory() -> ScorerFactory:
    from rl_select.experiments.harness import scorer_factory

    return scorer_factory


def resolve_address(address: str | None) -> str | None:
    """The flag, else ``$RL_SELECT_RAY_ADDRESS``, else ``$RAY_ADDRESS``, else ``None`` (a local Ray)."""
    if address:
        return address
    return next((os.environ[e] for e in ADDRESS_ENVS if os.environ.get(e)), None)


def init_ray(address: str | None, workers: int, cpus_per_worker: int = 1) -> None:
    """Connect to (or start) Ray once per process.

    Raises:
        ConfigError: Ray missing, bad worker count, or the cluster cannot be reached.
    """
    try:
        import ray
    except ImportError:
        raise ConfigError("executor 'ray' needs Ray; expected pip install 'rl-select[ray]'") from None
    if workers < 1 or cpus_per_worker < 1:
        raise ConfigError(f"workers={workers}, cpus_per_worker={cpus_per_worker}; expected both >= 1")
    if ray.is_initialized():
        return
    address = resolve_address(address)
    if address not in (None, "auto", "local"):
        _probe(address)
    kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
    if address is None:
        kwargs["num_cpus"] = workers * cpus_per_worker
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({exc}); expected a running cluster "
                          f"('ray start --head' on it), or no address for a local one") from None


def driver_context() -> dict[str, str]:
    """What a worker needs to see the driver's relative paths: its working directory and data root."""
    from rl_select.data import default_data_root

    root = default_data_root()
    return {"cwd": os.getcwd(), **({"RL_SELECT_DATA": str(Path(root).resolve())} if root else {})}


def _enter(context: dict[str, str], threads: int) -> None:
    """In a worker: the driver's working directory (when this machine has it), data root and thread count."""
    if os.path.isdir(context.get("cwd", "")):
        os.chdir(context["cwd"])
    if context.get("RL_SELECT_DATA") and os.path.isdir(context["RL_SELECT_DATA"]):
        os.environ.setdefault("RL_SELECT_DATA", context["RL_SELECT_DATA"])
    _threads(threads)


def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with one line, when nothing listens at a ``host:port`` / ``ray://host:port`` address
    (``ray.init`` itself waits minutes for an absent GCS)."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r}; expected 'auto', host:port or ray://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({exc.strerror or type(exc).__name__}); "
                          f"expected a running cluster ('ray start --head' on it), or no address for a local one"
                          ) from None


def _threads(n: int) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:  # pragma: no cover
        pass


def _journal_on(scorer: CachedScorer) -> None:
    if scorer.cache is not None and scorer.cache.journal is None:
        scorer.cache.journal = []


def _take(scorers: Sequence[CachedScorer]) -> list[tuple[str, bytes]]:
    """Cache entries stored since the last call, as bytes (cheap to ship)."""
    seen: set[int] = set()
    out: list[tuple[str, bytes]] = []
    for s in scorers:
        if s.cache is not None and id(s.cache) not in seen:
            seen.add(id(s.cache))
            out += [(k, v.tobytes()) for k, v in s.cache.take_journal()]
    return out


class EpisodeWorker:
    """A Ray actor that holds one env per training task (and the LM behind them) and runs episodes."""

    def __init__(self, cfg: dict[str, Any], factory: ScorerFactory, threads: int, context: dict[str, str]) -> None:
        from agents.pipeline import build_task_envs

        _enter(context, threads)
        self.init_error: Exception | None = None
        try:  # an error here is re-raised by run(), where Ray hands the original exception to the driver
            config = RunConfig(**cfg)
            self.task_envs = build_task_envs(config, factory(config))
        except Exception as exc:  # noqa: BLE001
            self.init_error = exc
            return
        for te in self.task_envs:
            _journal_on(te.scorer)

    def run(self, task: int, index: int, seed: int) -> tuple[int, int, str, list[tuple[str, bytes]], dict[str, float]]:
        """Episode ``index`` of task ``task``: ``(task, index, store line, new cache entries, LM spend)``."""
        from agents.rollouts import random_valid_action, run_logged_episode

        if self.init_error is not None:
            raise self.init_error
        te = self.task_envs[task]
        before = te.scorer.stats.copy()
        ep = run_logged_episode(te.env, index=index, seed=seed, choose=random_valid_action, policy="random")
        return task, index, ep.to_json(), _take([te.scorer]), (te.scorer.stats - before).as_dict()


class EvalWorker:
    """A Ray actor that holds the task data and a scorer, and runs ``(seed, selector)`` evaluation jobs."""

    def __init__(self, cfg: dict[str, Any], factory: ScorerFactory, threads: int, context: dict[str, str]) -> None:
        from rl_select.experiments.harness import TaskData, make_jobs

        _enter(context, threads)
        self.init_error: Exception | None = None
        try:  # re-raised by run(), as in EpisodeWorker
            self.cfg = RunConfig(**cfg)
            self.data = TaskData.load(self.cfg)
            self.scorer = factory(self.cfg)(self.data.spec)
            self.jobs = dict(make_jobs(self.cfg))
        except Exception as exc:  # noqa: BLE001
            self.init_error = exc
            return
        _journal_on(self.scorer)

    def run(self, seed: int, name: str) -> tuple[dict[str, Any], list[tuple[str, bytes]], dict[str, float], str]:
        """One result row, the new cache entries, the LM spend and the scorer fingerprint."""
        from rl_select.experiments.harness import run_one

        if self.init_error is not None:
            raise self.init_error
        before = self.scorer.stats.copy()
        row = run_one(name, self.jobs[name], self.scorer, self.data.splits(self.cfg, seed), k=self.cfg.k, seed=seed)
        return row, _take([self.scorer]), (self.scorer.stats - before).as_dict(), self.scorer.fingerprint


@dataclass
class RayPool:
    """``workers`` actors of one class; :meth:`imap` runs units on whichever actor is free."""

    actors: list[Any]

    @classmethod
    def start(cls, actor_cls: type, args: tuple, *, workers: int, cpus_per_worker: int = 1) -> RayPool:
        import ray

        remote = ray.remote(num_cpus=cpus_per_worker)(actor_cls)
        return cls([remote.remote(*args) for _ in range(workers)])

    def imap(self, units: Sequence[tuple]) -> Iterator[Any]:
        """Results of ``actor.run(*unit)`` as they finish (any order); one unit in flight per actor."""
        import ray

        todo = list(units)[::-1]
        busy: dict[Any, Any] = {}
        for actor in self.actors:
            if todo:
                busy[actor.run.remote(*todo.pop())] = actor
        while busy:
            done, _ = ray.wait(list(busy), num_returns=1)
            actor = busy.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:  # the worker's own error, without Ray's wrapping
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, Exception) else ModelError(f"a Ray worker failed: {exc}")) from None
            except ray.exceptions.RayActorError as exc:
                raise ModelError(f"a Ray worker died ({type(exc).__name__}); finished units are kept, rerun to "
                                 f"continue") from None
            if todo:
                busy[actor.run.remote(*todo.pop())] = actor
            yield result

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)


def merge_cache(cache: Any, entries: list[tuple[str, bytes]]) -> None:
    """Store actor-computed entries in the driver's cache (a no-op without one)."""
    import numpy as np

    if cache is not None and entries:
        cache.put_many((k, np.frombuffer(v, dtype=np.float64)) for k, v in entries)


def add_stats(total: ScorerStats, spent: dict[str, float]) -> ScorerStats:
    return ScorerStats(**{k: getattr(total, k) + spent[k] for k in total.as_dict()})


def collect_rollouts_ray(
    cfg: RunConfig, *, address: str | None = None, workers: int = 2, cpus_per_worker: int = 1,
    factory: ScorerFactory | None = None, progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Random-policy rollouts of every training task on Ray actors, into the same stores as in-process.

    Returns:
        Per-task reports like :func:`agents.pipeline.collect_rollouts` (store, episodes, written, LM spend).
    """
    from agents.pipeline import collect_report, store_path
    from agents.rollouts import Episode, RolloutStore, check_continues
    from rl_select.data import load_task
    from rl_select.experiments.harness import open_cache, resolve_spec

    tasks = []
    for task in cfg.train_tasks or [cfg.task]:  # bad input fails here, before Ray starts (as build_task_envs loads)
        spec = resolve_spec(task)
        load_task(spec, data=cfg.data if task == cfg.task else None)
        tasks.append(spec.name)
    stores = [RolloutStore(store_path(cfg, t)) for t in tasks]
    starts = [s.resume() for s in stores]
    for store, start in zip(stores, starts):
        check_continues(store, start, cfg.seeds[0], "random")
    units = [(t, i, cfg.seeds[0]) for t, start in enumerate(starts) for i in range(start, cfg.episodes)]
    spent = [ScorerStats() for _ in tasks]
    if units:
        init_ray(address, workers, cpus_per_worker)
        cache = open_cache(cfg.cache)
        args = (cfg.to_dict(), factory or default_factory(), cpus_per_worker, driver_context())
        pool = RayPool.start(EpisodeWorker, args, workers=min(workers, len(units)), cpus_per_worker=cpus_per_worker)
        pending: list[dict[int, str]] = [{} for _ in tasks]
        nxt = list(starts)
        try:
            for task, index, line, entries, stats in pool.imap(units):
                merge_cache(cache, entries)
                spent[task] = add_stats(spent[task], stats)
                pending[task][index] = line
                while nxt[task] in pending[task]:  # write in index order: the in-process file, byte for byte
                    stores[task].append(Episode.from_json(pending[task].pop(nxt[task])))
                    nxt[task] += 1
                    if progress is not None:
                        progress(f"{tasks[task]}: episode {nxt[task]}/{cfg.episodes}")
        finally:
            pool.close()
            if cache is not None:
                cache.close()
    return [collect_report(t, s, max(0, cfg.episodes - start), sp)
            for t, s, start, sp in zip(tasks, stores, starts, spent)]


def run_grid_ray(
    cfg: RunConfig, *, address: str | None = None, workers: int = 2, cpus_per_worker: int = 1,
    factory: ScorerFactory | None = None, on_row: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], ScorerStats, str]:
    """Every ``(seed, selector)`` job of ``cfg`` on Ray actors.

    Returns:
        ``(rows in the in-process order, summed LM spend, scorer fingerprint)``; ``on_row`` sees each row
        in that order too.
    """
    from rl_select.experiments.harness import make_jobs, open_cache

    units = [(seed, name) for seed in cfg.seeds for name, _ in make_jobs(cfg)]
    init_ray(address, workers, cpus_per_worker)
    cache = open_cache(cfg.cache)
    pool = RayPool.start(EvalWorker, (cfg.to_dict(), factory or default_factory(), cpus_per_worker, driver_context()),
                         workers=min(workers, len(units)), cpus_per_worker=cpus_per_worker)
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    total, fingerprint, nxt = ScorerStats(), "", 0
    ordered: list[dict[str, Any]] = []
    try:
        for row, entries, stats, fp in pool.imap(units):
            fingerprint = fp
            merge_cache(cache, entries)
            total = add_stats(total, stats)
            rows[(row["seed"], row["selector"])] = row
            while nxt < len(units) and units[nxt] in rows:
                ordered.append(rows[units[nxt]])
                if on_row is not None:
                    on_row(ordered[-1])
                nxt += 1
    finally:
        pool.close()
        if cache is not None:
            cache.close()
    return ordered, total, fingerprint
