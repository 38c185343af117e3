"""Executors: where the units of a collection or an evaluation run (``--executor local | ray``).

Work is cut into units that are pure functions of the config: a rollout episode ``(task, index, seed)``
(every random draw comes from ``SeedSequence([seed, index])``, see :mod:`agents.rollouts`) and an
evaluation job ``(seed, selector)``. A *worker* (:class:`rl_select.experiments.collection.EpisodeWorker`,
:class:`rl_select.experiments.harness.EvalWorker`) holds what the units need (envs, scorer, data) and runs
one unit per ``worker.run(*unit)``. An :class:`Executor` maps units over workers of one class:

* :class:`LocalExecutor`: one worker in this process, on the caller's scorer and cache;
* :class:`RayExecutor`: ``workers`` Ray actors, each building its own worker (so each holds a loaded LM)
  from the config, fed by ``ray.util.ActorPool``. Actors journal their cache writes and hand them back
  with each unit; the driver merges them into its score cache, so a later run on any executor finds
  them, even when a worker's disk is another machine's.

Either way the executor measures each unit's LM spend on the worker's scorers, and :meth:`Executor.map`
gives the results in unit order, so the caller (:func:`~rl_select.experiments.collection.collect_rollouts`,
:func:`~rl_select.experiments.harness.run_grid`) writes the same store and rows on both.

Ray ``address``: ``None`` starts a local Ray with ``workers`` CPUs; ``"auto"`` or ``ray://host:10001``
joins an existing cluster (``$RL_SELECT_RAY_ADDRESS``, then ``$RAY_ADDRESS``, are read when no address
is given). Each actor asks Ray for ``cpus_per_worker`` CPUs and sets torch to that many threads.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from rl_select.errors import ConfigError, ModelError
from rl_select.experiments.config import RunConfig
from rl_select.lm.base import CachedScorer, ScorerStats
from rl_select.tasks import TaskSpec

EXECUTORS: tuple[str, ...] = ("local", "ray")
"""Executor kinds (``[executor] kind``): :class:`LocalExecutor` in process, :class:`RayExecutor` on Ray actors."""

#: ``factory(cfg) -> (spec -> scorer)``: how an actor gets its LM (module-level, so Ray pickles it by name).
ScorerFactory = Callable[[RunConfig], Callable[[TaskSpec], CachedScorer]]

ADDRESS_ENVS = ("RL_SELECT_RAY_ADDRESS", "RAY_ADDRESS")


class Worker(Protocol):
    """What an executor runs units on: ``run(*unit)``, and the scorers whose spend and cache it tracks."""

    scorers: Sequence[CachedScorer]
    run: Callable[..., Any]


class WorkerClass(Protocol):
    """A worker class: a Ray actor builds its worker from the config with ``from_config``."""

    def from_config(self, cfg: RunConfig, factory: ScorerFactory) -> Worker: ...


class Done(NamedTuple):
    """A finished unit: its position in the mapped units, the worker's result and its LM spend."""

    index: int
    result: Any
    spend: ScorerStats


def add_stats(a: ScorerStats, b: ScorerStats) -> ScorerStats:
    """The sum of two spends."""
    return ScorerStats(**{k: v + getattr(b, k) for k, v in asdict(a).items()})


def run_unit(worker: Worker, index: int, unit: tuple) -> Done:
    """``worker.run(*unit)``, with the LM spend it caused on the worker's scorers."""
    before = [s.stats.copy() for s in worker.scorers]
    result = worker.run(*unit)
    spend = ScorerStats()
    for s, b in zip(worker.scorers, before):
        spend = add_stats(spend, s.stats - b)
    return Done(index, result, spend)


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


def _take(scorers: Sequence[CachedScorer]) -> list[tuple[str, bytes]]:
    """Cache entries stored since the last call, as bytes (cheap to ship)."""
    seen: set[int] = set()
    out: list[tuple[str, bytes]] = []
    for s in scorers:
        if s.cache is not None and id(s.cache) not in seen:
            seen.add(id(s.cache))
            out += [(k, v.tobytes()) for k, v in s.cache.take_journal()]
    return out


def merge_cache(cache: Any, entries: list[tuple[str, bytes]]) -> None:
    """Store actor-computed entries in the driver's cache (a no-op without one)."""
    import numpy as np

    if cache is not None and entries:
        cache.put_many((k, np.frombuffer(v, dtype=np.float64)) for k, v in entries)


class Executor(ABC):
    """Maps units over workers of one class; a context manager that releases its workers on exit."""

    @abstractmethod
    def map_unordered(self, units: Sequence[tuple]) -> Iterator[Done]:
        """Every unit run once, yielded as it finishes (any order)."""

    def map(self, units: Sequence[tuple]) -> Iterator[Done]:
        """Every unit run once, yielded in the order of ``units`` (early finishers wait in memory)."""
        waiting: dict[int, Done] = {}
        nxt = 0
        for done in self.map_unordered(units):
            waiting[done.index] = done
            while nxt in waiting:
                yield waiting.pop(nxt)
                nxt += 1

    @abstractmethod
    def close(self) -> None:
        """Release the workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """One worker in this process, on the caller's scorer and cache (so there is nothing to merge).

    Args:
        worker: The worker, e.g. ``EpisodeWorker(task_envs)``.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def map_unordered(self, units: Sequence[tuple]) -> Iterator[Done]:
        """The units one after another, in order."""
        for index, unit in enumerate(units):
            yield run_unit(self.worker, index, unit)

    def close(self) -> None:
        """Nothing to release: the worker and its scorer are the caller's."""


class RayExecutor(Executor):
    """Ray actors that each build a worker of ``worker_cls`` from the config, fed by ``ray.util.ActorPool``.

    Nothing starts until :meth:`map_unordered` gets units: then Ray is joined or started
    (:func:`init_ray`), the driver's score cache (``cfg.cache``) opened, and ``min(workers, units)``
    actors started; :meth:`close` ends them.

    Args:
        worker_cls: The worker class (its ``from_config(cfg, factory)`` runs in each actor).
        cfg: The run config (shipped to the actors as a dict).
        workers: Actors (default ``cfg.executor.workers``).
        address: Ray cluster (default ``cfg.executor.address``, then the environment; see :func:`resolve_address`).
        cpus_per_worker: CPUs Ray reserves per actor, and its torch threads.
        factory: How an actor gets its LM (default :func:`rl_select.experiments.harness.scorer_factory`).
    """

    def __init__(self, worker_cls: WorkerClass, cfg: RunConfig, *, workers: int | None = None,
                 address: str | None = None, cpus_per_worker: int = 1, factory: ScorerFactory | None = None) -> None:
        self.worker_cls, self.cfg, self.factory = worker_cls, cfg, factory
        self.workers = cfg.executor.workers if workers is None else workers
        self.address = address or cfg.executor.address or None
        self.cpus_per_worker = cpus_per_worker
        self._actors: list[Any] = []
        self._cache: Any = None

    def _start(self, n_units: int) -> None:
        init_ray(self.address, self.workers, self.cpus_per_worker)
        import ray

        from rl_select.lm.cache import open_cache

        self._cache = open_cache(self.cfg.cache)
        actor = ray.remote(num_cpus=self.cpus_per_worker)(_Actor)
        args = (self.worker_cls, self.cfg.to_dict(), self.factory or default_factory(), self.cpus_per_worker,
                driver_context())
        self._actors = [actor.remote(*args) for _ in range(min(self.workers, n_units))]

    def map_unordered(self, units: Sequence[tuple]) -> Iterator[Done]:
        """The units on whichever actor is free, one in flight per actor; actor cache writes are merged.

        Raises:
            ConfigError: Ray missing or unreachable (see :func:`init_ray`).
            Exception: A worker's own error (its start-up error included), as the worker raised it.
            ModelError: An actor died; the units already yielded are kept.
        """
        if not units:
            return
        if not self._actors:
            self._start(len(units))
        import ray
        from ray.util import ActorPool

        pool = ActorPool(self._actors)
        try:
            for done, entries in pool.map_unordered(lambda a, iu: a.run.remote(*iu), list(enumerate(units))):
                merge_cache(self._cache, entries)
                yield done
        except ray.exceptions.RayTaskError as exc:  # the worker's own error, without Ray's wrapping
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else ModelError(f"a Ray worker failed: {exc}")) from None
        except ray.exceptions.RayActorError as exc:
            raise ModelError(f"a Ray worker died ({type(exc).__name__}); finished units are kept, rerun to "
                             f"continue") from None

    def close(self) -> None:
        """End the actors and close the driver's cache."""
        if self._actors:
            import ray

            for a in self._actors:
                ray.kill(a)
        self._actors = []
        if self._cache is not None:
            self._cache.close()
        self._cache = None


class _Actor:
    """The Ray actor around one worker: builds it from the config, journals its cache writes, runs units."""

    def __init__(self, worker_cls: WorkerClass, cfg: dict[str, Any], factory: ScorerFactory, threads: int,
                 context: dict[str, str]) -> None:
        _enter(context, threads)
        self.error: Exception | None = None
        try:  # an error here is re-raised by run(), where Ray hands the original exception to the driver
            self.worker = worker_cls.from_config(RunConfig.from_dict(cfg), factory)
        except Exception as exc:  # noqa: BLE001
            self.error = exc
            return
        for s in self.worker.scorers:
            if s.cache is not None and s.cache.journal is None:
                s.cache.journal = []

    def run(self, index: int, unit: tuple) -> tuple[Done, list[tuple[str, bytes]]]:
        """Unit ``index``, and the cache entries stored since the last unit."""
        if self.error is not None:
            raise self.error
        return run_unit(self.worker, index, unit), _take(self.worker.scorers)
