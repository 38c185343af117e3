"""``docs/results.md`` from the reference experiment's run folder (and any ablation folders): one command.

The reference run folder is an ``rl-select ablate`` folder whose grid is ``task`` x ``train_tasks =
["self", "others"]`` (``configs/reference.toml``): the ``self`` cell of a task holds the baselines and the
policy trained on that task (seen); the ``others`` cell holds the policy trained on the other tasks
(transfer). Everything printed is read from ``results.csv``, the folder's ``ablate.toml`` and the rollout
stores the cells trained from; nothing is typed in.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl_select.errors import ConfigError, not_a_run_folder
from rl_select.experiments.ablate import Plan, load_plan, read_rows, summarise, summary_markdown
from rl_select.experiments.rundir import read_status
from rl_select.selectors import SELECTORS, selector_tags


def label_free_baselines() -> list[str]:
    """Registered selectors that need no policy and never read a validation label (``global_entropy`` reads
    val's texts only), in registry order: the declarations' ``not trained and label_free``."""
    return [n for n, cls in SELECTORS.items() if not cls.tags.trained and cls.tags.label_free]


@dataclass(frozen=True)
class Line:
    """One line of the headline table: a selector entry of the seen (``self``) or transfer (``others``) cells."""

    label: str
    selector: str
    cells: str  # "self" | "others"
    labels: str  # what the selector reads at selection time


def _lines(selectors: Sequence[str]) -> list[Line]:
    """A line per untrained entry, two per trained one (seen, transfer); those reading no val label first."""
    out = []
    for name in selectors:
        tags = selector_tags(name)
        if tags.trained:
            out.append(Line(f"{name} (seen)", name, "self", tags.labels()))
            out.append(Line(f"{name} (transfer)", name, "others", tags.labels()))
        else:
            out.append(Line(name, name, "self", tags.labels()))
    free = [x for x in out if selector_tags(x.selector).label_free]
    return free + [x for x in out if x not in free]


def _word(value: Any, task: str) -> str:
    """``self`` or ``others`` for a row's resolved ``train_tasks``."""
    if value in (None, "", "None"):
        return "self"
    tasks = value if isinstance(value, list) else [value]
    return "self" if list(tasks) == [task] else "others"


def _per_seed(rows: Sequence[Mapping[str, Any]], line: Line, tasks: Sequence[str]
              ) -> dict[str, dict[int, Mapping[str, Any]]]:
    """``{task: {seed: row}}`` of the ok rows of one line."""
    out: dict[str, dict[int, Mapping[str, Any]]] = {t: {} for t in tasks}
    for r in rows:
        task = str(r.get("task"))
        if r["selector"] != line.selector or r["status"] != "ok" or task not in out:
            continue
        if _word(r.get("train_tasks"), task) != line.cells and selector_tags(line.selector).trained:
            continue
        out[task].setdefault(int(r["seed"]), r)
    return out


def _fmt(values: Sequence[float], n_seeds: int = 0) -> str:
    """``mean ± std`` in %, with ``(n of N seeds)`` when fewer than the plan's ``n_seeds`` are done."""
    if not values:
        return "-"
    a = 100 * np.asarray(values, dtype=float)
    text = f"{a.mean():.1f} ± {a.std(ddof=1):.1f}" if len(a) > 1 else f"{a.mean():.1f}"
    return text + (f" ({len(a)} of {n_seeds} seeds)" if len(a) < n_seeds else "")


def headline(rows: Sequence[Mapping[str, Any]], plan: Plan) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The headline Markdown table and, per line label, its figures (for the targets).

    The average column averages the tasks within each seed, then gives mean ± std over the seeds that
    every task has.
    """
    tasks = list(plan.grid.get("task", [plan.base.task]))
    head = ["| selector | labels read at selection | LM rows at selection (mean per task) | "
            + " | ".join(tasks) + " | average |", "|---|---|---|" + "---|" * (len(tasks) + 1)]
    figures: dict[str, dict[str, Any]] = {}
    for line in _lines(plan.selectors):
        by = _per_seed(rows, line, tasks)
        cols = [_fmt([float(r["test_acc"]) for r in by[t].values()], len(plan.seeds)) for t in tasks]
        common = sorted(set.intersection(*(set(by[t]) for t in tasks))) if tasks else []
        avg = [float(np.mean([float(by[t][s]["test_acc"]) for t in tasks])) for s in common]
        sel = [float(r["select_queries"]) for t in tasks for r in by[t].values() if r.get("select_queries") is not None]
        rows_mean = float(np.mean(sel)) if sel else None
        figures[line.label] = {"avg": float(np.mean(avg)) if avg else None, "avg_seeds": avg,
                               "select_rows": rows_mean, "complete": len(common) > 0,
                               "per_task": {t: [float(r["test_acc"]) for r in by[t].values()] for t in tasks}}
        head.append(f"| {line.label} | {line.labels} | {'-' if rows_mean is None else f'{rows_mean:,.0f}'} | "
                    + " | ".join(cols) + f" | {_fmt(avg, len(plan.seeds))} |")
    return head, figures


def training_rows_by_task(plan: Plan) -> dict[str, int]:
    """LM query rows spent collecting each task's rollout store (``lm_queries`` summed over its episodes)."""
    from rl_select.experiments.collection import store_path

    out: dict[str, int] = {}
    for cell in plan.cells:
        if not plan.trains:
            break
        for task in cell.cfg.train_tasks:
            path = store_path(cell.cfg.updated(seeds=[plan.seeds[0]]), task)
            if task in out or not path.is_file():
                continue
            total = 0
            with path.open() as fh:
                for line in fh:
                    if line.strip():
                        total += int(json.loads(line).get("lm_queries") or 0)
            out[task] = total
    return out


def machine() -> str:
    """CPU model, cores and whether it has native bf16 (``/proc/cpuinfo``)."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        for line in info.splitlines():
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, native bf16: {'yes' if 'avx512_bf16' in flags else 'no'}"


def _base_cell(cell: str) -> str:
    """The ``task`` / ``train_tasks`` part of a cell label (``"task=trec, train_tasks=others"``); ``train_tasks=self``
    is the default, so ``"task=trec, train_tasks=self"`` reads ``"task=trec"`` (a baselines-only grid's cells)."""
    return ", ".join(p for p in str(cell).split(", ")
                     if p.split("=")[0] in ("task", "train_tasks") and p != "train_tasks=self")


def lever_table(rows: Sequence[Mapping[str, Any]], plan: Plan,
                reference: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """Per selector and value of the grid keys other than ``task`` / ``train_tasks``: test accuracy per task and
    averaged over the tasks (within each seed, then mean ± std over seeds).

    ``reference`` rows (the reference run's) of the same selectors and the same ``task`` / ``train_tasks`` cells
    are shown first, as ``<selector> (reference)`` with their own values of the levers, so each lever is read
    against the setting it replaces."""
    tasks = list(plan.grid.get("task", [plan.base.task]))
    levers = [k for k in plan.grid if k not in ("task", "train_tasks")]
    ok = [r for r in rows if r["status"] == "ok" and str(r.get("task")) in tasks]
    cells = {(r["selector"], _base_cell(r["cell"])) for r in ok}
    ref = [dict(r, selector=f"{r['selector']} (reference)") for r in reference
           if r["status"] == "ok" and (r["selector"], _base_cell(r["cell"])) in cells]
    groups: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in [*ref, *ok]:
        key = (r["selector"], *(json.dumps(r.get(k)) for k in levers))
        groups.setdefault(key, {t: {} for t in tasks})[str(r["task"])][int(r["seed"])] = float(r["test_acc"])
    head = ["| selector | " + " | ".join(levers) + " | " + " | ".join(tasks) + " | average |",
            "|---|" + "---|" * len(levers) + "---|" * (len(tasks) + 1)]
    for key, by in groups.items():
        common = sorted(set.intersection(*(set(by[t]) for t in tasks)))
        avg = [float(np.mean([by[t][s] for t in tasks])) for s in common]
        head.append(f"| {key[0]} | " + " | ".join(key[1:]) + " | "
                    + " | ".join(_fmt(list(by[t].values()), len(plan.seeds)) for t in tasks)
                    + f" | {_fmt(avg, len(plan.seeds))} |")
    return head


def run_state(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown bullets: how the folder's last run ended (``status.json``), and its failed rows with their reasons."""
    status = read_status(run_dir)
    out = []
    if status is not None and status.get("state") != "done":
        reason = f": {status['error']}" if status.get("error") else " (no reason recorded: killed?)"
        out.append(f"- Run state: **{status.get('state')}** at {status.get('time')}{reason}; resume with "
                   f"`rl-select ablate --run-dir {run_dir}`.")
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        shown = "; ".join(f"{r['cell']} | {r['selector']} seed {r['seed']}: {r['error']}" for r in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        out.append(f"- Failed rows: {len(failed)} ({shown}{more}); `rl-select ablate --run-dir {run_dir} "
                   "--retry-failed` runs them again.")
    return out


def render(run_dir: Path, ablations: Sequence[Path] = ()) -> str:
    """The whole ``docs/results.md`` text."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(not_a_run_folder(run_dir, "results.csv", "an ablate run folder (ablate --run-dir DIR)"))
    if not (run_dir / "ablate.toml").is_file() and (run_dir / "results.json").is_file():
        raise ConfigError(f"{str(run_dir)!r} is a baselines or evaluate run folder; expected an ablate run folder "
                          f"(for this one: rl-select report DIR)")
    status = read_status(run_dir)
    if not (run_dir / "results.csv").is_file() and status is not None and status.get("state") != "done":
        why = str(status.get("error") or "no reason recorded (killed?)")
        raise ConfigError(f"{str(run_dir)!r} has no results: its run stopped ({status.get('state')}, "
                          f"{status.get('time')}): {why[:90]}; resume it with rl-select ablate --run-dir DIR")
    if not (run_dir / "ablate.toml").is_file() or not (run_dir / "results.csv").is_file():
        raise ConfigError(f"{str(run_dir)!r} is not an ablate run folder with results; expected ablate.toml and "
                          "results.csv (run `rl-select ablate configs/reference.toml --run-dir DIR` first)")
    plan = load_plan(run_dir / "ablate.toml")
    rows = read_rows(run_dir / "results.csv")
    table, figures = headline(rows, plan)
    train = training_rows_by_task(plan)
    done = {(r["cell_id"], int(r["seed"]), r["selector"]) for r in rows}
    pending = sum(1 for c, s, n in plan.units if (c.id, s, n) not in done)
    lm = sum(int(float(r.get(k) or 0)) for r in rows for k in ("select_queries", "eval_queries"))
    seconds = sum(float(r.get("seconds") or 0) for r in rows)
    cfg = plan.base
    lines = [
        "# Results: the reference experiment",
        "",
        "Regenerate this file: `rl-select results " + str(run_dir)
        + "".join(f" --ablation {a}" for a in ablations) + " --out docs/results.md`.",
        "",
        f"- Commands: `rl-select ablate configs/reference.toml --run-dir {run_dir}` (resumable: rerun it to "
        "continue), then the line above. The config is the run folder's `ablate.toml`.",
        f"- Protocol: {cfg.lm.model} LM, calibrate={cfg.lm.calibrate}, mode={cfg.lm.mode}; k={cfg.k}; candidate "
        f"pool {cfg.splits.n_pool}, reward-validation {cfg.splits.n_val}, test {cfg.splits.n_test} held-out rows; "
        f"seeds {plan.seeds}. Policies: agent {cfg.agent.name}, {cfg.agent.episodes} random episodes per task "
        f"(N={cfg.n_candidates} candidates from {cfg.splits.train_pool} train rows, rollout seed "
        f"{cfg.rollout_seed}), feature set {cfg.mdp.feature_set}, reward {cfg.mdp.reward}, STOP "
        f"{'allowed' if cfg.mdp.allow_stop else 'off'}, {cfg.agent.train_steps} gradient steps, CQL weight "
        f"{cfg.agent.cql_alpha}.",
        f"- Machine: {machine()}.",
        f"- Rows: {len(rows)} of {len(plan.units)} in results.csv ({pending} still to run); LM query rows at "
        f"selection + evaluation {lm:,} (cache hits included); training (rollouts) {sum(train.values()):,}; wall "
        f"time of the rows {seconds / 60:.1f} min (rollout collection not included).",
        *run_state(run_dir, rows),
        "",
        "## Headline: test accuracy (%), mean ± std over seeds",
        "",
        "*seen*: the policy trained on that task's rollouts; *transfer*: trained on the other tasks' rollouts only "
        "(it never saw the task). The labelled validation split is read only by the search selectors.",
        "",
        *table,
        "",
        "## Every cell",
        "",
        summary_markdown(summarise(rows)),
    ]
    for folder in ablations:
        folder = Path(folder)
        sub_rows = read_rows(folder / "results.csv")
        title = folder.name
        if (folder / "ablate.toml").is_file():
            first = [ln for ln in (folder / "ablate.toml").read_text().splitlines() if ln.strip()][:1]
            title = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else title
        sub_plan = load_plan(folder / "ablate.toml")
        lines += [f"## {title}", "", f"Run folder `{folder}`; command `rl-select ablate {folder / 'ablate.toml'} "
                  f"--run-dir {folder}`. Test accuracy (%), mean ± std over seeds:", "",
                  *lever_table(sub_rows, sub_plan, rows), "", *run_state(folder, sub_rows)]
        lines += [""] if lines[-1] else []
    given = {Path(a).name for a in ablations}
    pending = sorted(p for p in Path("configs").glob("ablate_*.toml") if p.stem != "ablate_example"
                     and p.stem not in given)
    if pending:
        lines += ["## Ablations not run yet", "",
                  *[f"- `rl-select ablate {p} --run-dir runs/{p.stem}`: "
                    f"{p.read_text().splitlines()[0].lstrip('# ')}" for p in pending], ""]
    return "\n".join(lines).rstrip() + "\n"
