"""``rl-select``: the command line.

Commands: ``tasks`` (list built-in tasks), ``evaluate`` (one selector or an explicit ordered demo list
over seeds), ``baselines`` (every selector on a task, as a table in a run folder), ``bench scorer``.
Errors a user can fix print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rl_select.errors import ConfigError, RLSelectError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Choose few-shot demonstrations for a frozen LLM.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (ratios measured side by side in one run).")
app.add_typer(bench_app, name="bench")
console = Console(stderr=True)
out = Console()


def _friendly(fn):
    """Turn RLSelectError into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RLSelectError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted: results measured so far are in the run folder and the score cache")
            raise typer.Exit(130) from None

    return wrapper


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (no source line), e.g. a server that needs one prompt per request."""
    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False, soft_wrap=True)


def _quiet_libraries() -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    warnings.showwarning = _one_line_warning


ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML run config; flags override it.")]
TaskOpt = Annotated[str | None, typer.Option(help="Built-in task name or a JSON/TOML task spec file.")]
DataOpt = Annotated[str | None, typer.Option(
    help="Folder with train/test files (default: ../shared/data/TASK, else the hub).")]
ModelOpt = Annotated[str | None, typer.Option(
    help="'bundled' (SmolLM2-135M-Instruct), a folder, a hub id, or with --backend openai the served model name.")]
BackendOpt = Annotated[str | None, typer.Option(
    help="hf (in process) | openai (a /v1/completions server; key from RL_SELECT_API_KEY or OPENAI_API_KEY).")]
BaseUrlOpt = Annotated[str | None, typer.Option(help="The OpenAI-compatible server, e.g. http://127.0.0.1:8000.")]
DtypeOpt = Annotated[str | None, typer.Option(help="auto | bf16 | fp32 | fp16 (auto: bf16 only where the CPU has it).")]
KOpt = Annotated[int | None, typer.Option("-k", "--k", help="Number of demonstrations.")]
SeedsOpt = Annotated[str | None, typer.Option(help="Comma-separated seeds, e.g. 0,1,2.")]
PoolOpt = Annotated[int | None, typer.Option(help="Candidate pool size per seed.")]
ValOpt = Annotated[int | None, typer.Option(help="Reward-validation size per seed.")]
TestOpt = Annotated[int | None, typer.Option(help="Test rows (0: the whole test file).")]
CalOpt = Annotated[bool | None, typer.Option("--calibrate/--no-calibrate", help="Contextual calibration.")]
ModeOpt = Annotated[str | None, typer.Option(help="direct | channel.")]
CacheOpt = Annotated[str | None, typer.Option(help="Score cache file ('none' disables; default ~/.cache/rl_select).")]
OutOpt = Annotated[str | None, typer.Option(help="Parent folder of run folders.")]
ExecutorOpt = Annotated[str | None, typer.Option(
    help="local (in process) | ray (units on Ray actors; same results, store and cache).")]
RayAddressOpt = Annotated[str | None, typer.Option(
    help="Ray cluster: auto | ray://host:10001 (default $RL_SELECT_RAY_ADDRESS, $RAY_ADDRESS, else a local Ray).")]
WorkersOpt = Annotated[int | None, typer.Option(help="Ray actors (each loads the LM).")]
PolicyOpt = Annotated[str | None, typer.Option(
    help="Trained policies (.safetensors, comma-separated) to add as selectors 'policy:<agent>'.")]


def _worker_lm(cfg) -> str:
    """How each Ray worker gets its LM, for the start-up line."""
    if cfg.backend == "openai":
        return f"each a client of {cfg.base_url or '$RL_SELECT_BASE_URL'} ({cfg.model})"
    return f"each loading {cfg.model!r}"


def _run(cfg, command: str, *, demos=None, label: str = "explicit") -> Path:
    """Load data and model, run the grid with a progress bar, write the run folder, print the table."""
    from rl_select.experiments.harness import TaskData, build_scorer, check_plan, run_grid, summarise
    from rl_select.experiments.report import plot_summary, summary_table
    from rl_select.experiments.rundir import RunDir

    _quiet_libraries()
    if cfg.executor == "ray" and demos is not None:
        raise ConfigError("--demos runs in process; drop --executor ray")
    if cfg.policy and demos is None:
        from rl_select.policy import SelectorPolicy

        for path in _names(cfg.policy):  # one row per policy, named after the agent that trained it
            agent = SelectorPolicy.load(path).training.get("agent", "policy")
            name = f"policy:{agent}"
            while name in cfg.selectors and cfg.selector_args.get(name, {}).get("path") != path:
                name += "'"
            if name not in cfg.selectors:
                cfg.selectors = [*cfg.selectors, name]
            cfg.selector_args = {**cfg.selector_args, name: {"path": path}}
    data = TaskData.load(cfg)
    if demos is not None:
        demos = demos(data)
        cfg.k = len(demos)
    check_plan(cfg, data, demos=demos)  # bad input fails here, before the model loads
    run = RunDir.create(cfg, command)
    console.print(f"run folder: {run.path}")
    scorer = None
    if cfg.executor == "ray":
        console.print(f"executor: Ray, {cfg.workers} workers, {_worker_lm(cfg)}; "
                      f"task {data.spec.name}: train {len(data.train)}, test {len(data.test)}")
    else:
        with console.status(f"loading model {cfg.model!r} ..."):
            scorer = build_scorer(cfg, data.spec)
        console.print(
            f"model {cfg.model} ({cfg.backend}, {str(getattr(scorer, 'dtype', '-')).removeprefix('torch.')}, "
            f"{getattr(scorer, 'device', cfg.base_url or '-')}); "
            f"task {data.spec.name}: train {len(data.train)}, test {len(data.test)}"
        )
    n_jobs = len(cfg.seeds) * (1 if demos is not None else len(cfg.selectors))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("selectors x seeds", total=n_jobs)

        def on_row(row: dict[str, Any]) -> None:
            run.add_row(row)
            progress.update(bar, advance=1, description=f"{row['selector']} seed {row['seed']}: "
                            f"test {100 * row['test_acc']:.1f}")

        if scorer is None:
            from rl_select.experiments.distributed import run_grid_ray

            rows, stats, fingerprint = run_grid_ray(cfg, address=cfg.ray_address or None, workers=cfg.workers,
                                                    on_row=on_row)
            cache_info = {"path": cfg.cache or "default", "hits": stats.cache_hits, "misses": stats.cache_misses}
        else:
            rows = run_grid(cfg, data, scorer, on_row=on_row, demos=demos, label=label)
            stats, fingerprint, cache = scorer.stats, scorer.fingerprint, scorer.cache
            cache_info = None if cache is None else {"path": str(cache.path), "hits": cache.hits,
                                                     "misses": cache.misses}
    summary = summarise(rows)
    extra = {"config": cfg.to_dict(), "lm_calls": stats.as_dict(), "cache": cache_info,
             "model_fingerprint": fingerprint}
    run.finish(summary, extra)
    title = (f"{data.spec.name}, k={cfg.k}, pool {cfg.n_pool}, val {cfg.n_val}, test {rows[0]['n_test']}, "
             f"seeds {cfg.seeds}, {cfg.model}{' calibrated' if cfg.calibrate else ''}")
    plot_summary(summary, rows, run.path / "test_accuracy.png", title)
    out.print(summary_table(summary, title))
    s = stats
    out.print(
        f"LM: {s.queries} query rows ({s.cache_hits} cache hits, {s.cache_misses} misses), "
        f"{s.prefix_forwards} prefixes, {s.forward_tokens} tokens, {s.seconds:.1f} s in the LM"
    )
    out.print(f"results: {run.path}/summary.csv, results.json, test_accuracy.png")
    return run.path


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
        table.add_row(spec.name, words, repr(spec.template), spec.hf.path if spec.hf else "-")
    out.print(table)


@app.command("baselines")
@_friendly
def baselines_cmd(
    config: ConfigOpt = None, task: TaskOpt = None, data: DataOpt = None, model: ModelOpt = None,
    dtype: DtypeOpt = None, k: KOpt = None, seeds: SeedsOpt = None, n_pool: PoolOpt = None, n_val: ValOpt = None,
    n_test: TestOpt = None, calibrate: CalOpt = None, mode: ModeOpt = None, cache: CacheOpt = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="Parent folder of run folders.")] = None,
    selectors: Annotated[str | None, typer.Option(help="Comma-separated selector names.")] = None,
    policy: PolicyOpt = None, backend: BackendOpt = None, base_url: BaseUrlOpt = None,
    executor: ExecutorOpt = None, ray_address: RayAddressOpt = None, workers: WorkersOpt = None,
) -> None:
    """Every baseline selector on a task over seeds: a table, saved as CSV/JSON (+ a plot) in a run folder."""
    from rl_select.experiments.config import load_config

    cfg = load_config(config, dict(
        task=task, data=data, model=model, dtype=dtype, k=k, seeds=_seeds(seeds), n_pool=n_pool, n_val=n_val,
        n_test=n_test, calibrate=calibrate, mode=mode, cache=cache, out=out_dir, selectors=_names(selectors),
        policy=policy, backend=backend, base_url=base_url, executor=executor, ray_address=ray_address,
        workers=workers,
    ))
    _run(cfg, "baselines")


@app.command("evaluate")
@_friendly
def evaluate_cmd(
    config: ConfigOpt = None, task: TaskOpt = None, data: DataOpt = None, model: ModelOpt = None,
    dtype: DtypeOpt = None, k: KOpt = None, seeds: SeedsOpt = None, n_pool: PoolOpt = None, n_val: ValOpt = None,
    n_test: TestOpt = None, calibrate: CalOpt = None, mode: ModeOpt = None, cache: CacheOpt = None,
    out_dir: Annotated[str | None, typer.Option("--out", help="Parent folder of run folders.")] = None,
    selector: Annotated[str | None, typer.Option(help="A selector name (see `baselines`).")] = None,
    policy: PolicyOpt = None, backend: BackendOpt = None, base_url: BaseUrlOpt = None,
    executor: ExecutorOpt = None, ray_address: RayAddressOpt = None, workers: WorkersOpt = None,
    demos: Annotated[str | None, typer.Option(
        help="Explicit ordered demos: a JSONL/CSV file of examples, or comma-separated row numbers of the "
             "train file (1-based, as in uids 'train.jsonl:N').")] = None,
) -> None:
    """Test accuracy (mean ± std over seeds) of one selector, or of an explicit ordered demo list."""
    from rl_select.experiments.config import load_config

    if sum(x is not None for x in (selector, demos, policy)) != 1:
        raise typer.BadParameter("give exactly one of --selector NAME, --policy FILE or --demos FILE|ROWS")
    cfg = load_config(config, dict(
        task=task, data=data, model=model, dtype=dtype, k=k, seeds=_seeds(seeds), n_pool=n_pool, n_val=n_val,
        n_test=n_test, calibrate=calibrate, mode=mode, cache=cache, out=out_dir,
        selectors=[selector] if selector else ([] if policy else None), policy=policy, backend=backend,
        base_url=base_url, executor=executor, ray_address=ray_address, workers=workers,
    ))
    if demos is None:
        _run(cfg, "evaluate")
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

    _run(cfg, "evaluate", demos=pick, label="explicit")


RL_HELP = "Selection-MDP settings (also config keys): see `rl_select.experiments.config.RunConfig`."


def _rl_config(config, **overrides):
    from rl_select.experiments.config import load_config

    overrides["seeds"] = _seeds(overrides.get("seeds"))
    overrides["train_tasks"] = _names(overrides.get("train_tasks"))
    if overrides.get("hidden") is not None:
        try:
            overrides["hidden"] = [int(h) for h in overrides["hidden"].split(",")]
        except ValueError:
            raise ConfigError(
                f"--hidden {overrides['hidden']!r}; expected comma-separated widths, e.g. 64,64") from None
    return load_config(config, overrides)


def _task_envs(cfg, *, fixed_pool: bool = False):
    from agents.pipeline import build_task_envs
    from rl_select.experiments.harness import scorer_factory

    _quiet_libraries()
    with console.status(f"loading model {cfg.model!r} ..."):
        make = scorer_factory(cfg)
    return build_task_envs(cfg, make, fixed_pool=fixed_pool)


TrainTasksOpt = Annotated[str | None, typer.Option(help="Comma-separated tasks to train on at once (transfer).")]
FeatOpt = Annotated[str | None, typer.Option("--feature-set", help="active (label-free) | labelled.")]
RewardOpt = Annotated[str | None, typer.Option(help="marginal | terminal.")]
NCandOpt = Annotated[int | None, typer.Option(help="Candidates N per episode (default: --n-pool).")]
EpisodesOpt = Annotated[int | None, typer.Option(help="Rollouts to collect (offline) / episodes (tabular).")]
StoreOpt = Annotated[str | None, typer.Option(help="Rollout store (.jsonl); default under <out>/rollouts/.")]
StopOpt = Annotated[bool | None, typer.Option("--allow-stop/--no-stop", help="Offer a STOP action.")]


@app.command("collect")
@_friendly
def collect_cmd(
    config: ConfigOpt = None, task: TaskOpt = None, train_tasks: TrainTasksOpt = None, data: DataOpt = None,
    model: ModelOpt = None, dtype: DtypeOpt = None, k: KOpt = None, n_val: ValOpt = None, seeds: SeedsOpt = None,
    n_candidates: NCandOpt = None, feature_set: FeatOpt = None, reward: RewardOpt = None,
    allow_stop: StopOpt = None, episodes: EpisodesOpt = None, store: StoreOpt = None, calibrate: CalOpt = None,
    cache: CacheOpt = None, out_dir: Annotated[str | None, typer.Option("--out")] = None,
    backend: BackendOpt = None, base_url: BaseUrlOpt = None,
    executor: ExecutorOpt = None, ray_address: RayAddressOpt = None, workers: WorkersOpt = None,
) -> None:
    """Random-policy rollouts of the selection MDP into a store (resumable: rerun to continue)."""
    import time

    from agents.pipeline import collect_rollouts

    cfg = _rl_config(config, task=task, train_tasks=train_tasks, data=data, model=model, dtype=dtype, k=k,
                     n_val=n_val, seeds=seeds, n_candidates=n_candidates, feature_set=feature_set, reward=reward,
                     allow_stop=allow_stop, episodes=episodes, store=store, calibrate=calibrate, cache=cache,
                     out=out_dir, backend=backend, base_url=base_url, executor=executor, ray_address=ray_address,
                     workers=workers)
    n_tasks = len(cfg.train_tasks or [cfg.task])
    t0 = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    if cfg.executor == "ray":
        from rl_select.experiments.distributed import collect_rollouts_ray

        _quiet_libraries()
        console.print(f"executor: Ray, {cfg.workers} workers, {_worker_lm(cfg)}")
        with Progress(*columns, console=console) as bar:
            job = bar.add_task("episodes (starting workers)", total=cfg.episodes * n_tasks)
            reports = collect_rollouts_ray(cfg, address=cfg.ray_address or None, workers=cfg.workers,
                                           progress=lambda text: bar.update(job, advance=1, description=text))
    else:
        task_envs = _task_envs(cfg)
        with Progress(*columns, console=console) as bar:
            job = bar.add_task("episodes", total=cfg.episodes * n_tasks)
            reports = collect_rollouts(cfg, task_envs,
                                       progress=lambda text: bar.update(job, advance=1, description=text))
    table = Table(title=f"rollouts ({time.perf_counter() - t0:.0f} s)")
    for col in ("task", "store", "episodes", "new", "LM queries", "misses", "forward tokens", "LM sec"):
        table.add_column(col)
    for r in reports:
        table.add_row(r["task"], r["store"], str(r["episodes"]), str(r["written"]), str(r["lm_queries"]),
                      str(r["lm_cache_misses"]), str(r["lm_forward_tokens"]), f"{r['lm_seconds']:.1f}")
    out.print(table)


@app.command("train")
@_friendly
def train_cmd(
    config: ConfigOpt = None, task: TaskOpt = None, train_tasks: TrainTasksOpt = None, data: DataOpt = None,
    model: ModelOpt = None, dtype: DtypeOpt = None, k: KOpt = None, n_val: ValOpt = None, seeds: SeedsOpt = None,
    agent: Annotated[str | None, typer.Option(help="tabular | dqn | offline.")] = None,
    n_candidates: NCandOpt = None, feature_set: FeatOpt = None, reward: RewardOpt = None,
    allow_stop: StopOpt = None, episodes: EpisodesOpt = None, store: StoreOpt = None, calibrate: CalOpt = None,
    train_steps: Annotated[int | None, typer.Option(help="Gradient steps (offline) / env steps (dqn).")] = None,
    hidden: Annotated[str | None, typer.Option(help="Q-network hidden widths, e.g. 64,64.")] = None,
    cache: CacheOpt = None, out_dir: Annotated[str | None, typer.Option("--out")] = None,
    backend: BackendOpt = None, base_url: BaseUrlOpt = None,
) -> None:
    """Train an agent; export the policy (policy.safetensors) and a learning curve into a run folder."""
    import time

    from agents.pipeline import plot_curve, train_agent
    from rl_select.experiments.rundir import RunDir

    cfg = _rl_config(config, task=task, train_tasks=train_tasks, data=data, model=model, dtype=dtype, k=k,
                     n_val=n_val, seeds=seeds, agent=agent, n_candidates=n_candidates, feature_set=feature_set,
                     reward=reward, allow_stop=allow_stop, episodes=episodes, store=store, calibrate=calibrate,
                     train_steps=train_steps, hidden=hidden, cache=cache, out=out_dir, backend=backend,
                     base_url=base_url)
    task_envs = _task_envs(cfg, fixed_pool=cfg.agent == "tabular")
    run = RunDir.create(cfg, f"train-{cfg.agent}")
    console.print(f"run folder: {run.path}")
    scorer = task_envs[0].scorer
    t0 = time.perf_counter()
    console.print(f"training {cfg.agent} ...")
    res = train_agent(cfg, task_envs, lm_id=cfg.model, lm_fingerprint=scorer.fingerprint, progress=True)
    seconds = time.perf_counter() - t0
    res.agent.save(run.path / f"agent-{cfg.agent}.safetensors")
    if res.policy is not None:
        res.policy.save(run.path / "policy.safetensors")
    plot_curve(res.curve, run.path / "learning_curve.png", ylabel=res.curve_label,
               title=f"{cfg.agent} on {', '.join(te.task for te in task_envs)}: k={cfg.k}, "
                     f"N={task_envs[0].env.n_candidates}")
    run.finish([], {"config": cfg.to_dict(), "training": res.summary, "lm_calls": res.lm.as_dict(),
                    "seconds": seconds, "curve": res.curve})
    out.print(f"trained {cfg.agent} in {seconds:.0f} s; LM: {res.lm.queries} query rows "
              f"({res.lm.cache_hits} hits, {res.lm.cache_misses} misses), {res.lm.forward_tokens} tokens")
    if res.policy is not None:
        out.print(f"policy: {run.path / 'policy.safetensors'}  (use with --policy)")
    out.print(f"learning curve: {run.path / 'learning_curve.png'}")


def _policy_demos(policy_path: str, task: str | None, seed: int, n_pool: int | None, n_val: int | None,
                  model: str | None):
    """Load a policy, the task's seeded pool/val and the scorer; return (policy, demos, splits, scorer)."""
    from rl_select.experiments.config import load_config
    from rl_select.experiments.harness import TaskData, build_scorer
    from rl_select.policy import SelectorPolicy

    _quiet_libraries()
    policy = SelectorPolicy.load(policy_path)
    cfg = load_config(None, dict(task=task or policy.task.name, model=model or policy.lm_id, seeds=[seed],
                                 n_pool=n_pool, n_val=n_val, n_test=1))
    data = TaskData.load(cfg)
    splits = data.splits(cfg, seed)
    with console.status(f"loading model {cfg.model!r} ..."):
        scorer = build_scorer(cfg, data.spec)
    demos = policy.select(splits.pool, scorer=scorer, val=splits.val)
    return policy, demos, splits, scorer


@app.command("select")
@_friendly
def select_cmd(
    policy: Annotated[str, typer.Option(help="A trained policy (.safetensors).")],
    task: TaskOpt = None, seed: int = 0, n_pool: PoolOpt = None, n_val: ValOpt = None, model: ModelOpt = None,
) -> None:
    """Choose demonstrations from a task's seeded pool with a policy; print them and the prompt."""
    pol, demos, splits, scorer = _policy_demos(policy, task, seed, n_pool, n_val, model)
    table = Table(title=f"{len(demos)} demonstrations chosen from a pool of {len(splits.pool)} (seed {seed})")
    for col in ("#", "uid", "label", "text"):
        table.add_column(col)
    for i, d in enumerate(demos):
        table.add_row(str(i + 1), d.uid, d.label, d.text[:90])
    out.print(table)
    out.print(f"LM queries spent selecting: {pol.last_selection_info.get('lm_queries')}")
    out.print("prompt (for a query):")
    print(pol.build_prompt(splits.test[0], demos))


@app.command("prompt")
@_friendly
def prompt_cmd(
    queries: Annotated[list[str], typer.Argument(help="Query texts.")],
    policy: Annotated[str, typer.Option(help="A trained policy (.safetensors).")],
    task: TaskOpt = None, seed: int = 0, n_pool: PoolOpt = None, n_val: ValOpt = None, model: ModelOpt = None,
) -> None:
    """Print the prompt the policy builds for each query (demonstrations chosen from the task's seeded pool)."""
    pol, demos, _, _ = _policy_demos(policy, task, seed, n_pool, n_val, model)
    for q in queries:
        print(pol.build_prompt(q, demos))
        print("-" * 40)


@app.command("report")
@_friendly
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `baselines` or `evaluate`.")],
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table instead.")] = False,
) -> None:
    """Print the summary table of a finished run from its folder (no model needed)."""
    from rl_select.errors import DataError
    from rl_select.experiments.report import summary_markdown, summary_table

    path = run_dir / "results.json"
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
    out.print(summary_table(summary, f"{cfg['task']}, k={cfg['k']}, pool {cfg['n_pool']}, val {cfg['n_val']}, "
                                     f"test {n_test}, seeds {cfg['seeds']}"))


@bench_app.command("env")
@_friendly
def bench_env_cmd(
    config: ConfigOpt = None, task: TaskOpt = None, k: KOpt = None, n_val: ValOpt = None,
    n_candidates: NCandOpt = None, feature_set: FeatOpt = None, calibrate: CalOpt = None, cache: CacheOpt = None,
    episodes: Annotated[int, typer.Option(help="Episodes run cold, then replayed warm.")] = 3,
) -> None:
    """Time an env step with the real scorer: cold (LM runs) and warm (every score from the cache)."""
    from envs.bench import time_env_steps

    cfg = _rl_config(config, task=task, k=k, n_val=n_val, n_candidates=n_candidates, feature_set=feature_set,
                     calibrate=calibrate, cache=cache)
    env = _task_envs(cfg)[0].env
    with console.status("running episodes cold, then warm ..."):
        res = time_env_steps(env, episodes=episodes, seed=cfg.seeds[0])
    table = Table(title=f"env step: {cfg.task}, N={res['n_candidates']}, k={res['k']}, val {res['n_val']}, "
                        f"{res['feature_set']} features, {res['steps']} steps")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, key in (("cold step (LM runs), mean", "cold_step_ms_mean"), ("warm step, mean", "warm_step_ms_mean"),
                      ("warm step, median", "warm_step_ms_median"), ("warm step, max", "warm_step_ms_max")):
        table.add_row(name, f"{res[key]:.2f} ms")
    table.add_row("LM misses while warm", str(res["warm_lm_misses"]))
    out.print(table)


@bench_app.command("scorer")
@_friendly
def bench_scorer_cmd(
    task: Annotated[str, typer.Option(help="Task.")] = "sst2",
    data: DataOpt = None,
    model: Annotated[str, typer.Option(help="Model id.")] = "bundled",
    dtype: Annotated[str, typer.Option(help="Fast scorer dtype (the reference is always fp32).")] = "auto",
    k: Annotated[int, typer.Option("-k", "--k")] = 4,
    n_queries: Annotated[int, typer.Option(help="Validation queries scored.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Fast scorer batch size.")] = 16,
    seed: int = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Fast scorer vs the plain reference scorer, side by side: speed ratio, agreement, throughput."""
    from rl_select.experiments.bench_scorer import bench_scorer
    from rl_select.experiments.harness import resolve_spec

    _quiet_libraries()
    spec = resolve_spec(task)
    with console.status("benchmarking (the reference scorer takes a while) ...") as status:
        res = bench_scorer(spec=spec, data=data, model_id=model, dtype=dtype, k=k, n_queries=n_queries,
                           batch_size=batch_size, seed=seed, progress=lambda s: status.update(s))
    table = Table(title=f"scorer benchmark: {res['task']}, k={k}, {res['n_queries']} queries, {model} "
                        f"({res['dtype']}, {res['threads']} threads)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("reference scorer (fp32, 1 forward per query x label)", f"{res['reference_seconds']:.2f} s"),
        ("fast scorer (prefix KV cache, batched)", f"{res['fast_seconds']:.2f} s"),
        ("speed-up", f"{res['speedup']:.1f}x"),
        ("prediction agreement", f"{100 * res['agreement']:.1f}%"),
        ("max |log-prob difference|", f"{res['max_abs_logprob_diff']:.2e}"),
        ("fast: LM tokens run / s", f"{res['fast_lm_tokens_per_s']:.0f}"),
        ("fast: prompt tokens answered / s", f"{res['prompt_tokens_answered_per_s']:.0f}"),
        ("raw model forward, last-position logits, tok/s", f"{res['raw_forward_tokens_per_s_last_logits']:.0f}"),
        ("raw model forward, fp32, all logits, batch 1, tok/s",
         f"{res['raw_forward_tokens_per_s_all_logits_fp32_batch1']:.0f}"),
        ("fast scorer / raw forward throughput", f"{100 * res['fraction_of_raw_throughput']:.0f}%"),
    ]
    for r in rows:
        table.add_row(*r)
    out.print(table)
    if json_out:
        json_out.write_text(json.dumps(res, indent=2))


@bench_app.command("scale")
@_friendly
def bench_scale_cmd(
    task: Annotated[str, typer.Option(help="Task.")] = "sst2",
    data: DataOpt = None,
    k: Annotated[int, typer.Option("-k", "--k", help="Demonstrations per prompt (both parts).")] = 2,
    n_queries: Annotated[int, typer.Option(help="Queries scored by both backends.")] = 8,
    n_val: Annotated[int, typer.Option(help="Reward-validation rows of the rollout env.")] = 16,
    n_candidates: Annotated[int, typer.Option(help="Candidates per rollout episode.")] = 8,
    episodes: Annotated[int, typer.Option(help="Rollout episodes per executor.")] = 8,
    workers: Annotated[str, typer.Option(help="Ray worker counts to time, comma-separated.")] = "1,2",
    skip_server: Annotated[bool, typer.Option("--skip-server", help="Only the executors part.")] = False,
    skip_ray: Annotated[bool, typer.Option("--skip-ray", help="Only the backends part.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Server backend vs HF backend on the same prompts, and rollout collection on Ray (1, 2 workers) vs in process."""
    from rl_select.experiments.bench_scale import bench_backends, bench_executors
    from rl_select.experiments.config import RunConfig
    from rl_select.experiments.harness import resolve_spec

    _quiet_libraries()
    res: dict[str, Any] = {}
    if not skip_server:
        with console.status("backends: HF in process, then the llama-cpp-python server ...") as status:
            b = bench_backends(spec=resolve_spec(task), data=data, k=k, n_queries=n_queries,
                               progress=lambda s: status.update(s))
        res["backends"] = b
        table = Table(title=f"label scoring, same prompts: {b['task']}, k={b['k']}, {b['n_prompts']} prompts "
                            f"({b['prompt_tokens']} prompt tokens), caches off")
        for col in ("backend", "seconds", "prompts/s", "prompt tokens/s"):
            table.add_column(col, justify="right" if col != "backend" else "left")
        table.add_row(f"HF in process ({b['hf_dtype']})", f"{b['hf_seconds']:.2f}",
                      f"{b['hf_prompts_per_s']:.1f}", f"{b['hf_prompt_tokens_per_s']:.0f}")
        table.add_row(f"llama-cpp-python server ({b['server_threads']} thr.)",
                      f"{b['server_seconds']:.2f}", f"{b['server_prompts_per_s']:.2f}",
                      f"{b['server_prompt_tokens_per_s']:.0f}")
        out.print(table)
        out.print(f"HF / server throughput: {b['hf_speedup_over_server']:.1f}x; prediction agreement "
                  f"{100 * b['agreement']:.1f}%, mean |log-prob difference| {b['mean_abs_logprob_diff']:.3f} nats")
    if not skip_ray:
        cfg = RunConfig(task=task, data=data, k=k, n_val=n_val, n_candidates=n_candidates, episodes=episodes,
                        seeds=[0]).validate()
        try:
            counts = tuple(int(w) for w in workers.split(",") if w.strip())
        except ValueError:
            raise ConfigError(f"--workers {workers!r}; expected comma-separated worker counts, e.g. 1,2") from None
        if not counts or min(counts) < 1:
            raise ConfigError(f"--workers {workers!r}; expected positive worker counts, e.g. 1,2")
        with console.status("executors: in process, then Ray ...") as status:
            e = bench_executors(cfg, workers=counts, progress=lambda s: status.update(s))
        res["executors"] = e
        table = Table(title=f"rollout collection: {e['task']}, k={e['k']}, N={e['n_candidates']}, val {e['n_val']}, "
                            f"{e['episodes']} episodes, caches off (1 CPU per Ray worker)")
        for col in ("executor", "wall s", "1st episode", "episodes/s", "ep/s after 1st", "vs local", "same"):
            table.add_column(col, justify="left" if col == "executor" else "right")
        for r in e["rows"]:
            table.add_row(r["executor"], f"{r['seconds']:.1f}", f"{r['first_episode_s']:.1f} s",
                          f"{r['episodes_per_s']:.3f}", f"{r['episodes_per_s_after_first']:.3f}",
                          f"{r['speedup_vs_in_process']:.2f}x", "yes" if r["same_episodes"] else "NO")
        out.print(table)
    if json_out:
        json_out.write_text(json.dumps(res, indent=2))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
