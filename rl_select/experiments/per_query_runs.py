"""Per-query policies across tasks: collect logged episodes per task, train leave-one-task-out, evaluate.

Every stage is resumable and writes into one run folder::

    RUN/stores/<task>.jsonl            logged per-query episodes (agents.per_query.PerQueryStore)
    RUN/policies/<name>.safetensors    per-query policies (loo-<task>: trained on every other task)
    RUN/pool_stores/<task>-s<seed>.jsonl  episodes whose queries are the task's own pool (``adapt``)
    RUN/results.csv                    one row per (task, seed, selector); rows already there are skipped

Collection uses each task's seed-0 pool (``n_pool`` rows) and queries from the rest of its train file
(never its validation or test rows). Evaluation uses seeded splits (pool / val / test) like
``configs/reference.toml``: validation rows choose settings (``--split val``), test rows report.

This module holds the stages (:class:`PerQueryRun`, :func:`run_stage`); the settings are
:mod:`~rl_select.experiments.per_query_config`'s and ``results.csv`` is written and summarised by
:mod:`~rl_select.experiments.per_query_results` (their names are importable from here).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from agents.per_query import (
    PerQueryStore,
    collect_per_query,
    to_episodes,
    train_per_query,
    train_stacker,
    train_verifier,
    verifier_data,
)
from rl_select.data import Splits, load_task, make_splits
from rl_select.embeddings import MiniLMEmbedder
from rl_select.errors import ConfigError, DataError, path_kind
from rl_select.experiments.per_query_config import PerQueryRunConfig, check_rewards, check_task_name
from rl_select.experiments.per_query_results import append_rows, done_rows, policy_label, summary_table
from rl_select.lm.base import CachedScorer
from rl_select.lm.cache import open_cache
from rl_select.mdp.neighbour_orders import ORDERS
from rl_select.mdp.per_query import FeatureView
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.per_query_stacker import AnswerStacker, label_features, query_signals
from rl_select.mdp.per_query_table import PoolTable, QueryContexts, vote_shares
from rl_select.mdp.per_query_verifier import Verifier
from rl_select.metrics import label_ids
from rl_select.prompts import content_free_queries
from rl_select.selectors import SelectionContext, make_selector
from rl_select.tasks import TaskSpec, resolve_task
from rl_select.types import Example

__all__ = [
    "STAGES", "PerQueryRun", "PerQueryRunConfig", "append_rows", "baselines", "check_rewards", "check_task_name",
    "done_rows", "knn_vote", "main", "policy_fn", "policy_label", "registered", "run_stage", "summary_table",
    "task_of", "variants",
]


def task_of(name: str) -> tuple[TaskSpec, list[Example], list[Example]]:
    """A task by name: built-in, a spec file, or a shared task folder with a ``task.toml`` (e.g. ``sst5``)."""
    spec = resolve_task(name)
    train, test = load_task(spec)
    return spec, train, test


class PerQueryRun:
    """One run folder: the scorers (one model load), the embedder, and the three stages."""

    def __init__(self, cfg: PerQueryRunConfig, run_dir: str | Path, *, say: Callable[[str], None] = print) -> None:
        self.cfg, self.dir, self.say = cfg, Path(run_dir), say
        self.dir.mkdir(parents=True, exist_ok=True)
        self._factory: Callable[[TaskSpec], CachedScorer] | None = None
        self._scorers: dict[str, CachedScorer] = {}
        self._tasks: dict[str, tuple[TaskSpec, list[Example], list[Example]]] = {}
        self.embedder = MiniLMEmbedder()
        self._contexts: dict[str, tuple[PoolTable, QueryContexts]] = {}
        self._episodes: dict[tuple[str, str, str, int | None], list] = {}

    def task(self, name: str) -> tuple[TaskSpec, list[Example], list[Example]]:
        if name not in self._tasks:
            self._tasks[name] = task_of(name)
        return self._tasks[name]

    def scorer(self, name: str) -> CachedScorer:
        if name not in self._scorers:
            if self._factory is None:
                self._factory = self.cfg.scorer_spec().factory(open_cache(self.cfg.cache))
            self._scorers[name] = self._factory(self.task(name)[0])
        return self._scorers[name]

    def splits(self, name: str, seed: int, *, n_test: int | None = None) -> Splits:
        spec, train, test = self.task(name)
        c = self.cfg
        n_val = min(c.n_val, len(train) - c.n_pool - 1)
        return make_splits(train, test, n_pool=c.n_pool, n_val=n_val, seed=seed,
                           n_test=min(n_test or c.n_test, len(test)))

    # --- collection -------------------------------------------------------------------------------

    def training_contexts(self, name: str, *, lm: bool = True) -> tuple[PoolTable, QueryContexts]:
        """The seed-``collect_seed`` pool and up to ``n_queries`` queries from the rest of the train file."""
        spec = self.task(name)[0]
        sp = self.splits(name, self.cfg.collect_seed)
        scorer = self.scorer(name) if lm else None
        table = PoolTable.build(sp.pool, labels=spec.labels, embedder=self.embedder, scorer=scorer)
        ctx = QueryContexts.build(table, sp.rest[: self.cfg.n_queries], m=self.cfg.m, embedder=self.embedder,
                                  scorer=scorer)
        return table, ctx

    def store(self, name: str) -> PerQueryStore:
        return PerQueryStore(self.dir / "stores" / f"{name}.jsonl")

    def collect(self, tasks: Sequence[str] | None = None, *, progress: bool = True) -> None:
        """Fill each task's store up to ``episodes`` (resumes)."""
        c = self.cfg
        for name in tasks or c.train_tasks:
            store = self.store(name)
            store.check_meta({"task": name, "n_pool": c.n_pool, "n_val": c.n_val, "m": c.m, "k": c.k,
                              "n_queries": c.n_queries, "seed": c.collect_seed,
                              "scorer": c.scorer_spec().to_dict()})
            if len(store) >= c.episodes:
                continue
            table, ctx = self.training_contexts(name)
            t0, scorer = time.perf_counter(), self.scorer(name)
            before = scorer.stats.copy()
            added = collect_per_query(scorer, table, ctx, store, n_episodes=c.episodes, k=c.k, seed=c.collect_seed,
                                      progress=progress)
            spent = scorer.stats - before
            self.say(f"{name}: {added} episodes in {time.perf_counter() - t0:.0f} s, "
                     f"{int(spent.queries)} LM rows ({int(spent.cache_misses)} computed)")

    # --- training ---------------------------------------------------------------------------------

    def episodes(self, name: str, view: FeatureView, reward: str, *, limit: int | None = None) -> list:
        """Task ``name``'s logged episodes with ``view``'s features and ``reward`` (memoised per process)."""
        key = (name, view.name, reward, limit)
        if key not in self._episodes:
            logged, table, ctx = self.logged(name, limit=limit)
            self._episodes[key] = to_episodes(logged, table, ctx, view, k=self.cfg.k, reward=reward,
                                              labels=self.task(name)[0].labels)
        return self._episodes[key]

    def logged(self, name: str, *, limit: int | None = None) -> tuple[list, PoolTable, QueryContexts]:
        """Task ``name``'s logged episodes (the first ``limit``) and the training contexts they index.

        Raises:
            DataError: An empty store (before any LM work).
        """
        store = self.store(name)
        logged = store.load()[:limit]
        if not logged:
            raise DataError(f"{str(store.path)!r} holds no episodes; expected task {name!r}'s logged episodes "
                            f"(rl-select per-query collect)")
        return (logged, *self.memo_contexts(name))

    def memo_contexts(self, name: str) -> tuple[PoolTable, QueryContexts]:
        """:meth:`training_contexts` of task ``name``, built once per run object."""
        if name not in self._contexts:
            self._contexts[name] = self.training_contexts(name)
        return self._contexts[name]

    def verifier(self, tasks: Sequence[str], view: FeatureView, *, seed: int = 0, limit: int | None = None
                 ) -> tuple[Verifier, dict[str, Any]]:
        """A verifier trained on the logged episodes of ``tasks`` (their final prompts' answers; no LM row)."""
        xs, ys = [], []
        for name in tasks:
            logged, table, ctx = self.logged(name, limit=limit)
            x, y = verifier_data(logged, table, ctx, view, k=self.cfg.k, labels=self.task(name)[0].labels)
            xs.append(x)
            ys.append(y)
        t0 = time.perf_counter()
        ver, summary = train_verifier(np.concatenate(xs), np.concatenate(ys), seed=seed)
        return ver, {**summary, "tasks": list(tasks), "seconds": round(time.perf_counter() - t0, 1)}

    def rule_answers(self, name: str, *, n: int | None = None, folder: str | Path | None = None) -> Path:
        """The four hand-written orders' prompts (:data:`~rl_select.mdp.neighbour_orders.ORDERS`) for the first
        ``n`` (default ``stacker_queries``) training queries of task ``name``, answered by the LM (cached rows) and
        logged to ``folder/rules-<name>.jsonl`` (default ``RUN/rule_stores``): one JSON line per prompt (query uid,
        order, rule name, label log-probs, and ``lm_rows`` on the first line). A file already there is kept."""
        path = Path(folder or self.dir / "rule_stores") / f"rules-{name}.jsonl"
        if path.is_file():
            return path
        t0 = time.perf_counter()
        table, ctx = self.memo_contexts(name)
        scorer = self.scorer(name)
        before = scorer.stats.copy()
        n_q = min(self.cfg.stacker_queries if n is None else n, len(ctx.queries))
        rows = [i for i in range(n_q) for _ in ORDERS]
        names = [rule for _ in range(n_q) for rule in ORDERS]
        orders = [ORDERS[rule](table, ctx, i, self.cfg.k) for i, rule in zip(rows, names)]
        lp = scorer.logprobs_many(demo_lists=[ctx.demos(table, i, o) for i, o in zip(rows, orders)],
                                  queries=[ctx.queries[i] for i in rows])
        spent = scorer.stats - before
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        with tmp.open("w", encoding="utf-8") as f:
            for j, (i, o, rule, row) in enumerate(zip(rows, orders, names, lp)):
                extra = {"lm_rows": int(spent.queries)} if j == 0 else {}
                f.write(json.dumps({"query": ctx.queries[i].uid, "order": list(map(int, o)), "policy": rule,
                                    "logprobs": [float(x) for x in row], **extra}) + "\n")
        tmp.replace(path)
        self.say(f"{name}: {len(rows)} rule prompts, {int(spent.queries)} LM rows ({int(spent.cache_misses)} "
                 f"computed) in {time.perf_counter() - t0:.0f} s")
        return path

    def stacker_data(self, name: str, *, n: int | None = None, folder: str | Path | None = None
                     ) -> tuple[np.ndarray, np.ndarray, int]:
        """``(features (Q, L, F), gold (Q,), LM rows spent)`` of task ``name``'s rule-answered training queries
        (:meth:`rule_answers`)."""
        path = self.rule_answers(name, n=n, folder=folder)
        table, ctx = self.memo_contexts(name)
        index = {q.uid: j for j, q in enumerate(ctx.queries)}
        lp: dict[tuple[int, str], list[float]] = {}
        lm_rows = 0
        with path.open(encoding="utf-8") as f:
            for line in f:
                e = json.loads(line)
                lp[(index[e["query"]], e["policy"])] = e["logprobs"]
                lm_rows += int(e.get("lm_rows", 0))
        qs = sorted({i for i, _ in lp})
        logprobs = np.array([[lp[(i, rule)] for i in qs] for rule in ORDERS])
        vote, zs = query_signals(table, ctx, qs)
        gold = label_ids(self.task(name)[0].labels, ctx.queries)[qs]
        return label_features(logprobs, vote, zs), gold, lm_rows

    def stacker(self, tasks: Sequence[str], *, n: int | None = None, folder: str | Path | None = None
                ) -> tuple[AnswerStacker, dict[str, Any]]:
        """The verify mode's answer stacker, fitted on the rule-answered training queries of ``tasks``."""
        data = {name: self.stacker_data(name, n=n, folder=folder) for name in tasks}
        stacker, summary = train_stacker([d[0] for d in data.values()], [d[1] for d in data.values()])
        return stacker, {**summary, "tasks": list(tasks), "lm_rows_per_task": {t: d[2] for t, d in data.items()}}

    def train(self, policy_name: str, tasks: Sequence[str], *, feature_set: str | None = None,
              reward: str | None = None, seed: int = 0, limit: int | None = None, rebuild: str = "") -> Path:
        """Train (or reuse) ``RUN/policies/<policy_name>.safetensors`` on the stores of ``tasks``, with its verifier
        and (``stacker_queries`` > 0) its answer stacker (a file written before either existed gets it added; its
        Q-network stays as it is)."""
        c = self.cfg
        fs, rw = feature_set or c.feature_set, reward or c.reward
        path = self.dir / "policies" / f"{policy_name}.safetensors"
        view = FeatureView.of(fs)
        if path.is_file():
            old = PerQueryPolicy.load(path)
            if old.verifier is None:
                old = old.with_verifier(*self.verifier(tasks, view, seed=seed, limit=limit))
                old.save(path)
                self.say(f"added a verifier to {policy_name}")
            if old.stacker is None and c.stacker_queries > 0:
                old.with_stacker(*self.stacker(tasks)).save(path)
                self.say(f"added an answer stacker to {policy_name}")
            return path
        eps: list = []
        rows: dict[str, int] = {}
        for name in tasks:
            mine = self.episodes(name, view, rw, limit=limit)
            eps += mine
            rows[name] = len(mine)
        t0 = time.perf_counter()
        qnet, summary = train_per_query(eps, seed=seed, steps=c.train_steps, hidden=tuple(c.hidden),
                                        cql_alpha=c.cql_alpha)
        summary.pop("history", None)
        cf = c.scorer_spec().calibrate
        # each episode: its query's row, plus its prompt's content-free rows when calibrated
        lm_rows = {name: n * (1 + (len(content_free_queries(self.task(name)[0])) if cf else 0))
                   for name, n in rows.items()}
        training = {"tasks": list(tasks), "episodes_per_task": rows, "prompt_lm_rows_per_task": lm_rows,
                    "seconds": round(time.perf_counter() - t0, 1), "rebuild": rebuild,
                    "run_config": {k: v for k, v in asdict(c).items() if k != "cache"}, **summary}
        ver, ver_summary = self.verifier(tasks, view, seed=seed, limit=limit)
        stacker, stacker_summary = self.stacker(tasks) if c.stacker_queries > 0 else (None, None)
        PerQueryPolicy(qnet, feature_set=fs, m=c.m, k=c.k, reward=rw, scorer_spec=self.scorer(tasks[0]).scorer_spec,
                       training=training, verifier=ver, verifier_training=ver_summary, stacker=stacker,
                       stacker_training=stacker_summary).save(path)
        self.say(f"trained {policy_name} on {sum(rows.values())} episodes of {list(tasks)} "
                 f"in {training['seconds']} s")
        return path

    # --- adaptation to a task's own pool ---------------------------------------------------------

    def pool_contexts(self, name: str, seed: int) -> tuple[PoolTable, QueryContexts]:
        """Seed ``seed``'s pool as both the candidates and the queries (a row never is its own neighbour)."""
        spec = self.task(name)[0]
        pool, scorer = self.splits(name, seed).pool, self.scorer(name)
        table = PoolTable.build(pool, labels=spec.labels, embedder=self.embedder, scorer=scorer)
        return table, QueryContexts.build(table, pool, m=self.cfg.m, embedder=self.embedder, scorer=scorer)

    def adapted(self, target: str, seed: int, feature_set: str, reward: str) -> Path:
        """A policy trained on every other task's episodes plus ``adapt_episodes`` episodes on ``target``'s own
        pool (seed ``seed``; pool labels only, no validation row), those repeated ``adapt_repeat`` times."""
        c = self.cfg
        path = self.dir / "policies" / f"adapt-{target}-s{seed}-{feature_set}-{reward}.safetensors"
        if path.is_file():
            return path
        store = PerQueryStore(self.dir / "pool_stores" / f"{target}-s{seed}.jsonl")
        table, ctx = self.pool_contexts(target, seed)
        if len(store) < c.adapt_episodes:
            collect_per_query(self.scorer(target), table, ctx, store, n_episodes=c.adapt_episodes, k=c.k,
                              seed=seed, progress=False)
        view = FeatureView.of(feature_set)
        own = to_episodes(store.load()[: c.adapt_episodes], table, ctx, view, k=c.k, reward=reward,
                          labels=self.task(target)[0].labels)
        eps = [e for t in c.train_tasks if t != target for e in self.episodes(t, view, reward)]
        qnet, summary = train_per_query(eps + own * c.adapt_repeat, seed=0, steps=c.train_steps,
                                        hidden=tuple(c.hidden), cql_alpha=c.cql_alpha)
        summary.pop("history", None)
        PerQueryPolicy(qnet, feature_set=feature_set, m=c.m, k=c.k, reward=reward,
                       scorer_spec=self.scorer(target).scorer_spec,
                       training={"tasks": [t for t in c.train_tasks if t != target], "adapted_to": target,
                                 "pool_episodes": len(own), "repeat": c.adapt_repeat, **summary}).save(path)
        self.say(f"adapted {path.name}: {len(eps)} episodes of other tasks + {len(own)} on its pool")
        return path

    # --- evaluation -------------------------------------------------------------------------------

    def evaluate(self, name: str, seed: int, selectors: dict[str, Callable[..., list[list[Example]] | None]], *,
                 split: str = "test") -> list[dict[str, Any]]:
        """Accuracy of each per-query selector on ``split`` rows of task ``name``, seed ``seed``; one row each.

        A selector is ``fn(splits, scorer) -> demo lists`` (or ``None`` for a row that needs no LM, then it
        returns its own predictions via ``"pred"``).
        """
        spec = self.task(name)[0]
        sp = self.splits(name, seed)
        queries = list(sp.test if split == "test" else sp.val)
        scorer = self.scorer(name)
        gold = label_ids(spec.labels, queries)
        out = []
        for sel_name, fn in selectors.items():
            before = scorer.stats.copy()
            t0 = time.perf_counter()
            res = fn(sp, scorer, queries)
            select_rows = int((scorer.stats - before).queries)
            if isinstance(res, np.ndarray):  # predictions from a classifier without the LM
                pred, eval_rows = res, 0
            else:
                mid = scorer.stats.copy()
                pred = scorer.logprobs_many(demo_lists=res, queries=queries).argmax(axis=1)
                eval_rows = int((scorer.stats - mid).queries)
            out.append({"task": name, "seed": seed, "split": split, "selector": sel_name,
                        "acc": float(np.mean(pred == gold)), "n": len(queries), "select_rows": select_rows,
                        "eval_rows": eval_rows, "seconds": round(time.perf_counter() - t0, 1)})
            self.say(f"{name} seed {seed} {split} {sel_name}: {out[-1]['acc']:.3f}")
        return out


# --- selectors as evaluation functions ----------------------------------------------------------------------


def registered(name: str, k: int, **kwargs: Any) -> Callable[..., list[list[Example]]]:
    """A registered selector as ``fn(splits, scorer, queries)``."""
    def fn(sp: Splits, scorer: CachedScorer, queries: Sequence[Example]) -> list[list[Example]]:
        sel = make_selector(name, **kwargs)
        ctx = SelectionContext(pool=sp.pool, val=sp.val, k=k, scorer=scorer, rng=np.random.default_rng(0))
        return sel.select_for(ctx, queries) if sel.per_query else [sel.select(ctx)] * len(queries)
    return fn


def knn_vote(run: PerQueryRun, m: int) -> Callable[..., np.ndarray]:
    """The kNN vote classifier (no LM): each query's similarity-weighted label vote over its ``m`` neighbours."""
    def fn(sp: Splits, scorer: CachedScorer, queries: Sequence[Example]) -> np.ndarray:
        table = PoolTable.build(sp.pool, labels=scorer.spec.labels, embedder=run.embedder)
        ctx = QueryContexts.build(table, queries, m=m, embedder=run.embedder)
        return np.array([int(np.argmax(vote_shares(table, ctx, i))) for i in range(len(queries))])
    return fn


def policy_fn(run: PerQueryRun, path: Path, mode: str = "greedy") -> Callable[..., list[list[Example]]]:
    """A per-query policy file as ``fn(splits, scorer, queries)``, choosing in ``mode``."""
    policy = PerQueryPolicy.load(path)

    def fn(sp: Splits, scorer: CachedScorer, queries: Sequence[Example]) -> list[list[Example]]:
        return policy.select_for(sp.pool, queries, labels=scorer.spec.labels, embedder=run.embedder, scorer=scorer,
                                 mode=mode)
    return fn


def variants(cfg: PerQueryRunConfig, feature_sets: Sequence[str], rewards: Sequence[str]) -> list[tuple[str, str]]:
    """``(feature_set, reward)`` pairs to train (the config's own when none are given)."""
    return [(f, r) for f in (feature_sets or [cfg.feature_set]) for r in (rewards or [cfg.reward])]


def baselines(run: PerQueryRun) -> dict[str, Callable[..., Any]]:
    """The reference rows: zero-shot, kNN, the neighbour rules over the same ``M``, the kNN vote (no LM)."""
    c = run.cfg
    emb = run.embedder
    return {"zero_shot": registered("zero_shot", c.k), "knn": registered("knn", c.k, embedder=emb),
            "knn_majority": registered("knn_majority", c.k, m=c.m, embedder=emb),
            "knn_balanced": registered("knn_balanced", c.k, m=c.m, embedder=emb),
            "knn_mmr": registered("knn_mmr", c.k, m=c.m, embedder=emb), "knn_vote": knn_vote(run, c.m)}


def rebuild_command(config_path: str | Path | None, feature_set: str, reward: str) -> str:
    """The commands that rebuild the ``general`` policy of ``(feature_set, reward)`` from the config file
    ``config_path`` (``None``: the defaults), as its training record keeps them (``rebuild``); the policy lands in
    ``<run dir>/policies/general-<feature_set>-<reward>.safetensors`` (``--run-dir``, default ``runs/per_query``)."""
    config = [] if config_path is None else ["--config", str(config_path)]
    collect = shlex.join(["rl-select", "per-query", "collect", *config])
    general = shlex.join(["rl-select", "per-query", "general", *config, "--feature-sets", feature_set,
                          "--rewards", reward])
    return f"{collect} && {general}"


def general_policy_path(run_dir: str | Path, feature_set: str, reward: str) -> Path:
    """Where the ``general`` stage writes the policy of ``(feature_set, reward)`` in ``run_dir``."""
    return Path(run_dir) / "policies" / f"general-{feature_set}-{reward}.safetensors"


STAGES: tuple[str, ...] = ("collect", "train", "general", "evaluate", "adapt", "report")
"""The stages of a per-query run, in order (each resumes)."""


def run_stage(stage: str, run_dir: str | Path, cfg: PerQueryRunConfig, *, tasks: Sequence[str] | None = None,
              feature_sets: Sequence[str] = (), rewards: Sequence[str] = (), split: str = "test",
              seeds: Sequence[int] | None = None, with_baselines: bool = True,
              say: Callable[[str], None] = print, config_path: str | Path | None = None) -> str | None:
    """Run one stage of a per-query run in ``run_dir`` (see the module docstring).

    ``config_path`` (the file ``cfg`` was read from, as given) goes into the ``general`` policies' ``rebuild``
    record (:func:`rebuild_command`).

    * ``collect``: fill the stores of ``tasks`` (default: the config's training tasks);
    * ``train``: for every held-out task (``tasks``, default the config's eval tasks) and every
      ``(feature_set, reward)``, a policy trained on every other training task (``loo-<task>-<fs>-<reward>``);
    * ``general``: one policy per ``(feature_set, reward)`` trained on every training task
      (``general-<fs>-<reward>``, the one that ships with the package);
    * ``evaluate``: train what is missing (or take the policies of the config's ``policy_run``), then append the
      baselines' and the policies' accuracy on ``split`` rows of every held-out task and seed to ``results.csv``;
    * ``adapt``: per held-out task and seed, a leave-one-task-out policy that also learned from episodes on
      that task's own pool (:meth:`PerQueryRun.adapted`), evaluated like ``evaluate`` (``policy_pq:adapt-...``);
    * ``report``: the Markdown table of ``results.csv`` (returned).

    Raises:
        ConfigError: An unknown stage or split.
    """
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {list(STAGES)}")
    if split not in ("val", "test"):
        raise ConfigError(f"split={split!r}; expected 'val' (choosing settings) or 'test' (reporting)")
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise ConfigError(f"--run-dir {str(run_dir)!r} is {path_kind(run_dir)}; expected a run folder (new or to "
                          f"continue)")
    if stage == "report":
        path = Path(run_dir) / "results.csv"
        if not path.is_file():
            raise DataError(f"{str(path)!r} not found; expected the results of the evaluate stage in that run folder")
        return summary_table(path, split=split)
    # bad input fails here, before a store, the embedder or the LM is touched
    for name in dict.fromkeys([*cfg.train_tasks, *cfg.eval_tasks, *(tasks or [])]):
        check_task_name(name)
    for fs in feature_sets:
        FeatureView.of(fs)
    check_rewards(rewards)
    run = PerQueryRun(cfg, run_dir, say=say)
    if stage == "collect":
        run.collect(tasks)
        return None
    if stage == "general":
        for fs, rw in variants(cfg, feature_sets, rewards):
            run.train(f"general-{fs}-{rw}", cfg.train_tasks, feature_set=fs, reward=rw,
                      rebuild=rebuild_command(config_path, fs, rw))
        return None
    held_out = list(tasks or cfg.eval_tasks)
    policies = loo_policies(run, held_out, variants(cfg, feature_sets, rewards),
                            train=cfg.policy_run is None or stage != "evaluate")
    if stage == "train":
        return None
    results = run.dir / "results.csv"
    if stage == "adapt":
        for target in held_out:
            for seed in (cfg.seeds if seeds is None else seeds):
                have = done_rows(results)
                fns = {f"policy_pq:adapt-{fs}-{rw}": policy_fn(run, run.adapted(target, seed, fs, rw))
                       for fs, rw in variants(cfg, feature_sets, rewards)
                       if (target, str(seed), split, f"policy_pq:adapt-{fs}-{rw}") not in have}
                append_rows(results, run.evaluate(target, seed, fns, split=split))
        return None
    stacked = {key: PerQueryPolicy.load(path).stacker is not None for key, path in policies.items()}
    for target in held_out:
        for seed in (cfg.seeds if seeds is None else seeds):
            have = done_rows(results)
            fns = baselines(run) if with_baselines else {}
            for fs, rw in variants(cfg, feature_sets, rewards):
                for mode in cfg.modes:
                    label = policy_label(fs, rw, mode, stacker=stacked[target, fs, rw])
                    fns[label] = policy_fn(run, policies[target, fs, rw], mode)
            todo = {n: f for n, f in fns.items() if (target, str(seed), split, n) not in have}
            append_rows(results, run.evaluate(target, seed, todo, split=split))
    return None


def loo_policies(run: PerQueryRun, held_out: Sequence[str], pairs: Sequence[tuple[str, str]], *,
                 train: bool = True) -> dict[tuple[str, str, str], Path]:
    """The leave-one-task-out policy of every held-out task and ``(feature_set, reward)``, keyed by
    ``(task, feature_set, reward)``: trained here on every other training task (``train``), or taken as they are
    from the config's ``policy_run`` folder.

    Raises:
        DataError: ``policy_run`` lacks one of them (one line naming the file).
    """
    cfg, out = run.cfg, {}
    for target in held_out:
        others = [t for t in cfg.train_tasks if t != target]
        for fs, rw in pairs:
            name = f"loo-{target}-{fs}-{rw}"
            if train:
                out[target, fs, rw] = run.train(name, others, feature_set=fs, reward=rw)
                continue
            path = Path(cfg.policy_run or "") / "policies" / f"{name}.safetensors"
            if not path.is_file():
                raise DataError(f"policy_run: {str(path)!r} not found; expected the {name} policy of that run "
                                f"(rl-select per-query train)")
            out[target, fs, rw] = path
    return out


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - ``python -m`` entry point
    """``python -m rl_select.experiments.per_query_runs STAGE ...`` (the same as ``rl-select per-query``)."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=list(STAGES))
    p.add_argument("--run-dir", default="runs/per_query")
    p.add_argument("--config", default=None, help="JSON of PerQueryRunConfig fields")
    p.add_argument("--tasks", nargs="*", default=None, help="collect: tasks to collect; else: the held-out tasks")
    p.add_argument("--feature-sets", nargs="*", default=[])
    p.add_argument("--rewards", nargs="*", default=[])
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--seeds", nargs="*", type=int, default=None)
    p.add_argument("--no-baselines", action="store_true")
    a = p.parse_args(argv)
    cfg = PerQueryRunConfig.from_file(a.config)
    table = run_stage(a.stage, a.run_dir, cfg, tasks=a.tasks, feature_sets=a.feature_sets, rewards=a.rewards,
                      split=a.split, seeds=a.seeds, with_baselines=not a.no_baselines, config_path=a.config)
    if table:
        print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
