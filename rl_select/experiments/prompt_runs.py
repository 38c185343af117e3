"""Offline prompt construction from a run config: ``rl-select select`` / ``prompt`` / ``evaluate --prompt-file``.

* :func:`selection_inputs`: the candidate pool (a file of examples, or the seed's ``n_pool`` rows of train)
  and the seed's validation rows;
* :func:`prompt_file_settings`: the config that scores a saved prompt as it was selected: the file's task
  (always), its scorer and data folder unless the user asked for others;
* :func:`check_prompt_rows`: a saved prompt's demonstrations are rows of the data at hand (by uid and content);
* :func:`evaluate_prompt_file`: the prompt's test accuracy per seed, through the harness's ``run_one``
  (a fixed prompt exactly as ``evaluate --demos`` scores it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_select.data import Splits, load_examples
from rl_select.errors import DataError, PolicyError
from rl_select.experiments.config import RunConfig
from rl_select.experiments.harness import TaskData, run_one
from rl_select.experiments.reproduce import task_reference
from rl_select.lm.cache import check_cache
from rl_select.prompt_file import PromptFile, SavedPromptSelector
from rl_select.tasks import TaskSpec, resolve_task
from rl_select.types import Example

SCORER_FIELDS = ("backend", "model", "dtype", "mode", "length_norm", "calibrate", "base_url")
"""The recorded scorer fields a saved prompt is scored with again, unless the user gives another value."""


@dataclass
class SelectionInputs:
    """What a selection runs on.

    Attributes:
        spec: The task.
        data: The task's data (``None`` when a pool file and ``n_val = 0`` need none).
        pool: The candidate pool.
        val: The validation rows (disjoint from the pool by content).
        example: A test query to show the prompt for (``None`` without data).
        source: Where they came from, for the prompt file.
    """

    spec: TaskSpec
    data: TaskData | None
    pool: tuple[Example, ...]
    val: tuple[Example, ...]
    example: Example | None
    source: dict[str, Any]


def selection_inputs(cfg: RunConfig, seed: int, *, pool_file: str | Path | None = None) -> SelectionInputs:
    """The pool and validation rows of a selection on seed ``seed``.

    Without ``pool_file``, the harness's seeded split: the selector sees the pool and val that ``evaluate
    --selector`` gives it on that seed. With it, the pool is the file's examples (checked against the task)
    and val the seed's ``n_val`` train rows, less any that are in the pool.

    Raises:
        DataError: A bad pool file or data, or split sizes the data cannot give (one line).
    """
    spec = resolve_task(cfg.task)
    n_val = cfg.splits.n_val
    source: dict[str, Any] = {"task": spec.name, "data": cfg.data, "seed": seed, "n_val": n_val,
                              "stratify": cfg.splits.stratify}
    pool: tuple[Example, ...] | None = None
    if pool_file is not None:
        pool = tuple(load_examples(pool_file, spec=spec))
        source.update(pool=str(pool_file), n_pool=len(pool))
        if n_val == 0:
            return SelectionInputs(spec, None, pool, (), None, source)
    data = TaskData.load(cfg)
    if pool is None:
        splits = data.splits(cfg, seed)
        pool = splits.pool
        source.update(pool="train", n_pool=len(pool))
    else:
        splits = data.splits(cfg.updated(n_pool=1), seed)  # val is drawn before the pool: the same rows
    in_pool = {e.content() for e in pool}
    val = tuple(e for e in splits.val if e.content() not in in_pool)
    source["n_val"] = len(val)
    return SelectionInputs(spec, data, pool, val, splits.test[0] if splits.test else None, source)


def default_prompt_path(cfg: RunConfig, task: str, selector: str) -> Path:
    """``<out>/prompts/<UTC time>-<task>-<selector>.json``, made unique (a default never overwrites)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{task}-{selector}")
    base = Path(cfg.out) / "prompts" / f"{stamp}-{safe}"
    path, n = base.with_suffix(".json"), 1
    while path.exists() or path.with_suffix(".txt").exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}.json")
    return path


def prompt_file_settings(
    pf: PromptFile, cfg: RunConfig, *, explicit: Collection[str] = (),
) -> tuple[RunConfig, list[str]]:
    """The config that scores ``pf`` as it was selected.

    The task is the file's (the prompt's template and verbalisers); a ``task`` option that names another
    spec is refused. The scorer is the recorded one, field by field, except the fields the user set (a
    prompt is plain text: scoring it with another LM is allowed, and noted). The data folder, and for a pool
    drawn from train the split sizes, are the recorded ones unless given.

    Returns:
        ``(config, notes)``: notes name each scorer field asked to differ from the record.

    Raises:
        PolicyError: ``task`` names a spec other than the file's.
    """
    if "task" in explicit:
        asked = resolve_task(cfg.task)
        if asked != pf.task:
            raise PolicyError(f"the prompt file is for task {pf.task.name!r} (its own spec) but task {cfg.task!r} "
                              "was asked; expected no --task (the file fixes the task)")
    notes: list[str] = []
    lm = cfg.lm
    if pf.scorer is not None:
        rec = pf.scorer
        keep = {f: getattr(rec, f) for f in SCORER_FIELDS if f not in explicit and getattr(rec, f) is not None}
        notes = [f"{f}: selected with {getattr(rec, f)!r}, scored with {getattr(cfg.lm, f)!r}"
                 for f in SCORER_FIELDS if f in explicit and getattr(cfg.lm, f) != getattr(rec, f)
                 and not (f == "dtype" and "auto" in (getattr(cfg.lm, f), rec.dtype))]
        lm = cfg.lm.replace(**keep, model_fingerprint=None)
    data = cfg.data if "data" in explicit or cfg.data is not None else pf.source.get("data")
    # a pool drawn from train: the same split sizes, so a seed's val rows are the ones the selection saw
    keys = ("n_pool", "n_val", "stratify") if pf.source.get("pool") == "train" else ()
    splits = {k: pf.source[k] for k in keys if k in pf.source and k not in explicit}
    return cfg.updated(task=task_reference(pf.task), lm=lm.to_dict(), data=data, splits=splits), notes


def check_prompt_plan(cfg: RunConfig, data: TaskData) -> None:
    """Refuse, before the model loads, seeds whose splits the data cannot give, and a cache it cannot open."""
    check_cache(cfg.cache)
    for seed in cfg.seeds:
        data.splits(cfg, seed)


def check_prompt_rows(pf: PromptFile, data: TaskData) -> None:
    """Refuse a prompt whose pool was drawn from the task's train data (``source.pool == "train"``) but whose
    demonstrations are not rows of ``data``'s train split (see :meth:`PromptFile.check_uids`); a pool from a
    file of examples is not checked (that file is not at hand).

    Raises:
        PromptFileError: One line naming the uid, the file and what was expected.
    """
    if pf.source.get("pool") == "train":
        pf.check_uids(data.train, data=f"the train data of task {data.spec.name!r}")


def evaluate_prompt_file(cfg: RunConfig, pf: PromptFile, data: TaskData, scorer: Any, *, seed: int,
                         label: str = "prompt-file") -> dict[str, Any]:
    """One result row: ``pf`` on seed ``seed``'s test rows (and, for a fixed prompt, its val rows).

    A fixed prompt is scored as explicit demonstrations (``evaluate --demos``'s path); a per-query file runs
    its stored rule for each test query. Its demonstrations are checked against ``data`` first
    (:func:`check_prompt_rows`).

    Raises:
        DataError: ``data`` is for another task.
        PromptFileError: A demonstration that is not a row of ``data`` (one line).
    """
    if data.spec != pf.task:
        raise DataError(f"the data is for task {data.spec.name!r}, the prompt file for task {pf.task.name!r}; "
                        "expected the file's task")
    check_prompt_rows(pf, data)
    splits: Splits = data.splits(cfg, seed)
    if pf.per_query is None:
        return run_one(label, None, scorer, splits, k=pf.k, seed=seed, demos=list(pf.demos))
    return run_one(label, SavedPromptSelector(pf), scorer, splits, k=pf.k, seed=seed)  # type: ignore[arg-type]
