"""Per-query policies across tasks: collect logged episodes per task, train leave-one-task-out, evaluate.

Every stage is resumable and writes into one run folder::

    RUN/stores/<task>.jsonl            logged per-query episodes (agents.per_query.PerQueryStore)
    RUN/policies/<name>.safetensors    per-query policies (loo-<task>: trained on every other task)
    RUN/pool_stores/<task>-s<seed>.jsonl  episodes whose queries are the task's own pool (``adapt``)
    RUN/results.csv                    one row per (task, seed, selector); rows already there are skipped

Collection uses each task's seed-0 pool (``n_pool`` rows) and queries from the rest of its train file
(never its validation or test rows). Evaluation uses seeded splits (pool / val / test) like
``configs/reference.toml``: validation rows choose settings (:func:`validation_rows`), test rows report.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.per_query import PerQueryStore, collect_per_query, to_episodes, train_per_query
from rl_select.data import Splits, load_task, make_splits
from rl_select.embeddings import MiniLMEmbedder
from rl_select.errors import ConfigError, DataError, one_of, path_kind, read_utf8
from rl_select.lm.base import CachedScorer
from rl_select.lm.cache import open_cache
from rl_select.lm.spec import ScorerSpec
from rl_select.mdp.per_query import PER_QUERY_REWARDS, FeatureView, PoolTable, QueryContexts, vote_shares
from rl_select.mdp.per_query_policy import MODES, PerQueryPolicy
from rl_select.metrics import label_ids
from rl_select.prompts import content_free_queries
from rl_select.selectors import SelectionContext, make_selector
from rl_select.tasks import TaskSpec, resolve_task
from rl_select.types import Example


@dataclass
class PerQueryRunConfig:
    """The settings of one per-query run (every stage reads the same)."""

    train_tasks: list[str] = field(default_factory=lambda: ["sst2", "agnews", "trec", "subj", "rte", "cb",
                                                            "sst5", "mpqa", "atis"])
    eval_tasks: list[str] = field(default_factory=lambda: ["sst2", "agnews", "trec", "subj"])
    n_pool: int = 100
    n_val: int = 100
    n_test: int = 500
    m: int = 16
    k: int = 4
    n_queries: int = 1000
    episodes: int = 2000
    collect_seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    feature_set: str = "full"
    reward: str = "correct"
    train_steps: int = 3000
    cql_alpha: float = 0.1
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    cache: str | None = None
    modes: list[str] = field(default_factory=lambda: ["greedy", "critic"])
    adapt_episodes: int = 600
    adapt_repeat: int = 8

    def __post_init__(self) -> None:
        """Refuse a value of the wrong type or range (one line naming the field), before any stage starts."""
        def integer(name: str, least: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"per-query config {name}={value!r}; expected an integer >= {least}")

        def names(name: str, item: type, least: int | None = None) -> None:
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value or not all(
                    isinstance(v, item) and not isinstance(v, bool) and (least is None or v >= least) for v in value):
                what = "strings" if item is str else f"integers >= {least}" if least is not None else "integers"
                raise ConfigError(f"per-query config {name}={value!r:.60}; expected a non-empty list of {what}")

        for name in ("n_pool", "n_test", "m", "k", "n_queries", "episodes", "train_steps", "adapt_repeat"):
            integer(name, 1)
        for name in ("n_val", "collect_seed", "adapt_episodes"):
            integer(name, 0)
        if self.k > self.m:
            raise ConfigError(f"per-query config k={self.k} exceeds m={self.m}; expected k <= m")
        names("train_tasks", str)
        names("eval_tasks", str)
        names("seeds", int, 0)
        names("hidden", int, 1)
        if not isinstance(self.feature_set, str):
            raise ConfigError(f"per-query config feature_set={self.feature_set!r:.60}; expected a name")
        FeatureView.of(self.feature_set)
        check_rewards([self.reward])
        names("modes", str)
        bad = [mode for mode in self.modes if mode not in MODES]
        if bad:
            raise ConfigError(f"per-query config modes={self.modes!r:.60}; {bad[0]!r} is not one of {list(MODES)}")
        if not isinstance(self.cql_alpha, (int, float)) or isinstance(self.cql_alpha, bool) or self.cql_alpha < 0:
            raise ConfigError(f"per-query config cql_alpha={self.cql_alpha!r}; expected a number >= 0")
        if self.cache is not None and not isinstance(self.cache, str):
            raise ConfigError(f"per-query config cache={self.cache!r}; expected a file path or 'none'")

    @classmethod
    def from_file(cls, path: str | Path | None) -> PerQueryRunConfig:
        """The settings in a JSON file of these fields (``None``: the defaults).

        Raises:
            ConfigError: Unreadable or not UTF-8, not a JSON object, an unknown field (named, with the
                closest valid ones), or a bad value (one line each).
        """
        if path is None:
            return cls()
        where = f"per-query config {str(path)!r}"
        try:
            fields = json.loads(read_utf8(Path(path), where, ConfigError, expected="a JSON object"))
        except ValueError as exc:
            raise ConfigError(f"{where} is not JSON ({str(exc).splitlines()[0]}); expected an object of "
                              "PerQueryRunConfig fields") from None
        if not isinstance(fields, dict):
            raise ConfigError(f"{where} holds {type(fields).__name__}; expected a JSON object of PerQueryRunConfig "
                              "fields")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r}; expected some of {one_of(known, unknown[0])}")
        return cls(**fields)

    def scorer_spec(self) -> ScorerSpec:
        """The bundled model, calibrated (the reference protocol)."""
        return ScorerSpec(model="bundled", calibrate=True)


def check_rewards(rewards: Sequence[str]) -> None:
    """Refuse a reward that is not a per-query terminal reward (one line)."""
    for reward in rewards:
        if reward not in PER_QUERY_REWARDS:
            raise ConfigError(f"per-query reward {reward!r}; expected one of {list(PER_QUERY_REWARDS)}")


def check_task_name(name: str) -> None:
    """Refuse, without loading it, a task :func:`task_of` cannot find (see :func:`~rl_select.tasks.resolve_task`)."""
    if not isinstance(name, str):
        raise ConfigError(f"per-query task {name!r}; expected a task name")
    resolve_task(name)


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
            spec = self.task(name)[0]
            if name not in self._contexts:
                self._contexts[name] = self.training_contexts(name)
            table, ctx = self._contexts[name]
            logged = self.store(name).load()[:limit]
            self._episodes[key] = to_episodes(logged, table, ctx, view, k=self.cfg.k, reward=reward,
                                              labels=spec.labels)
        return self._episodes[key]

    def train(self, policy_name: str, tasks: Sequence[str], *, feature_set: str | None = None,
              reward: str | None = None, seed: int = 0, limit: int | None = None, rebuild: str = "") -> Path:
        """Train (or reuse) ``RUN/policies/<policy_name>.safetensors`` on the stores of ``tasks``."""
        c = self.cfg
        fs, rw = feature_set or c.feature_set, reward or c.reward
        path = self.dir / "policies" / f"{policy_name}.safetensors"
        if path.is_file():
            return path
        view = FeatureView.of(fs)
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
        PerQueryPolicy(qnet, feature_set=fs, m=c.m, k=c.k, reward=rw, scorer_spec=self.scorer(tasks[0]).scorer_spec,
                       training=training).save(path)
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


def policy_label(feature_set: str, reward: str, mode: str) -> str:
    """A policy's selector name in ``results.csv``: ``policy_pq:<fs>-<reward>`` (greedy) or ``policy_pq:critic-...``."""
    return f"policy_pq:{'' if mode == 'greedy' else mode + '-'}{feature_set}-{reward}"


def append_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Append result rows to a CSV (header on first write)."""
    if not rows:
        return
    new = not path.is_file()
    with path.open("a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            w.writeheader()
        w.writerows(rows)


def done_rows(path: Path) -> set[tuple[str, str, str, str]]:
    """``(task, seed, split, selector)`` of rows already in the CSV."""
    if not path.is_file():
        return set()
    with path.open(encoding="utf-8") as f:
        return {(r["task"], r["seed"], r["split"], r["selector"]) for r in csv.DictReader(f)}


def summary_table(path: Path, *, split: str = "test") -> str:
    """``results.csv`` as a Markdown table: accuracy (%) mean ± std over seeds per task, and the task average."""
    with path.open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    sels = list(dict.fromkeys(r["selector"] for r in rows))
    acc: dict[tuple[str, str], list[float]] = {}
    lm: dict[str, list[int]] = {}
    for r in rows:
        acc.setdefault((r["selector"], r["task"]), []).append(100 * float(r["acc"]))
        lm.setdefault(r["selector"], []).append(int(r["select_rows"]))
    lines = ["| selector | " + " | ".join(tasks) + " | average | LM rows to select (mean per run) |",
             "|---" * (len(tasks) + 3) + "|"]
    for sel in sels:
        cells, means = [], []
        for t in tasks:
            v = acc.get((sel, t), [])
            cells.append(f"{np.mean(v):.1f} ± {np.std(v):.1f} (n={len(v)})" if v else "–")
            means.append(np.mean(v) if v else np.nan)
        avg = f"{np.mean(means):.1f}" if not np.isnan(means).any() else "–"
        lines.append(f"| {sel} | " + " | ".join(cells) + f" | {avg} | {int(np.mean(lm[sel]))} |")
    return "\n".join(lines)


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


STAGES: tuple[str, ...] = ("collect", "train", "general", "evaluate", "adapt", "report")
"""The stages of a per-query run, in order (each resumes)."""


def run_stage(stage: str, run_dir: str | Path, cfg: PerQueryRunConfig, *, tasks: Sequence[str] | None = None,
              feature_sets: Sequence[str] = (), rewards: Sequence[str] = (), split: str = "test",
              seeds: Sequence[int] | None = None, with_baselines: bool = True,
              say: Callable[[str], None] = print) -> str | None:
    """Run one stage of a per-query run in ``run_dir`` (see the module docstring).

    * ``collect``: fill the stores of ``tasks`` (default: the config's training tasks);
    * ``train``: for every held-out task (``tasks``, default the config's eval tasks) and every
      ``(feature_set, reward)``, a policy trained on every other training task (``loo-<task>-<fs>-<reward>``);
    * ``general``: one policy per ``(feature_set, reward)`` trained on every training task
      (``general-<fs>-<reward>``, the one that ships with the package);
    * ``evaluate``: train what is missing, then append the baselines' and the policies' accuracy on ``split``
      rows of every held-out task and seed to ``results.csv``;
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
                      rebuild=f"rl-select per-query collect --config CONFIG && rl-select per-query general --config "
                              f"CONFIG --feature-sets {fs} --rewards {rw}")
        return None
    held_out = list(tasks or cfg.eval_tasks)
    for target in held_out:
        others = [t for t in cfg.train_tasks if t != target]
        for fs, rw in variants(cfg, feature_sets, rewards):
            run.train(f"loo-{target}-{fs}-{rw}", others, feature_set=fs, reward=rw)
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
    for target in held_out:
        for seed in (cfg.seeds if seeds is None else seeds):
            have = done_rows(results)
            fns = baselines(run) if with_baselines else {}
            for fs, rw in variants(cfg, feature_sets, rewards):
                path = run.dir / "policies" / f"loo-{target}-{fs}-{rw}.safetensors"
                for mode in cfg.modes:
                    fns[policy_label(fs, rw, mode)] = policy_fn(run, path, mode)
            todo = {n: f for n, f in fns.items() if (target, str(seed), split, n) not in have}
            append_rows(results, run.evaluate(target, seed, todo, split=split))
    return None


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
                      split=a.split, seeds=a.seeds, with_baselines=not a.no_baselines)
    if table:
        print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
