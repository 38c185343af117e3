"""Ablation grids: ``rl-select ablate CONFIG.toml`` (see ``docs/ablate.md``).

An ablation file holds a ``[base]`` run config (the nested :class:`~rl_select.experiments.config.RunConfig`
tables), a ``[grid]`` table of flat keys -> lists of values (their product is the *cells*), the
``selectors`` every cell runs, and optionally ``seeds`` (default: ``base.seeds``)::

    selectors = ["random", "random_search", "greedy", "policy", "policy_search:4"]
    seeds = [0, 1]

    [base]
    task = "sst2"
    [base.splits]
    n_pool = 8

    [grid]
    k = [2, 4]
    feature_set = ["active", "labelled"]

A trained selector (one whose ``tags.trained`` is set: ``policy``, ``policy_search:M``, ``policy_rank``,
``policy_probe``) makes the cell collect rollouts (an agent that learns from them) and train ``cfg.agent`` for
that cell's MDP / agent settings and seed, then evaluate the policy; the ``M`` of ``policy_search:M`` sets its
declared ``count_arg`` (the number of proposals). Every row is keyed by
``(cell_id, seed, selector)`` (``cell_id``: a hash of the cell's grid values), so a killed grid run again on
its run folder skips the rows already in ``results.csv``; rollout stores
(:func:`~rl_select.experiments.training.store_path`), trained policies (``policies/``) and the score cache are
reused.

Costs: :func:`estimate` gives the LM *query rows* (the scorer's ``queries`` counter, cache hits included)
each row should spend, from each selector's declaration (``tags.lm_rows``,
:class:`~rl_select.selectors.tags.SelectorTags`) and :func:`training_rows` (the agent's declaration,
:class:`~agents.registry.AgentTags`).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import re
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rl_select.errors import ConfigError, DataError, RLSelectError, one_of, read_utf8
from rl_select.experiments.config import FLAT_KEYS, RunConfig
from rl_select.experiments.rundir import attach_log, recording, write_status

log = logging.getLogger("rl_select")

if TYPE_CHECKING:
    from rl_select.selectors.tags import CostSetting, SelectorTags

FORMAT_KEYS = ("base", "grid", "selectors", "seeds")
"""The top-level keys of an ablation file."""

GRID_KEYS: dict[str, str] = {
    "task": "task name or spec file", "data": "data folder", "k": "demonstrations",
    "n_pool": "candidate pool size", "n_val": "reward-validation size", "n_test": "test rows",
    "train_pool": "train rows MDP episodes draw from", "stratify": "balanced splits",
    "model": "LM", "mode": "scoring mode (direct | channel)", "calibrate": "contextual calibration",
    "length_norm": "label length normalisation", "dtype": "LM dtype",
    "n_candidates": "candidates per MDP episode", "feature_set": "feature set", "reward": "reward mode",
    "allow_stop": "STOP allowed", "min_len": "fewest demos before STOP",
    "agent": "learner", "episodes": "rollout count (offline) / episodes (tabular)",
    "train_steps": "gradient / env steps", "hidden": "Q-network hidden widths", "train_tasks": "transfer tasks",
    "cql_alpha": "CQL weight", "val_episodes": "offline checkpoint check (0: held-out TD loss)",
    "rollout_seed": "seed of the rollouts (None: each seed's own)", "q_target": "offline target (td | mc)",
    "return_norm": "offline returns: none | task (z-scores within each training task)",
    "probe_critic": "fit the probe critic (policy_probe) on the rollouts",
    "critic_episodes": "episodes per task the probe critic fits on",
}
"""Keys a ``[grid]`` may vary (flat config keys, :data:`~rl_select.experiments.config.FLAT_KEYS`)."""

TRAIN_TASK_WORDS = ("self", "others")
"""Values a ``[grid] train_tasks`` may hold besides a task list: ``"self"`` (the cell's task: the seen policy)
and ``"others"`` (every other ``task`` of the grid: the transfer policy, which never sees the cell's task)."""

COLUMNS = (
    "cell_id", "cell", "seed", "selector", "status", "error", "test_acc", "val_acc", "test_rows",
    "train_queries", "select_queries", "eval_queries", "labelled", "seconds", "train_seconds",
    "select_cache_hits", "eval_cache_hits", "train_cache_hits", "est_train_queries", "est_select_queries",
    "demos", *GRID_KEYS,
)
"""``results.csv`` columns (the grid keys hold each row's resolved settings)."""


# --- costs: read from each selector's declaration -----------------------------------------------------


def _tags(name: str) -> SelectorTags:
    """The declaration (:class:`~rl_select.selectors.tags.SelectorTags`) of a ``selectors`` entry."""
    from rl_select.selectors import selector_tags

    return selector_tags(name)


def _args(cfg: RunConfig, name: str) -> dict[str, Any]:
    """The selector arguments of entry ``name`` (``[selectors.args."NAME:LABEL"]`` over ``[selectors.args.NAME]``)."""
    return {**cfg.selectors.args.get(selector_kind(name), {}), **cfg.selectors.args.get(name, {})}


def _cost_setting(cfg: RunConfig, name: str) -> CostSetting:
    """What entry ``name``'s cost formulas read: split sizes, k, its arguments (``NAME:M``'s count included)."""
    from rl_select.selectors import CostSetting

    args, count = _args(cfg, name), _tags(name).count_arg
    if count is not None:
        args[count] = selector_m(name)
    return CostSetting(n_pool=cfg.splits.n_pool, n_val=cfg.splits.n_val, n_test=cfg.splits.n_test, k=cfg.k,
                       args=args, feature_set=cfg.mdp.feature_set)


def select_rows(cfg: RunConfig, name: str) -> int:
    """Estimated LM query rows entry ``name`` spends selecting (its declared ``lm_rows``)."""
    return int(_tags(name).lm_rows(_cost_setting(cfg, name)))


def select_labels(cfg: RunConfig, name: str) -> int:
    """Labelled examples entry ``name`` reads selecting (its declared ``labels_read``), training not included."""
    return int(_tags(name).labels_read(_cost_setting(cfg, name)))


def _per_query(cfg: RunConfig, name: str) -> bool:
    """Whether the entry may prompt every test query with its own demos (no val accuracy of one prompt)."""
    return _tags(name).is_per_query(_args(cfg, name))


def trains(name: str) -> bool:
    """Whether entry ``name`` needs a policy trained in its cell (its declared ``trained``)."""
    return _tags(name).trained


def training_rows(cfg: RunConfig, counted: set[str] | None = None) -> int:
    """Estimated LM query rows to train ``cfg.agent`` for one cell and seed (N candidates, V val, k).

    An episode costs :meth:`~rl_select.mdp.features.FeatureSpec.lm_rows` (``(k + 1) x (N + V)`` for
    ``active`` / ``labelled``; ``V`` for a table set with the terminal reward), plus, for the table sets,
    the one-off table of the ``train_pool`` rows (and val's, read by ``zeroshot`` and the marginal reward).
    The agent declares (:class:`~agents.registry.AgentTags`) the episodes it plays in the training env
    (``env_episodes``: ``dqn`` ``train_steps / k``, ``tabular`` ``episodes``, ``offline`` its greedy validation,
    ``val_episodes`` at each of about 8 checkpoints) and what it learns from:

    * ``env`` (``dqn``, ``tabular``): those episodes and the one-off table;
    * ``rollouts`` (``offline``): those episodes plus, per training task, the rollouts its store still lacks
      (``episodes`` minus those held; a store in ``counted`` was already counted by another cell or seed, so
      it costs nothing again) with the one-off table; with ``probe_critic``, the replay of the episodes
      already stored (``V`` rows each, answered by the cache that collected them).

    Upper bounds before the cache: a STOP shortens episodes.
    """
    from agents.registry import agent_class
    from rl_select.mdp.features import FeatureSpec

    spec = FeatureSpec(cfg.mdp.feature_set)
    per_episode = spec.lm_rows(cfg.n_candidates, cfg.splits.n_val, reward=cfg.mdp.reward, k=cfg.k)["per_episode"]
    val_in_table = spec.kind == "zeroshot" or cfg.mdp.reward == "marginal"  # the empty prompt's val rows
    one_off = (cfg.splits.train_pool + (cfg.splits.n_val if val_in_table else 0)) if spec.uses_table else 0
    tags = agent_class(cfg.agent.name).tags
    rows = tags.env_episodes(cfg.agent, cfg.k) * per_episode
    if tags.learns_from == "env":
        return rows + one_off
    from agents.rollouts import RolloutStore
    from rl_select.experiments.training import store_path

    for task in cfg.train_tasks:
        path = store_path(cfg, task)
        if counted is not None:
            if str(path) in counted:
                continue
            counted.add(str(path))
        held = len(RolloutStore(path)) if path.is_file() else 0
        missing = max(0, cfg.agent.episodes - held)
        rows += missing * per_episode + (one_off if missing else 0)
        if cfg.agent.probe_critic:  # the critic replays stored episodes' final prompts on val (cache hits
            fit = cfg.agent.critic_episodes or cfg.agent.episodes  # where this cache collected them)
            rows += min(held, cfg.agent.episodes, fit) * cfg.splits.n_val
    return rows


def training_labels(cfg: RunConfig, n_train: int | None = None) -> int:
    """Labelled rows training reads: the train rows episodes draw demos from, and the reward's val rows."""
    pool = cfg.splits.train_pool if n_train is None else min(cfg.splits.train_pool, n_train - cfg.splits.n_val)
    return max(pool, 0) + cfg.splits.n_val


# --- the plan ---------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One point of the grid: its id (a hash of its values), a readable label, and its run config."""

    id: str
    label: str
    values: dict[str, Any]
    cfg: RunConfig


@dataclass
class Plan:
    """A parsed ablation file."""

    where: str
    base: RunConfig
    grid: dict[str, list[Any]]
    cells: list[Cell]
    selectors: list[str]
    seeds: list[int]
    source: str = ""
    units: list[tuple[Cell, int, str]] = field(default_factory=list)

    @property
    def trains(self) -> bool:
        return any(trains(s) for s in self.selectors)


def selector_kind(name: str) -> str:
    """The registry name of a selector entry (``"policy_search:4"`` -> ``"policy_search"``)."""
    return name.split(":")[0]


_PS_LABEL = re.compile(r"(\d+)[a-z_]*")
"""A counted entry's label (``policy_search:M``): ``M``, optionally followed by letters naming its arguments
(``6s``)."""


def selector_m(name: str) -> int:
    """``M`` of ``NAME:M`` (or ``NAME:M<letters>``, e.g. ``policy_search:6s``) for a selector that declares a
    ``count_arg`` (``policy_search``); 1 otherwise (``policy``)."""
    from rl_select.selectors import SELECTORS

    head, _, tail = name.partition(":")
    match = _PS_LABEL.fullmatch(tail)
    counted = head in SELECTORS and SELECTORS[head].tags.count_arg is not None
    return int(match.group(1)) if counted and match else 1


def cell_id(values: Mapping[str, Any]) -> str:
    """A stable id of a cell's grid values (same values, same id, whatever the order of the grid)."""
    return "c" + hashlib.sha256(json.dumps(dict(values), sort_keys=True, default=str).encode()).hexdigest()[:9]


def _check_selectors(names: Any, where: str) -> list[str]:
    from rl_select.selectors import SELECTORS

    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: selectors={names!r}; expected a non-empty list of selector names, e.g. "
                          f"['random', 'policy', 'policy_search:4']")
    for name in names:
        kind, _, tail = name.partition(":")
        if kind not in SELECTORS:
            raise ConfigError(f"{where}: selectors entry {name!r} is not a selector; expected one of "
                              f"{one_of(sorted(SELECTORS), kind, width=70)} (optionally NAME:LABEL)")
        match = _PS_LABEL.fullmatch(tail)
        if SELECTORS[kind].tags.count_arg is not None and not (match and int(match.group(1)) >= 1):
            raise ConfigError(f"{where}: selectors entry {name!r}; expected {kind}:M with M an integer >= 1, "
                              f"optionally followed by letters ({kind}:6s)")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: selectors {names} repeat a name; expected each once")
    return list(names)


def load_plan(path: str | Path) -> Plan:
    """Parse and check an ablation file: every key, every grid value and every cell, before anything runs.

    Raises:
        ConfigError: One line naming the file, the key and the allowed keys or values.
    """
    p = Path(path)
    where = f"ablate config {str(p)!r}"
    if not p.is_file():
        raise ConfigError(f"{where} does not exist; expected a TOML file with [base] and [grid]")
    source = read_utf8(p, where, ConfigError)
    try:
        doc = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    return plan_from_dict(doc, where=where, source=source)


def _cell_values(values: Mapping[str, Any], grid: Mapping[str, list[Any]], base: RunConfig, where: str
                 ) -> dict[str, Any]:
    """A cell's config keys: ``train_tasks = "self" | "others"`` resolved against the cell's task and the grid's."""
    out = dict(values)
    word = out.get("train_tasks")
    if word == "self":
        out["train_tasks"] = None
    elif word == "others":
        task = out.get("task", base.task)
        others = [t for t in grid.get("task", [base.task]) if t != task]
        if not others:
            raise ConfigError(f"{where}: [grid] train_tasks = 'others' needs a [grid] task list with another "
                              f"task than {task!r}")
        out["train_tasks"] = others
    return out


def plan_from_dict(doc: Mapping[str, Any], *, where: str = "ablate config", source: str = "") -> Plan:
    """:func:`load_plan` on a parsed document."""
    unknown = sorted(set(doc) - set(FORMAT_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected some of {list(FORMAT_KEYS)}")
    base_doc = doc.get("base", {})
    grid = doc.get("grid", {})
    if not isinstance(base_doc, Mapping) or not isinstance(grid, Mapping):
        raise ConfigError(f"{where}: [base] and [grid] must be tables")
    base = RunConfig.from_dict(base_doc, where=f"{where} [base]")
    for key, values in grid.items():
        if key not in GRID_KEYS:
            hint = " (list selectors in the top-level `selectors`, seeds in `seeds`)" if key in (
                "selectors", "selector", "seeds", "seed") else ""
            raise ConfigError(f"{where}: [grid] key {key!r} is not a grid key{hint}; expected one of "
                              f"{one_of(sorted(GRID_KEYS), key, width=60)} (docs/ablate.md)")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: [grid] {key} = {values!r}; expected a non-empty list of values")
        for value in values:
            _check_value(base, key, value, where)
    selectors = _check_selectors(doc.get("selectors", base.selectors.names), where)
    seeds = doc.get("seeds", base.seeds)
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           for s in seeds):
        raise ConfigError(f"{where}: seeds={seeds!r}; expected a non-empty list of integers")
    cells = []
    keys = list(grid)
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        label = ", ".join(f"{k}={_text(v)}" for k, v in values.items()) or "base"
        try:
            cfg = base.updated(**_cell_values(values, grid, base, where), seeds=list(seeds))
        except ConfigError as exc:
            raise ConfigError(f"{where}: cell [{label}] is not a valid run: {exc}") from None
        choosers = [n for n in selectors if selector_kind(n) != "zero_shot"]
        if cfg.k < 1 and choosers:
            raise ConfigError(f"{where}: cell [{label}] has k={cfg.k} for selector {choosers[0]!r}; expected k >= 1 "
                              "(no demonstrations: the zero_shot selector)")
        if "policy_probe" in map(selector_kind, selectors) and not cfg.agent.probe_critic:
            raise ConfigError(f"{where}: selector policy_probe in cell [{label}] needs agent.probe_critic = true "
                              "(set it in [base.agent]); expected the policy to carry its probe critic")
        cells.append(Cell(cell_id(values), label, values, cfg))
    plan = Plan(where, base, {k: list(v) for k, v in grid.items()}, cells, selectors, list(seeds), source)
    plan.units = [(c, s, n) for c in cells for s in plan.seeds for n in selectors]
    return plan


def _text(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def _check_value(base: RunConfig, key: str, value: Any, where: str) -> None:
    from rl_select.tasks import resolve_task

    if key == "train_tasks" and value in TRAIN_TASK_WORDS:
        return  # resolved per cell (:func:`_cell_values`)
    try:
        if key == "task":
            resolve_task(value)
        elif key == "train_tasks":
            for t in value or []:
                resolve_task(t)
        cfg = base.updated(**{key: value})
        table, name = FLAT_KEYS.get(key, (None, key))
        got = getattr(getattr(cfg, table), name) if table else getattr(cfg, name)
        numeric = isinstance(got, float) and isinstance(value, int)
        if value is not None and got is not None and type(got) is not type(value) and not numeric:
            raise ConfigError(f"{key}={value!r} is a {type(value).__name__}; expected a {type(got).__name__}")
    except RLSelectError as exc:
        raise ConfigError(f"{where}: [grid] {key} = {value!r} is refused: {exc}") from None


# --- estimates --------------------------------------------------------------------------------------


def _test_rows(cfg: RunConfig, sizes: dict[tuple, int]) -> int:
    if cfg.splits.n_test:
        return cfg.splits.n_test
    key = (cfg.task, cfg.data)
    if key not in sizes:
        from rl_select.experiments.harness import TaskData

        sizes[key] = len(TaskData.load(cfg).test)
    return sizes[key]


def estimate(plan: Plan, done: set[tuple[str, int, str]] | None = None) -> dict[str, Any]:
    """Estimated LM query rows of the plan's units (those not in ``done``) and training runs.

    Per row: ``select`` (the selector's declared ``lm_rows``, :func:`select_rows`) plus evaluation ``T + V``
    (test rows, and val for a fixed prompt); per cell and seed with a trained selector: :func:`training_rows`,
    each rollout store counted once.

    Returns:
        ``{"rows": [{cell_id, cell, seed, selector, select, eval, train}], "training": rows, "selection": rows,
        "evaluation": rows, "total": rows, "pending": n_units}``.
    """
    done = done or set()
    sizes: dict[tuple, int] = {}
    rows, trained, stores = [], set(), set()
    for cell, seed, name in plan.units:
        if (cell.id, seed, name) in done:
            continue
        cfg = cell.cfg
        train = 0
        if trains(name) and (cell.id, seed) not in trained:
            trained.add((cell.id, seed))
            train = training_rows(cfg.updated(seeds=[seed]), stores)
        per_query = _per_query(cfg, name)
        rows.append({"cell_id": cell.id, "cell": cell.label, "seed": seed, "selector": name,
                     "select": select_rows(cfg, name),
                     "eval": _test_rows(cfg, sizes) + (0 if per_query else cfg.splits.n_val), "train": train})
    totals = {k: sum(r[k] for r in rows) for k in ("train", "select", "eval")}
    return {"rows": rows, "training": totals["train"], "selection": totals["select"], "evaluation": totals["eval"],
            "total": sum(totals.values()), "pending": len(rows)}


# --- the run folder ---------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict[str, Any]]:
    """``results.csv``'s complete rows (a line cut by a kill is dropped), values parsed back; a row run again
    (``--retry-failed``) replaces the earlier one of its key, in the earlier one's place."""
    if not path.is_file():
        return []
    out: dict[tuple[str, int, str], dict[str, Any]] = {}
    with path.open(newline="") as fh:
        for raw in csv.DictReader(fh):
            if raw.get("status") not in ("ok", "failed") or not raw.get("selector"):
                continue
            row = {k: _parse(v) for k, v in raw.items() if k is not None}
            out[row_key(row)] = row
    return list(out.values())


def done_keys(rows: Sequence[Mapping[str, Any]], *, retry_failed: bool = False) -> set[tuple[str, int, str]]:
    """The keys a resumed run skips: every row's, or with ``retry_failed`` the ``ok`` rows' only."""
    return {row_key(r) for r in rows if r["status"] == "ok" or not retry_failed}


def _parse(v: str | None) -> Any:
    if v is None or v == "":
        return None
    try:
        return json.loads(v)
    except ValueError:
        return v


def row_key(row: Mapping[str, Any]) -> tuple[str, int, str]:
    """The resume key of a row: ``(cell_id, seed, selector)``."""
    return str(row["cell_id"]), int(row["seed"]), str(row["selector"])


def _migrate(path: Path) -> None:
    """Rewrite ``results.csv`` under today's :data:`COLUMNS` if its header is an older one.

    A row written under the old header keeps its values by name; a row already written under today's
    columns (appended after a column was added) is read by position. Nothing is dropped: a column
    today's schema no longer has is refused with one line.
    """
    with path.open(newline="") as fh:
        if next(csv.reader(fh), None) in (None, list(COLUMNS)):
            return
        fh.seek(0)
        lines = list(csv.reader(fh))
    header, cols = lines[0], list(COLUMNS)
    gone = [c for c in header if c not in cols]
    if gone:
        raise DataError(f"{path}: columns {gone} are not results columns any more; expected a subset of {cols}")
    rows = []
    for raw in lines[1:]:
        if len(raw) == len(cols) and len(raw) != len(header):
            rows.append(dict(zip(cols, raw)))
        elif len(raw) == len(header):
            rows.append(dict(zip(header, raw)))
        # anything else is a line cut by a kill: dropped, as read_rows drops it
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _append(path: Path, row: Mapping[str, Any]) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        _migrate(path)
    if not new:  # a line cut by a kill has no newline: end it so the next row starts clean
        with path.open("rb") as fh:
            fh.seek(-1, 2)
            cut = fh.read(1) != b"\n"
        if cut:
            with path.open("a") as fh:
                fh.write("\n")
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict, bool)) else v) for k, v in row.items()})
        fh.flush()


# --- running ----------------------------------------------------------------------------------------


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
        from rl_select.experiments.executors import LocalExecutor
        from rl_select.experiments.training import EpisodeWorker, build_task_envs, collect_rollouts, train_agent

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
        from rl_select.experiments.training import build_task_envs, fit_probe_critic
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


# --- summaries and plots ----------------------------------------------------------------------------


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (cell, selector), in first-seen order: seeds, failures, mean ± std of test accuracy, means of the rest."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((str(r["cell_id"]), str(r["selector"])), []).append(r)
    out = []
    for (cid, name), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        acc = np.array([float(r["test_acc"]) for r in ok])

        def mean(key: str, rows_: Sequence[Mapping[str, Any]] = ok) -> float | None:
            vals = [float(r[key]) for r in rows_ if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        out.append({
            "cell_id": cid, "cell": rs[0]["cell"], "task": rs[0].get("task"), "selector": name, "seeds": len(ok),
            "failed": len(rs) - len(ok), "error": next((r["error"] for r in rs if r["status"] == "failed"), None),
            "test_acc_mean": float(acc.mean()) if len(acc) else None,
            "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else (0.0 if len(acc) else None),
            "val_acc_mean": mean("val_acc"), "train_queries": mean("train_queries"),
            "select_queries": mean("select_queries"), "labelled": mean("labelled"), "seconds": mean("seconds"),
        })
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def summary_markdown(summary: Sequence[Mapping[str, Any]], plan: Plan | None = None) -> str:
    """The summary as a Markdown table, one line per cell x selector."""
    lines = []
    if plan is not None:
        lines += [f"# ablation: {len(plan.cells)} cells x {len(plan.seeds)} seeds x {len(plan.selectors)} selectors",
                  "", f"grid: {json.dumps(plan.grid)}", ""]
    lines += ["| cell | selector | seeds | test acc (%) | val acc (%) | LM rows (train) | LM rows (select) | "
              "labelled | sec | failed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        acc = "-" if s["test_acc_mean"] is None else f"{_pct(s['test_acc_mean'])} ± {_pct(s['test_acc_std'])}"
        failed = "" if not s["failed"] else f"{s['failed']}: {str(s['error']).replace('|', '/')}"
        num = [("-" if s[k] is None else f"{s[k]:.0f}") for k in ("train_queries", "select_queries", "labelled")]
        sec = "-" if s["seconds"] is None else f"{s['seconds']:.1f}"
        lines.append(f"| {s['cell']} | {s['selector']} | {s['seeds']} | {acc} | {_pct(s['val_acc_mean'])} | "
                     f"{' | '.join(num)} | {sec} | {failed} |")
    return "\n".join(lines) + "\n"


def plot_all(rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], folder: Path) -> dict[str, Path]:
    """``accuracy_by_selector.png`` (per task), ``accuracy_vs_lm_calls.png``, ``learning_curves.png`` (if trained)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    done = [s for s in summary if s["test_acc_mean"] is not None]
    tasks = list(dict.fromkeys(str(s["task"]) for s in done)) or ["-"]
    selectors = list(dict.fromkeys(s["selector"] for s in done))
    cells = list(dict.fromkeys(s["cell"] for s in done))
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(5, 1.2 * len(selectors) * max(1, len(cells)) ** 0.5 + 2)
                                                     * len(tasks), 4), squeeze=False)
    width = 0.8 / max(1, len(cells))
    for ax, task in zip(axes[0], tasks):
        for j, cell in enumerate(cells):
            pts = {s["selector"]: s for s in done if str(s["task"]) == task and s["cell"] == cell}
            xs = [i + j * width for i, n in enumerate(selectors) if n in pts]
            if xs:
                ax.bar(xs, [100 * pts[n]["test_acc_mean"] for n in selectors if n in pts], width,
                       yerr=[100 * pts[n]["test_acc_std"] for n in selectors if n in pts], capsize=2, label=cell)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(selectors))], selectors, rotation=25, fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"task {task}", fontsize=9)
    if cells and len(cells) <= 12:
        axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    paths["accuracy_by_selector"] = folder / "accuracy_by_selector.png"
    fig.savefig(paths["accuracy_by_selector"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in selectors:
        pts = [s for s in done if s["selector"] == name]
        ax.scatter([s["select_queries"] or 0 for s in pts], [100 * s["test_acc_mean"] for s in pts], label=name, s=18)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("LM query rows at selection time (mean per seed)")
    ax.set_ylabel("test accuracy (%)")
    if selectors:
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths["accuracy_vs_lm_calls"] = folder / "accuracy_vs_lm_calls.png"
    fig.savefig(paths["accuracy_vs_lm_calls"], dpi=110)
    plt.close(fig)

    records = sorted((folder / "training").glob("*.json")) if (folder / "training").is_dir() else []
    curves = [json.loads(p.read_text()) for p in records]
    curves = [c for c in curves if c.get("curve")]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for c in curves:
            x, y = np.array(c["curve"], dtype=float).T
            ax.plot(x, y, "-", alpha=0.8, label=f"{c['cell']} s{c['seed']}")
        ax.set_xlabel("step / episode")
        ax.set_ylabel(curves[0].get("curve_label") or "return")
        if len(curves) <= 12:
            ax.legend(fontsize=6)
        fig.tight_layout()
        paths["learning_curves"] = folder / "learning_curves.png"
        fig.savefig(paths["learning_curves"], dpi=110)
        plt.close(fig)
    return paths


def check_budget(est: Mapping[str, Any], budget: int | None, where: str) -> None:
    """Refuse a grid whose estimate is over ``budget`` query rows (pending units only).

    Raises:
        ConfigError: One line with the estimate and the budget.
    """
    if budget is not None and est["total"] > budget:
        raise ConfigError(f"{where}: the estimated {est['total']} LM query rows ({est['pending']} rows pending) "
                          f"exceed --budget {budget}; expected a smaller grid or budget (--dry-run itemises it)")
