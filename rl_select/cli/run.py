"""Commands that evaluate and report: ``tasks``, ``baselines``, ``evaluate`` (a selector, a policy, explicit demos or
a prompt file), ``report`` and ``results``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rl_select.cli.common import (
    EXECUTOR,
    LM,
    RUN,
    ForceOpt,
    PromptFileOpt,
    _friendly,
    _quiet_libraries,
    _worker_lm,
    app,
    config_command,
    console,
    out,
)
from rl_select.errors import ConfigError, RLSelectError

# --- running a grid --------------------------------------------------------------------------------


def _load_policies(cfg, explicit: frozenset[str], force: bool):
    """The run's policies as selector rows (fixed-prompt and per-query files, or the shipped names), and the config
    rebuilt for the scorer (and a fixed-prompt policy's task) they were trained with."""
    from rl_select.experiments.reproduce import policy_rows

    return policy_rows(cfg.policy or [], cfg, explicit=explicit, force=force)


def _run(cfg, command: str, *, explicit: frozenset[str] = frozenset(), force: bool = False, demos=None,
         label: str = "explicit") -> Path:
    """Load data and model, run the grid with a progress bar, write the run folder, print the table."""
    from rl_select.experiments.executors import LocalExecutor, RayExecutor
    from rl_select.experiments.harness import EvalWorker, TaskData, build_scorer, check_plan, run_grid, summarise
    from rl_select.experiments.report import plot_summary, summary_table, window_line
    from rl_select.experiments.rundir import RunDir

    _quiet_libraries()
    if cfg.executor.kind == "ray" and demos is not None:
        raise ConfigError("--demos runs in process; drop --executor ray")
    if demos is None:
        cfg = _load_policies(cfg, explicit, force)
    data = TaskData.load(cfg)
    if demos is not None:
        demos = demos(data)
        cfg = cfg.updated(k=len(demos))
    check_plan(cfg, data, demos=demos)  # bad input fails here, before the model loads
    run = RunDir.create(cfg, command)
    with run.recording():
        console.print(f"run folder: {escape(str(run.path))}")
        scorer = None
        if cfg.executor.kind == "ray":
            console.print(escape(f"executor: Ray, {cfg.executor.workers} workers, {_worker_lm(cfg)}; "
                                 f"task {data.spec.name}: train {len(data.train)}, test {len(data.test)}"))
        else:
            with console.status(escape(f"loading model {cfg.lm.model!r} ...")):
                scorer = build_scorer(cfg, data.spec)
            lm = scorer.scorer_spec or cfg.lm
            console.print(escape(
                f"model {lm.model} ({lm.backend}, {lm.dtype}, {getattr(scorer, 'device', lm.base_url or '-')}); "
                f"task {data.spec.name}: train {len(data.train)}, test {len(data.test)}"
            ))
        n_jobs = len(cfg.seeds) * (1 if demos is not None else len(cfg.selectors.names))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task("selectors x seeds", total=n_jobs)

            def on_row(row: dict[str, Any]) -> None:
                run.add_row(row)
                progress.update(bar, advance=1, description=escape(f"{row['selector']} seed {row['seed']}: "
                                                                   f"test {100 * row['test_acc']:.1f}"))

            executor = RayExecutor(EvalWorker, cfg) if scorer is None else \
                LocalExecutor(EvalWorker(cfg, data, scorer, demos=demos, label=label))
            rows, stats, fingerprint = run_grid(cfg, executor, names=None if demos is None else [label], on_row=on_row)
            if scorer is None:
                cache_info = {"path": cfg.cache or "default", "hits": stats.cache_hits, "misses": stats.cache_misses}
            else:
                cache = scorer.cache
                cache_info = None if cache is None else {"path": str(cache.path), "hits": cache.hits,
                                                         "misses": cache.misses}
        summary = summarise(rows)
        extra = {"config": cfg.to_dict(), "lm_calls": stats.as_dict(), "cache": cache_info,
                 "model_fingerprint": fingerprint}
        run.finish(summary, extra)
        title = _title(cfg, data.spec.name, rows[0]["n_test"])
        plot_summary(summary, rows, run.path / "test_accuracy.png", title)
        out.print(summary_table(summary, escape(title)))
        s = stats
        out.print(
            f"LM: {s.queries} query rows ({s.cache_hits} cache hits, {s.cache_misses} misses), "
            f"{s.prefix_forwards} prefixes, {s.forward_tokens} tokens, {s.seconds:.1f} s in the LM"
        )
        if window_line(s):
            out.print(escape(window_line(s)))
        out.print(escape(f"results: {run.path}/summary.csv, results.json, test_accuracy.png"))
        return run.path


def _title(cfg, task: str, n_test: Any) -> str:
    return (f"{task}, k={cfg.k}, pool {cfg.splits.n_pool}, val {cfg.splits.n_val}, test {n_test}, "
            f"seeds {cfg.seeds}, {cfg.lm.model}{' calibrated' if cfg.lm.calibrate else ''}")


@app.command("tasks")
@_friendly
def tasks_cmd() -> None:
    """List the built-in tasks, their labels, verbalisers and templates."""
    from rl_select.tasks import BUILTIN_TASKS

    table = Table(title="built-in tasks")
    for col in ("task", "labels -> words", "template", "hub"):
        table.add_column(col)
    for spec in BUILTIN_TASKS.values():
        words = ", ".join(f"{lab}->{spec.verbalizers[lab]}" for lab in spec.labels)
        table.add_row(spec.name, escape(words), escape(repr(spec.template)), spec.hf.path if spec.hf else "-")
    out.print(table)


@config_command("baselines", RUN, LM, ("selectors", "policy"), EXECUTOR)
def baselines_cmd(cfg, explicit: frozenset[str], force: ForceOpt = False) -> None:
    """Every baseline selector on a task over seeds: a table, saved as CSV/JSON (+ a plot) in a run folder."""
    _run(cfg, "baselines", explicit=explicit, force=force)


@config_command("evaluate", RUN, LM, ("policy",), EXECUTOR)
def evaluate_cmd(
    cfg, explicit: frozenset[str],
    selector: Annotated[str | None, typer.Option(help="A selector name (see `baselines`).")] = None,
    demos: Annotated[str | None, typer.Option(
        help="Explicit ordered demos: a JSONL/CSV file of examples, or comma-separated row numbers of the "
             "train file (1-based, as in uids 'train.jsonl:N').")] = None,
    prompt_file: PromptFileOpt = None,
    force: ForceOpt = False,
) -> None:
    """Test accuracy (mean ± std over seeds) of one selector, a policy, an explicit ordered demo list, or a
    saved prompt file (exactly the prompt `select` wrote: its task, demonstrations and scorer)."""
    if sum(x is not None for x in (selector, demos, cfg.policy, prompt_file)) != 1:
        raise ConfigError("give exactly one of --selector NAME, --policy FILE, --demos FILE|ROWS or "
                          "--prompt-file FILE")
    if prompt_file is not None:
        _evaluate_prompt_file(cfg, explicit, prompt_file)
        return
    cfg = cfg.updated(selectors={"names": [selector] if selector else []})
    if demos is None:
        _run(cfg, "evaluate", explicit=explicit, force=force)
        return

    def pick(data) -> list:
        from rl_select.data import load_examples

        if Path(demos).suffix in (".jsonl", ".csv", ".parquet") or Path(demos).is_file():
            return load_examples(demos, spec=data.spec)
        try:
            rows = [int(s) for s in demos.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--demos {demos!r} is neither a file nor comma-separated row numbers") from None
        bad = [r for r in rows if not 1 <= r <= len(data.train)]
        if bad:
            raise ConfigError(f"--demos rows {bad} are outside the train file's rows 1..{len(data.train)}")
        return [data.train[r - 1] for r in rows]

    def checked(data) -> list:
        chosen = pick(data)
        if "k" in explicit and cfg.k != len(chosen):
            raise ConfigError(f"k={cfg.k} but --demos gives {len(chosen)} demonstrations; expected no k (the demos "
                              "fix it) or the same number")
        return chosen

    _run(cfg, "evaluate", demos=checked, label="explicit")


def _evaluate_prompt_file(cfg, explicit: frozenset[str], path: Path) -> Path:
    """Score a saved prompt on the test split (per seed), with the task and scorer it was selected with."""
    from rl_select.experiments.harness import TaskData, build_scorer, summarise
    from rl_select.experiments.prompt_runs import (
        check_prompt_plan,
        check_prompt_rows,
        evaluate_prompt_file,
        prompt_file_settings,
    )
    from rl_select.experiments.report import plot_summary, summary_table, window_line
    from rl_select.experiments.rundir import RunDir
    from rl_select.prompt_file import PromptFile

    _quiet_libraries()
    if cfg.executor.kind == "ray":
        raise ConfigError("--prompt-file runs in process; drop --executor ray")
    pf = PromptFile.load(path)
    if "k" in explicit and cfg.k != pf.k:
        raise ConfigError(f"k={cfg.k} but prompt file {str(path)!r} holds {pf.k} demonstrations per prompt; expected "
                          "no k (the file fixes it)")
    cfg, notes = prompt_file_settings(pf, cfg, explicit=explicit)
    cfg = cfg.updated(k=pf.k, selectors={"names": []})
    data = TaskData.load(cfg)
    check_prompt_plan(cfg, data)  # bad input fails here, before the model loads
    check_prompt_rows(pf, data)
    run = RunDir.create(cfg, "evaluate")
    with run.recording():
        console.print(f"run folder: {escape(str(run.path))}")
        with console.status(escape(f"loading model {cfg.lm.model!r} ...")):
            scorer = build_scorer(cfg, data.spec)
        lm = getattr(scorer, "scorer_spec", None)
        diff = pf.scorer.differences(lm) if pf.scorer is not None and lm is not None else []
        for note in notes or diff:
            console.print(escape(f"warning: the prompt was selected with another scorer ({note})"), highlight=False)
        lm = lm or cfg.lm
        console.print(escape(f"model {lm.model} ({lm.backend}, {lm.dtype}); prompt file {path}: {pf.kind}, "
                             f"k={pf.k}, selected by {pf.selector.get('name', '?')}; task {data.spec.name}: "
                             f"test {len(data.test)}"))
        before = scorer.stats.copy()
        rows = []
        for seed in cfg.seeds:
            row = evaluate_prompt_file(cfg, pf, data, scorer, seed=seed)
            run.add_row(row)
            rows.append(row)
            console.print(escape(f"seed {seed}: test {100 * row['test_acc']:.1f} on {row['n_test']} rows"))
        stats = scorer.stats - before
        cache = getattr(scorer, "cache", None)
        summary = summarise(rows)
        run.finish(summary, {"config": cfg.to_dict(), "lm_calls": stats.as_dict(), "prompt_file": str(path),
                             "prompt": {"kind": pf.kind, "selector": dict(pf.selector), "val_accuracy": pf.val_accuracy,
                                        "demos": [d.uid for d in pf.demos]},
                             "cache": None if cache is None else {"path": str(cache.path), "hits": cache.hits,
                                                                  "misses": cache.misses},
                             "model_fingerprint": scorer.fingerprint})
        title = _title(cfg, data.spec.name, rows[0]["n_test"])
        plot_summary(summary, rows, run.path / "test_accuracy.png", title)
        out.print(summary_table(summary, escape(title)))
        out.print(f"LM: {stats.queries} query rows ({stats.cache_hits} cache hits, {stats.cache_misses} misses), "
                  f"{stats.prefix_forwards} prefixes, {stats.forward_tokens} tokens, {stats.seconds:.1f} s in the LM")
        if window_line(stats):
            out.print(escape(window_line(stats)))
        out.print(escape(f"results: {run.path}/summary.csv, results.json, test_accuracy.png"))
        return run.path



# --- reading finished runs ----------------------------------------------------------------------------


@app.command("report")
@_friendly
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `baselines` or `evaluate`.")],
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table instead.")] = False,
) -> None:
    """Print the summary table of a finished run from its folder (no model needed)."""
    from rl_select.errors import DataError, not_a_run_folder
    from rl_select.experiments.report import summary_markdown, summary_table
    from rl_select.experiments.rundir import read_status

    if run_dir.exists() and not run_dir.is_dir():
        raise DataError(not_a_run_folder(run_dir, "results.json", "a folder written by baselines or evaluate"))
    path = run_dir / "results.json"
    if not path.is_file() and (run_dir / "ablate.toml").is_file():
        raise DataError(f"{str(run_dir)!r} is an ablate run folder; expected one written by baselines or evaluate "
                        f"(for this one: rl-select results DIR)")
    status = read_status(run_dir)
    if not path.is_file() and status is not None and status.get("state") != "done":
        why = str(status.get("error") or "no reason recorded (killed?)")
        raise DataError(f"run folder {str(run_dir)!r} did not finish ({status.get('state')}, {status.get('time')}): "
                        f"{why[:100]}")
    if not path.is_file():
        raise DataError(f"{str(run_dir)!r} has no results.json; expected a finished run folder")
    try:
        doc = json.loads(path.read_text())
        summary, cfg = doc["summary"], doc["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{str(path)!r} is not a run result ({exc}); expected results.json from rl-select") from None
    if markdown:
        print(summary_markdown(summary))
        return
    n_test = doc["rows"][0]["n_test"] if doc.get("rows") else "?"
    try:
        from rl_select.experiments.config import RunConfig

        title = _title(RunConfig.from_dict(cfg, where=str(path)), cfg["task"], n_test)
    except RLSelectError as exc:
        raise DataError(f"{str(path)!r} holds a config this rl_select cannot read ({exc})") from None
    out.print(summary_table(summary, escape(title)))


@app.command("results")
@_friendly
def results_cmd(
    run_dir: Annotated[Path, typer.Argument(help="The reference experiment's ablate run folder.")],
    ablation: Annotated[list[Path] | None, typer.Option(
        "--ablation", help="An ablation run folder to append (its summary); repeatable.")] = None,
    out_file: Annotated[Path, typer.Option("--out", help="The Markdown file to write.")] = Path("docs/results.md"),
) -> None:
    """docs/results.md from the reference run folder: headline table, targets, every cell, ablations."""
    from rl_select.experiments.results import render

    text = render(run_dir, ablation or [])
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text(text)
    out.print(escape(text[: text.find("## Every cell")].rstrip()))
    out.print(escape(f"written: {out_file}"))
