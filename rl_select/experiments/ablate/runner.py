"""An ablation run: a plan's pending rows, each trained (once per cell and seed) and evaluated in process, appended
to ``results.csv``; resumable, failed rows kept or run again."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_select.errors import RLSelectError
from rl_select.experiments.ablate.cost import select_labels, select_rows, training_labels, training_rows
from rl_select.experiments.ablate.grid import GRID_KEYS, Cell, Plan, _tags, selector_kind, selector_m, trains
from rl_select.experiments.ablate.report import plot_all, summarise, summary_markdown
from rl_select.experiments.ablate.rows import _append, done_keys, read_rows
from rl_select.experiments.config import FLAT_KEYS, RunConfig
from rl_select.experiments.rundir import attach_log, recording, write_status

log = logging.getLogger("rl_select")


@dataclass
class Trained:
    """A cell x seed's training outcome: the policy file (or the reason there is none) and its spend."""

    policy: Path | None
    error: str | None
    queries: int
    cache_hits: int
    seconds: float


class Runner:
    """Runs a plan's pending units into a run folder, one LM per ``[lm]`` setting, in process.

    Args:
        plan: The parsed ablation.
        run_dir: The run folder (created; an existing one is continued). It gets ``status.json`` and
            ``log.txt`` (:mod:`~rl_select.experiments.rundir`): a run that stops early records why.
        factory: ``factory(cfg) -> (spec -> scorer)``; default ``harness.scorer_factory`` (looked up at
            call time, so tests can replace it).
        retry_failed: Run the ``failed`` rows of ``results.csv`` again (and a training that failed), each new
            row replacing its failed one; by default they are kept and skipped.
    """

    def __init__(self, plan: Plan, run_dir: Path, *, factory: Callable | None = None,
                 retry_failed: bool = False) -> None:
        self.plan, self.dir = plan, Path(run_dir)
        self.factory = factory
        self.retry_failed = retry_failed
        self.csv = self.dir / "results.csv"
        self._factories: dict[str, Any] = {}
        self._scorers: dict[tuple[str, str], Any] = {}
        self._data: dict[tuple, Any] = {}
        self._trained: dict[tuple[str, int], Trained] = {}

    def done(self) -> set[tuple[str, int, str]]:
        return done_keys(read_rows(self.csv), retry_failed=self.retry_failed)

    def pending(self) -> list[tuple[Cell, int, str]]:
        done = self.done()
        return [u for u in self.plan.units if (u[0].id, u[1], u[2]) not in done]

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.plan.source:
            (self.dir / "ablate.toml").write_text(self.plan.source)
        self.plan.base.dump(self.dir / "config.toml")
        attach_log(self.dir)
        write_status(self.dir, "running", command="ablate")

    # resources, built once ------------------------------------------------------------------------

    def _lm_key(self, cfg: RunConfig) -> str:
        return json.dumps({"lm": cfg.lm.to_dict(), "cache": cfg.cache}, sort_keys=True, default=str)

    def scorer(self, cfg: RunConfig, spec: Any) -> Any:
        key = self._lm_key(cfg)
        if key not in self._factories:
            if self.factory is not None:
                self._factories[key] = self.factory(cfg)
            else:
                from rl_select.experiments import harness

                self._factories[key] = harness.scorer_factory(cfg)
        if (key, spec.name) not in self._scorers:
            self._scorers[(key, spec.name)] = self._factories[key](spec)
        return self._scorers[(key, spec.name)]

    def data(self, cfg: RunConfig) -> Any:
        from rl_select.experiments.harness import TaskData

        key = (cfg.task, cfg.data)
        if key not in self._data:
            self._data[key] = TaskData.load(cfg)
        return self._data[key]

    # training -------------------------------------------------------------------------------------

    def train(self, cell: Cell, seed: int) -> Trained:
        """The cell's policy for ``seed``: reused from ``policies/`` when there, else collected and trained."""
        from agents.registry import agent_class, load_agents
        from rl_select.experiments.collection import EpisodeWorker, collect_rollouts
        from rl_select.experiments.executors import LocalExecutor
        from rl_select.experiments.task_envs import build_task_envs
        from rl_select.experiments.training import train_agent

        if (cell.id, seed) in self._trained:
            return self._trained[(cell.id, seed)]
        stem = f"{cell.id}-s{seed}"
        policy_path = self.dir / "policies" / f"{stem}.safetensors"
        record = self.dir / "training" / f"{stem}.json"
        if record.is_file():
            doc = json.loads(record.read_text())
            if (doc.get("policy") is None and not (self.retry_failed and doc.get("error"))) or policy_path.is_file():
                if doc.get("policy") and cell.cfg.agent.probe_critic:
                    doc = self._add_critic(cell, seed, policy_path, record, doc)
                out = Trained(policy_path if doc.get("policy") else None, doc.get("error"), doc["queries"],
                              doc["cache_hits"], doc["seconds"])
                self._trained[(cell.id, seed)] = out
                return out
        cfg = cell.cfg.updated(seeds=[seed])
        t0 = time.perf_counter()
        queries = hits = 0
        error, curve, label = None, [], ""
        try:
            agent = agent_class(cfg.agent.name)
            envs = build_task_envs(cfg, lambda spec: self.scorer(cfg, spec), fixed_pool=agent.tags.fixed_pool)
            before = [te.scorer.stats.copy() for te in envs]
            if agent.tags.learns_from == "rollouts":
                collect_rollouts(cfg, LocalExecutor(EpisodeWorker(envs)))
            res = train_agent(cfg, envs)
            spent = [te.scorer.stats - b for te, b in zip(envs, before)]
            queries, hits = sum(s.queries for s in spent), sum(s.cache_hits for s in spent)
            curve, label = [list(map(float, pt)) for pt in res.curve], res.curve_label
            if res.policy is None:
                exporters = " or ".join(n for n, c in load_agents().items() if c.tags.exports_policy)
                error = (f"agent {cfg.agent.name!r} exports no policy (its table is tied to one fixed pool); "
                         f"expected {exporters} for policy selectors")
            else:
                res.policy.save(policy_path)
        except RLSelectError as exc:
            error = f"training failed: {exc}"
        seconds = time.perf_counter() - t0
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"cell_id": cell.id, "cell": cell.label, "seed": seed,
                                      "policy": None if error else str(policy_path), "error": error,
                                      "queries": queries, "cache_hits": hits, "seconds": seconds,
                                      "curve": curve, "curve_label": label}))
        out = Trained(None if error else policy_path, error, queries, hits, seconds)
        self._trained[(cell.id, seed)] = out
        return out

    def _add_critic(self, cell: Cell, seed: int, policy_path: Path, record: Path, doc: dict[str, Any]
                    ) -> dict[str, Any]:
        """A stored policy trained before ``agent.probe_critic`` was set: fit its critic on the same stores and
        save it into the same file (the Q-network is unchanged, so rows already computed with it still hold);
        the LM rows the fit spends join the training record. A policy that has a critic is left alone."""
        from rl_select.experiments.task_envs import build_task_envs
        from rl_select.experiments.training import fit_probe_critic
        from rl_select.mdp.policy import SelectorPolicy

        policy = SelectorPolicy.load(policy_path)
        if policy.critic is not None:
            return doc
        cfg = cell.cfg.updated(seeds=[seed])
        t0 = time.perf_counter()
        envs = build_task_envs(cfg, lambda spec: self.scorer(cfg, spec))
        before = [te.scorer.stats.copy() for te in envs]
        policy.critic = fit_probe_critic(cfg, envs)
        policy.save(policy_path)
        spent = [te.scorer.stats - b for te, b in zip(envs, before)]
        doc = {**doc, "queries": doc["queries"] + sum(x.queries for x in spent),
               "cache_hits": doc["cache_hits"] + sum(x.cache_hits for x in spent),
               "seconds": doc["seconds"] + time.perf_counter() - t0, "critic_added": True}
        record.write_text(json.dumps(doc))
        return doc

    # one row --------------------------------------------------------------------------------------

    def run_unit(self, cell: Cell, seed: int, name: str) -> dict[str, Any]:
        """One row: train if needed, then the harness's :class:`EvalWorker` on this seed; failures recorded."""
        from rl_select.experiments.harness import EvalWorker

        kind, count = selector_kind(name), _tags(name).count_arg
        cfg = cell.cfg
        row: dict[str, Any] = {"cell_id": cell.id, "cell": cell.label, "seed": seed, "selector": name,
                               "est_select_queries": select_rows(cfg, name),
                               **{k: self._setting(cfg, k) for k in GRID_KEYS}}
        t0 = time.perf_counter()
        labelled = select_labels(cfg, name)
        try:
            args = {n: dict(a) for n, a in cfg.selectors.args.items()}
            if trains(name):
                row["est_train_queries"] = training_rows(cfg)
                trained = self.train(cell, seed)
                row.update(train_queries=trained.queries, train_cache_hits=trained.cache_hits,
                           train_seconds=round(trained.seconds, 3))
                if trained.policy is None:
                    raise _Failed(trained.error or "no policy")
                args[name] = {**args.get(kind, {}), **args.get(name, {}), "path": str(trained.policy)}
                labelled += training_labels(cfg, len(self.data(cfg).train))
            if count is not None:  # NAME:M sets the declared argument to M
                args[name] = {**args.get(kind, {}), **args.get(name, {}), count: selector_m(name)}
            row_cfg = cfg.updated(seeds=[seed])
            row_cfg.selectors.names, row_cfg.selectors.args = [name], args
            data = self.data(row_cfg)
            worker = EvalWorker(row_cfg, data, self.scorer(row_cfg, data.spec))
            res, _ = worker.run(seed, name)
            row.update(status="ok", test_acc=res["test_acc"], val_acc=res["val_acc"], test_rows=res["n_test"],
                       select_queries=res["select_queries"], eval_queries=res["eval_queries"],
                       select_cache_hits=res["select_cache_hits"], eval_cache_hits=res["eval_cache_hits"],
                       labelled=labelled, demos=res["demos"])
        except (RLSelectError, _Failed) as exc:
            row.update(status="failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row

    @staticmethod
    def _setting(cfg: RunConfig, key: str) -> Any:
        table, name = FLAT_KEYS.get(key, (None, key))
        return getattr(getattr(cfg, table), name) if table else getattr(cfg, name)

    def run(self, *, on_row: Callable[[dict[str, Any]], None] | None = None,
            on_start: Callable[[Cell, int, str], None] | None = None) -> list[dict[str, Any]]:
        """Every pending unit, in plan order, each row appended to ``results.csv`` as it finishes.

        Args:
            on_row: Called with each row after it is written.
            on_start: Called with ``(cell, seed, selector)`` before each unit (e.g. a progress line).
        """
        self.prepare()
        new = []
        with recording(self.dir):
            pending = self.pending()
            log.info("ablate: %d of %d rows to run", len(pending), len(self.plan.units))
            for cell, seed, name in pending:
                if on_start is not None:
                    on_start(cell, seed, name)
                row = self.run_unit(cell, seed, name)
                _append(self.csv, row)
                new.append(row)
                log.log(logging.INFO if row["status"] == "ok" else logging.WARNING, "%s | %s seed %d: %s",
                        cell.label, name, seed, row.get("error") or f"test_acc={row['test_acc']:.4f}")
                if on_row is not None:
                    on_row(row)
        return new

    def finish(self) -> dict[str, Path]:
        """``summary.md`` and the plots, from every row in ``results.csv``; the run is ``done``."""
        with recording(self.dir):
            rows = read_rows(self.csv)
            summary = summarise(rows)
            (self.dir / "summary.md").write_text(summary_markdown(summary, self.plan))
            paths = {"summary": self.dir / "summary.md", **plot_all(rows, summary, self.dir)}
        failed = sum(r["status"] == "failed" for r in rows)
        write_status(self.dir, "done", rows=len(rows), failed_rows=failed, pending_rows=len(self.pending()))
        return paths


class _Failed(Exception):
    """A row that cannot run (its cell's training gave no policy)."""
