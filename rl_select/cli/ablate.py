"""``rl-select ablate``: a resumable grid of runs (trained policies included) into one run folder; the grid
itself is :mod:`rl_select.experiments.ablate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rl_select.cli.common import _friendly, _quiet_libraries, app, console, out
from rl_select.errors import ConfigError


@app.command("ablate")
@_friendly
def ablate_cmd(
    config: Annotated[Path | None, typer.Argument(
        help="Ablation TOML: a base table (run config), a grid table (flat key -> values), selectors, seeds "
             "(docs/ablate.md). "
             "Default with --run-dir: the folder's ablate.toml.")] = None,
    run_dir: Annotated[Path | None, typer.Option(
        "--run-dir", help="Continue this run folder (rows already in its results.csv are skipped).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan and its estimated LM query rows; run nothing.")] = False,
    budget: Annotated[int | None, typer.Option(
        "--budget", metavar="ROWS", help="Refuse a grid whose estimated LM query rows (pending rows) exceed ROWS.")
    ] = None,
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="With --run-dir: run the rows that failed again (each replaces its failed row).")
    ] = False,
) -> None:
    """A grid of runs (cells x seeds x selectors, trained policies included), resumable, into one run folder:
    results.csv, summary.md and plots."""
    import time

    from rl_select.experiments.ablate import Runner, check_budget, done_keys, estimate, load_plan, read_rows, trains
    from rl_select.experiments.rundir import read_status
    from rl_select.lm.cache import check_cache

    if budget is not None and budget < 0:
        raise ConfigError(f"--budget {budget}; expected a number of LM query rows >= 0")
    if config is None:
        if run_dir is None or not (run_dir / "ablate.toml").is_file():
            raise ConfigError("give an ablation CONFIG.toml, or --run-dir DIR of a folder holding ablate.toml")
        config = run_dir / "ablate.toml"
    plan = load_plan(config)
    if run_dir is not None and run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {str(run_dir)!r} is a file; expected a run folder (new or to continue)")
    if run_dir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        run_dir = Path(plan.base.out) / f"{stamp}-ablate-{config.stem}"
    earlier = read_rows(run_dir / "results.csv")
    done = done_keys(earlier, retry_failed=retry_failed)
    est = estimate(plan, done)
    head = (f"{len(plan.cells)} cells x {len(plan.seeds)} seeds x {len(plan.selectors)} selectors = "
            f"{len(plan.units)} rows ({len(plan.units) - est['pending']} done, {est['pending']} to run); estimated "
            f"LM query rows: {est['total']} (training {est['training']}, selection {est['selection']}, "
            f"evaluation {est['evaluation']})")
    if dry_run:
        table = Table(title=escape(f"ablation plan: {config}"), caption="estimated LM query rows, summed over seeds")
        for col in ("cell", "selector", "seeds", "train", "select", "eval"):
            table.add_column(col, justify="left" if col in ("cell", "selector") else "right",
                             overflow="fold", no_wrap=col != "cell", min_width=20 if col == "cell" else None)
        grouped: dict[tuple[str, str], dict[str, Any]] = {}
        for r in est["rows"]:
            g = grouped.setdefault((r["cell_id"], r["selector"]), {**r, "seeds": 0, "train": 0, "select": 0,
                                                                    "eval": 0})
            g["seeds"] += 1
            for key in ("train", "select", "eval"):
                g[key] += r[key]
        for g in grouped.values():
            table.add_row(escape(g["cell"]), escape(g["selector"]), str(g["seeds"]),
                          str(g["train"] or "-"), str(g["select"]), str(g["eval"]))
        out.print(table)
        out.print(escape(head) + " (rows summed over the seeds to run; formulas in docs/ablate.md)", soft_wrap=True)
        check_budget(est, budget, f"ablate config {str(config)!r}")
        return
    check_budget(est, budget, f"ablate config {str(config)!r}")
    for cache in dict.fromkeys(cell.cfg.cache for cell in plan.cells):
        check_cache(cache)  # before any model loads
    _quiet_libraries()
    runner = Runner(plan, run_dir, retry_failed=retry_failed)
    console.print(f"run folder: {escape(str(run_dir))}")
    status = read_status(run_dir) or {}
    if status.get("state") in ("failed", "interrupted", "running"):
        console.print(escape(f"resuming: the last run ({status.get('state')}, {status.get('time')}) stopped: "
                             f"{status.get('error') or 'no reason recorded (killed?)'}"), soft_wrap=True)
    failed_before = sum(r["status"] == "failed" for r in earlier)
    if failed_before and not retry_failed:
        console.print(f"{failed_before} rows failed before and are kept; --retry-failed runs them again")
    console.print(escape(head), soft_wrap=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    failed = 0
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("cells x seeds x selectors", total=est["pending"])

        def on_row(row: dict[str, Any]) -> None:
            nonlocal failed
            failed += row["status"] == "failed"
            what = (f"test {100 * row['test_acc']:.1f}" if row["status"] == "ok" else
                    f"failed: {row['error']}")
            progress.update(bar, advance=1, description=escape(f"{row['cell']} | {row['selector']} seed "
                                                               f"{row['seed']}: {what}"[:120]))

        def on_start(cell, seed: int, name: str) -> None:
            training = trains(name) and not (run_dir / "training" / f"{cell.id}-s{seed}.json").is_file()
            progress.update(bar, description=escape(f"{cell.label} | {name} seed {seed}"
                                                    f"{': training ' + cell.cfg.agent.name if training else ''}"[:120]))

        runner.run(on_row=on_row, on_start=on_start)
    paths = runner.finish()
    out.print(paths["summary"].read_text())
    if failed:
        console.print(f"[yellow]{failed} rows failed[/yellow]; their reasons are in results.csv and summary.md")
    out.print(escape(f"results: {run_dir}/results.csv, summary.md, " + ", ".join(
        p.name for k, p in paths.items() if k != "summary")))
