"""An ablation file parsed and checked: the grid keys, its cells, the selectors entries and seeds (:class:`Plan`,
:func:`load_plan`)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rl_select.errors import ConfigError, RLSelectError, one_of, read_utf8
from rl_select.experiments.config import FLAT_KEYS, RunConfig

if TYPE_CHECKING:
    from rl_select.selectors.tags import SelectorTags

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


# --- a selectors entry ------------------------------------------------------------------------------


def _tags(name: str) -> SelectorTags:
    """The declaration (:class:`~rl_select.selectors.tags.SelectorTags`) of a ``selectors`` entry."""
    from rl_select.selectors import selector_tags

    return selector_tags(name)


def trains(name: str) -> bool:
    """Whether entry ``name`` needs a policy trained in its cell (its declared ``trained``)."""
    return _tags(name).trained


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
        said = "is a folder" if p.is_dir() else "does not exist"
        raise ConfigError(f"{where} {said}; expected a TOML file with [base] and [grid]")
    source = read_utf8(p, where, ConfigError, expected="a TOML file with [base] and [grid]")
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
