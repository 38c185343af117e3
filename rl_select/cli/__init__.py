"""``rl-select``: the command line.

Commands: ``tasks``, ``baselines`` (every selector on a task over seeds, as a table in a run folder),
``evaluate`` (one selector, a policy, an explicit ordered demo list, or a saved prompt file), ``collect``
(rollouts), ``train`` (an agent, exporting a policy), ``select`` (a policy or any baseline -> a prompt file to
ship), ``prompt`` (render a prompt file, or a policy's choice, for queries), ``ablate`` (a resumable grid of
runs, trained policies included), ``report``, ``bench ...``.

Every option that sets a config value is declared once, in :data:`OPTIONS` (named after its flat config
key, see :data:`rl_select.experiments.config.FLAT_KEYS`); :func:`config_command` gives a command the
option groups it takes plus ``--config``, and hands it the resolved :class:`RunConfig` and the set of
keys the user gave explicitly. Errors a user can fix print one line (``error: ...``, markup escaped)
and exit with status 2.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
import tomllib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
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
            console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted: results measured so far are in the run folder and the score cache")
            raise typer.Exit(130) from None

    return wrapper


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (no source line), e.g. a server that needs one prompt per request."""
    console.print(f"[yellow]warning:[/yellow] {escape(str(message))}", highlight=False, soft_wrap=True)


def _quiet_libraries() -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    warnings.showwarning = _one_line_warning


# --- options, declared once ------------------------------------------------------------------------


def _comma_list(item: type) -> Callable[[str, str], list[Any]]:
    """Parse a comma-separated list option (``--seeds 0,1,2``); a bad item is a one-line ConfigError."""

    def parse(name: str, text: str) -> list[Any]:
        try:
            return [item(s.strip()) for s in str(text).split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--{name.replace('_', '-')} {text!r} is not a comma-separated list of "
                              f"{item.__name__}s, e.g. {'0,1,2' if item is int else 'a,b'}") from None

    return parse


def _opt(kind: Any, *decls: str, **kw: Any) -> Any:
    return Annotated[kind | None, typer.Option(*decls, **kw)]


LISTS: dict[str, Callable[[str, str], list[Any]]] = {}
"""Options given as comma-separated lists, and their parsers."""


def _list(item: type, help: str) -> Any:
    return Annotated[str | None, typer.Option(metavar="A,B,...", help=help)], _comma_list(item)


OPTIONS: dict[str, Any] = {
    # top level
    "task": _opt(str, help="Built-in task name or a JSON/TOML task spec file."),
    "data": _opt(str, help="Folder with train/test files (default: ../shared/data/TASK, else the hub)."),
    "k": _opt(int, "-k", "--k", help="Number of demonstrations."),
    "seeds": _list(int, "Seeds, e.g. 0,1,2."),
    "cache": _opt(str, help="Score cache file ('none' disables; default ~/.cache/rl_select)."),
    "out": _opt(str, "--out", help="Parent folder of run folders."),
    "policy": _list(str, "Trained policies (.safetensors) to add as selectors 'policy:<agent>'."),
    # [lm]
    "model": _opt(str, help="'bundled' (SmolLM2-135M-Instruct), a folder, a hub id, or with --backend openai the "
                            "served model name."),
    "backend": _opt(str, help="hf (in process) | openai (a /v1/completions server; key from RL_SELECT_API_KEY or "
                              "OPENAI_API_KEY)."),
    "base_url": _opt(str, help="The OpenAI-compatible server, e.g. http://127.0.0.1:8000."),
    "dtype": _opt(str, help="auto | bf16 | fp32 | fp16 (auto: bf16 only where the CPU has it)."),
    "mode": _opt(str, help="direct | channel."),
    "calibrate": _opt(bool, "--calibrate/--no-calibrate", help="Contextual calibration."),
    "length_norm": _opt(bool, "--length-norm/--no-length-norm", help="Divide label log-probs by their length."),
    # [splits]
    "n_pool": _opt(int, help="Candidate pool size per seed."),
    "n_val": _opt(int, help="Reward-validation size per seed."),
    "n_test": _opt(int, help="Test rows (0: the whole test file)."),
    "train_pool": _opt(int, help="Train rows MDP episodes draw their candidates from."),
    # [selectors]
    "selectors": _list(str, "Selector names, e.g. zero_shot,random."),
    # [mdp]
    "n_candidates": _opt(int, help="Candidates N per episode (default: --n-pool)."),
    "feature_set": _opt(str, "--feature-set",
                        help="active (label-free) | labelled | zeroshot (candidates from the one-off "
                             "row table; LM: val only) | table (no LM for features) | table_labelled "
                             "(table + the candidates' labels)."),
    "reward": _opt(str, help="marginal | terminal."),
    "allow_stop": _opt(bool, "--allow-stop/--no-stop", help="Offer a STOP action."),
    "min_len": _opt(int, help="Fewest demonstrations before STOP is allowed."),
    # [agent]
    "agent": _opt(str, help="Learner: a name in the agent registry (agents.AGENTS), e.g. offline; an unknown name "
                            "is refused with the list."),
    "episodes": _opt(int, help="Rollouts to collect (offline) / episodes (tabular)."),
    "train_steps": _opt(int, help="Gradient steps (offline) / env steps (dqn)."),
    "hidden": _list(int, "Q-network hidden widths, e.g. 64,64."),
    "train_tasks": _list(str, "Tasks to train on at once (transfer)."),
    "store": _opt(str, help="Rollout store (.jsonl); default under <out>/rollouts/."),
    "cql_alpha": _opt(float, help="Offline agent: weight of the CQL regulariser (0: plain offline DQN)."),
    "val_episodes": _opt(int, help="Offline agent: greedy episodes per checkpoint check (LM reward); "
                                   "0: held-out TD objective, no LM."),
    "q_target": _opt(str, help="Offline agent: td (bootstrapped max) | mc (logged return-to-go)."),
    "rollout_seed": _opt(int, help="Seed of the rollouts and their pool / reward split (default: the run's "
                                   "first seed)."),
    "return_norm": _opt(str, help="Offline agent: none | task (each training task's returns as z-scores "
                                  "within the task)."),
    "probe_critic": _opt(bool, "--probe-critic/--no-probe-critic",
                         help="Offline agent: also fit the probe critic (policy_probe) on the rollouts."),
    "critic_episodes": _opt(int, help="Probe critic: the first N stored episodes per task it fits on "
                                      "(default: episodes)."),
    # [executor]
    "executor": _opt(str, help="local (in process) | ray (units on Ray actors; same results, store and cache)."),
    "ray_address": _opt(str, help="Ray cluster: auto | ray://host:10001 (default $RL_SELECT_RAY_ADDRESS, "
                                  "$RAY_ADDRESS, else a local Ray)."),
    "workers": _opt(int, help="Ray actors (each loads the LM)."),
}
"""Every config option of the CLI, by flat config key."""
for _key, _value in list(OPTIONS.items()):
    if isinstance(_value, tuple):
        OPTIONS[_key], LISTS[_key] = _value

RUN = ("task", "data", "k", "seeds", "n_pool", "n_val", "n_test", "cache", "out")
LM = ("model", "backend", "base_url", "dtype", "mode", "calibrate", "length_norm")
EXECUTOR = ("executor", "ray_address", "workers")
MDP = ("train_tasks", "train_pool", "n_candidates", "feature_set", "reward", "allow_stop", "min_len")
AGENT = ("agent", "episodes", "train_steps", "hidden", "store", "cql_alpha", "val_episodes", "q_target", "rollout_seed",
         "return_norm", "probe_critic", "critic_episodes")

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML run config; flags override it.")]
DataOpt = OPTIONS["data"]
ForceOpt = Annotated[bool, typer.Option("--force", help="Use a policy with settings other than its training ones.")]


def _file_keys(path: Path | None) -> set[str]:
    """The flat keys a config file sets (its tables' keys under their flat names)."""
    from rl_select.experiments.config import FLAT_KEYS, SECTIONS

    if path is None or not Path(path).is_file():
        return set()
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return set()  # load_config reports it
    doc = doc.get("run", doc) if isinstance(doc.get("run"), dict) else doc
    flat = {v: k for k, v in FLAT_KEYS.items()}
    keys = set()
    for key, value in doc.items():
        if key in SECTIONS and isinstance(value, dict):
            keys |= {flat.get((key, name), name) for name in value}
        else:
            keys.add(key)
    return keys


def config_command(name: str, *groups: tuple[str, ...], parent: typer.Typer = app) -> Callable:
    """Register ``fn(cfg, explicit, **own)`` as command ``name`` with ``--config`` and the option ``groups``.

    ``fn``'s own parameters (after ``cfg`` and ``explicit``) stay its own options / arguments; the
    group options are parsed into a :class:`~rl_select.experiments.config.RunConfig` (defaults < file <
    flags), and ``explicit`` is the set of flat keys the user set in the file or on the command line.
    """
    keys = tuple(dict.fromkeys(k for g in groups for k in g))

    def decorate(fn: Callable) -> Callable:
        own = list(inspect.signature(fn, eval_str=True).parameters.values())[2:]
        params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigOpt)]
        params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=OPTIONS[k])
                   for k in keys]
        params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            from rl_select.experiments.config import load_config

            config = kwargs.pop("config")
            given = {k: kwargs.pop(k) for k in keys}
            given = {k: LISTS[k](k, v) if k in LISTS and v is not None else v for k, v in given.items()}
            cfg = load_config(config, given)
            explicit = _file_keys(config) | {k for k, v in given.items() if v is not None}
            return fn(cfg, frozenset(explicit), **kwargs)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        parent.command(name)(_friendly(command))
        return fn

    return decorate


# --- running a grid --------------------------------------------------------------------------------


def _worker_lm(cfg) -> str:
    """How each Ray worker gets its LM, for the start-up line."""
    if cfg.lm.backend == "openai":
        return f"each a client of {cfg.lm.base_url or '$RL_SELECT_BASE_URL'} ({cfg.lm.model})"
    return f"each loading {cfg.lm.model!r}"


def _load_policies(cfg, explicit: frozenset[str], force: bool):
    """The run's policies, and the config rebuilt for the scorer and task they were trained with."""
    from rl_select.experiments.reproduce import policy_settings
    from rl_select.mdp.policy import SelectorPolicy

    policies = [SelectorPolicy.load(p) for p in cfg.policy or []]
    if not policies:
        return cfg, []
    cfg, _ = policy_settings(policies, cfg, explicit=explicit, force=force)
    names, args = list(cfg.selectors.names), dict(cfg.selectors.args)
    for path, pol in zip(cfg.policy, policies):  # one row per policy, named after the agent that trained it
        name = f"policy:{pol.agent}"
        while name in names and args.get(name, {}).get("path") != path:
            name += "'"
        if name not in names:
            names.append(name)
        args[name] = {"path": path, "force": force}
    return cfg.updated(selectors={"names": names, "args": args}), policies


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
        cfg, _ = _load_policies(cfg, explicit, force)
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


PromptFileOpt = Annotated[Path | None, typer.Option(
    "--prompt-file", help="A prompt file written by `rl-select select`.")]


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


# --- the MDP ----------------------------------------------------------------------------------------


def _task_envs(cfg, *, fixed_pool: bool = False):
    from rl_select.experiments.harness import scorer_factory
    from rl_select.experiments.training import build_task_envs, check_task_envs

    _quiet_libraries()
    check_task_envs(cfg)  # bad input fails here, before the model loads
    with console.status(escape(f"loading model {cfg.lm.model!r} ...")):
        make = scorer_factory(cfg)
    return build_task_envs(cfg, make, fixed_pool=fixed_pool)


@config_command("collect", RUN, LM, MDP, ("episodes", "store"), EXECUTOR)
def collect_cmd(cfg, explicit: frozenset[str]) -> None:
    """Random-policy rollouts of the selection MDP into a store (resumable: rerun to continue)."""
    import time

    from rl_select.experiments.executors import Executor, LocalExecutor, RayExecutor
    from rl_select.experiments.training import EpisodeWorker, check_stores, check_task_envs, collect_rollouts

    check_task_envs(cfg)  # bad input fails here, before any model loads
    check_stores(cfg)
    t0 = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    if cfg.executor.kind == "ray":
        _quiet_libraries()
        console.print(escape(f"executor: Ray, {cfg.executor.workers} workers, {_worker_lm(cfg)}"))
        pool: Executor = RayExecutor(EpisodeWorker, cfg)
    else:
        pool = LocalExecutor(EpisodeWorker(_task_envs(cfg)))
    with Progress(*columns, console=console) as bar:
        job = bar.add_task("episodes (starting workers)" if cfg.executor.kind == "ray" else "episodes",
                           total=cfg.agent.episodes * len(cfg.train_tasks))
        reports = collect_rollouts(cfg, pool, progress=lambda text: bar.update(job, advance=1,
                                                                               description=escape(text)))
    table = Table(title=f"rollouts ({time.perf_counter() - t0:.0f} s)")
    for col in ("task", "store", "episodes", "new", "LM queries", "misses", "forward tokens", "LM sec"):
        table.add_column(col)
    for r in reports:
        table.add_row(r["task"], escape(r["store"]), str(r["episodes"]), str(r["written"]), str(r["lm_queries"]),
                      str(r["lm_cache_misses"]), str(r["lm_forward_tokens"]), f"{r['lm_seconds']:.1f}")
    out.print(table)


@config_command("train", RUN, LM, MDP, AGENT)
def train_cmd(cfg, explicit: frozenset[str]) -> None:
    """Train an agent; export the policy (policy.safetensors) and a learning curve into a run folder.

    Q-network agents (dqn, offline) export one policy file; the tabular agent, whose table is tied to one
    fixed pool, writes its checkpoint (agent-tabular.safetensors) instead.
    """
    import time

    from agents.registry import agent_class
    from rl_select.experiments.rundir import RunDir
    from rl_select.experiments.training import (
        check_agent_tasks,
        check_stores,
        check_task_envs,
        plot_curve,
        policy_selection,
        train_agent,
    )

    tags = agent_class(cfg.agent.name).tags
    check_agent_tasks(cfg)
    if tags.learns_from != "env":  # the stored episodes it learns from, before the model loads
        check_task_envs(cfg)
        check_stores(cfg, to_learn_from=True)
    task_envs = _task_envs(cfg, fixed_pool=tags.fixed_pool)
    run = RunDir.create(cfg, f"train-{cfg.agent.name}")
    with run.recording():
        console.print(f"run folder: {escape(str(run.path))}")
        t0 = time.perf_counter()
        console.print(f"training {cfg.agent.name} ...")
        res = train_agent(cfg, task_envs, progress=True)
        seconds = time.perf_counter() - t0
        selection = None
        if res.policy is not None:
            res.policy.save(run.path / "policy.safetensors")
            selection = policy_selection(cfg, res.policy, task_envs[0].scorer)
        else:
            res.agent.save(run.path / f"agent-{cfg.agent.name}.safetensors")
        plot_curve(res.curve, run.path / "learning_curve.png", ylabel=res.curve_label,
                   title=f"{cfg.agent.name} on {', '.join(te.task for te in task_envs)}: k={cfg.k}, "
                         f"N={task_envs[0].env.n_candidates}")
        run.finish([], {"config": cfg.to_dict(), "training": res.summary, "lm_calls": res.lm.as_dict(),
                        "seconds": seconds, "curve": res.curve, "policy_selection": selection})
        out.print(f"trained {cfg.agent.name} in {seconds:.0f} s; LM: {res.lm.queries} query rows "
                  f"({res.lm.cache_hits} hits, {res.lm.cache_misses} misses), {res.lm.forward_tokens} tokens")
        if selection is not None:
            out.print(escape(f"policy: {run.path / 'policy.safetensors'}  (use with --policy); on seed "
                             f"{selection['seed']}'s pool it picks {selection['demos']} (val acc "
                             f"{100 * selection['val_acc']:.1f})"))
        out.print(escape(f"learning curve: {run.path / 'learning_curve.png'}"))


# --- ablation grids ---------------------------------------------------------------------------------


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


@app.command("per-query")
@_friendly
def per_query_cmd(
    stage: Annotated[str, typer.Argument(help="collect | train | general | evaluate | adapt | report (each resumes).")],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="The run folder.")] = Path("runs/per_query"),
    config: Annotated[Path | None, typer.Option(
        "--config", help="JSON of the run's settings (PerQueryRunConfig fields).")] = None,
    tasks: Annotated[str | None, typer.Option(
        metavar="A,B,...", help="collect: tasks to collect; else the held-out tasks.")] = None,
    feature_sets: Annotated[str | None, typer.Option(metavar="A,B,...", help="Feature sets to train.")] = None,
    rewards: Annotated[str | None, typer.Option(metavar="A,B,...", help="Rewards to train on.")] = None,
    split: Annotated[str, typer.Option(help="val (choosing settings) or test (reporting).")] = "test",
    seeds: Annotated[str | None, typer.Option(metavar="0,1,...", help="Evaluation seeds.")] = None,
    no_baselines: Annotated[bool, typer.Option("--no-baselines", help="Evaluate the policies only.")] = False,
) -> None:
    """Per-query policies across tasks: collect episodes per task, train leave-one-task-out, evaluate, report."""
    from rl_select.experiments.per_query_runs import PerQueryRunConfig, run_stage

    def names(text: str | None) -> list[str]:
        return [t.strip() for t in text.split(",") if t.strip()] if text else []

    import dataclasses

    from rl_select.errors import one_of, read_utf8

    where = f"per-query config {str(config)!r}"
    try:
        fields = json.loads(read_utf8(config, where, ConfigError)) if config else {}
    except ValueError as exc:
        raise ConfigError(f"{where} is not JSON ({str(exc).splitlines()[0]}); expected an object of "
                          "PerQueryRunConfig fields") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{where} holds {type(fields).__name__}; expected a JSON object of PerQueryRunConfig fields")
    known = [f.name for f in dataclasses.fields(PerQueryRunConfig)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r}; expected some of {one_of(known, unknown[0])}")
    cfg = PerQueryRunConfig(**fields)
    try:
        seed_list = [int(x) for x in names(seeds)] if seeds else None
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}; expected integers separated by commas") from None
    table = run_stage(stage, run_dir, cfg, tasks=names(tasks) or None, feature_sets=names(feature_sets),
                      rewards=names(rewards), split=split, seeds=seed_list, with_baselines=not no_baselines,
                      say=lambda line: out.print(escape(line)))
    if table:
        print(table)


# --- offline prompt construction: select / prompt (a policy or any selector -> a prompt file) ----------

PolicyPathOpt = Annotated[str | None, typer.Option(
    "--policy", help="A trained policy (.safetensors), or 'pretrained' (the shipped per-query policy).")]
SeedOpt = Annotated[int | None, typer.Option(
    help="Seed of the pool / val split and of the selector (default: a policy's first training seed, else 0).")]


def _selector_names(keep: Callable[[Any], bool]) -> list[str]:
    """The registered selectors whose declaration (``tags``) passes ``keep``, in registry order."""
    from rl_select.selectors import SELECTORS

    return [name for name, cls in SELECTORS.items() if keep(cls.tags)]


SelectorOpt = Annotated[str | None, typer.Option(
    "--selector", help=f"A baseline selector ({', '.join(_selector_names(lambda t: not t.trained))}); its "
                       "settings from --arg or the config's selectors.args.NAME table.")]
ArgOpt = Annotated[list[str] | None, typer.Option(
    "--arg", metavar="KEY=VALUE", help="A selector setting (a JSON value, else text), e.g. --arg n_prompts=16 or "
                                       "--arg embedder=hashing; repeatable.")]
PoolOpt = Annotated[str | None, typer.Option(
    "--pool", help="The candidate pool: a JSONL/CSV file of labelled examples (default: --n-pool seeded rows of "
                   "train).")]
OutFileOpt = Annotated[Path | None, typer.Option(
    "--out-file", help="The prompt file to write (.json; the prefix goes beside it as .txt). Default: "
                       "<out>/prompts/<time>-<task>-<selector>.json.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing prompt file.")]
ValidateOpt = Annotated[bool, typer.Option(
    "--validate/--no-validate", help="Measure the choice's accuracy on the val rows (LM calls; "
                                     f"{', '.join(_selector_names(lambda t: not t.lm))} need no LM without it).")]


def _selector_args(pairs: list[str] | None) -> dict[str, Any]:
    """``--arg KEY=VALUE`` pairs as selector keyword arguments (JSON values, else text)."""
    args: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--arg {pair!r}; expected KEY=VALUE, e.g. --arg n_prompts=16")
        try:
            args[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            args[key.strip()] = text
    return args


def _select_prompt(cfg, explicit: frozenset[str], *, policy: str | None, selector: str | None,
                   arg: list[str] | None, pool: str | None, seed: int | None, force: bool, validate: bool,
                   out_file: Path | None = None, overwrite: bool = False, write: bool = True):
    """Select once with a policy or a baseline; return ``(prompt file, inputs, scorer, path, seed, policy)``.

    A policy rebuilds the task, scorer, data folder and split sizes it was trained with (refused, unless
    --force, where an option asks for others); bad input is refused before the model loads.
    """
    from rl_select.experiments.prompt_runs import default_prompt_path, selection_inputs
    from rl_select.prompt_file import check_writable, make_baseline, select_prompt
    from rl_select.selectors import selector_tags

    if (policy is None) == (selector is None):
        raise ConfigError("give exactly one of --policy FILE or --selector NAME")
    if write and out_file is not None:
        check_writable(out_file, overwrite=overwrite)
    from rl_select.lm.cache import check_cache

    check_cache(cfg.cache)  # before the model loads
    _quiet_libraries()
    pol = None
    from rl_select.mdp.artifacts import peek_kind
    from rl_select.mdp.per_query_policy import KIND as PER_QUERY_KIND
    from rl_select.mdp.per_query_policy import resolve_policy_path

    if policy is not None and peek_kind(resolve_policy_path(policy)) == PER_QUERY_KIND:
        return _select_per_query(cfg, explicit, policy=policy, seed=seed, force=force, validate=validate,
                                 out_file=out_file, overwrite=overwrite, write=write)
    if policy is not None:
        from rl_select.experiments.reproduce import policy_settings
        from rl_select.mdp.policy import SelectorPolicy

        pol = SelectorPolicy.load(policy)
        if seed is None:
            seed = int((pol.training.get("config", {}).get("seeds") or [0])[0])
        cfg, _ = policy_settings([pol], cfg.updated(seeds=[seed], n_test=1), explicit=explicit, force=force)
        k, name, args, chooser = (cfg.k if "k" in explicit else pol.k), f"policy:{pol.agent}", {"path": policy}, pol
    else:
        seed = 0 if seed is None else seed
        cfg = cfg.updated(seeds=[seed], n_test=1)
        name = selector
        args = {**cfg.selectors.args.get(selector, {}), **_selector_args(arg)}
        chooser, k = make_baseline(selector, args), cfg.k
    from rl_select.errors import SelectionError

    if name.split(":")[0] != "zero_shot" and k < 1:
        raise SelectionError(f"k={k} for selector {name!r}; expected k >= 1 (no demonstrations: the zero_shot "
                             "selector)")
    inputs = selection_inputs(cfg, seed, pool_file=pool)
    if name.split(":")[0] != "zero_shot" and k > len(inputs.pool):
        raise SelectionError(f"k={k} is larger than the pool of {len(inputs.pool)} candidates; expected k <= "
                             f"{len(inputs.pool)}")
    path = None
    if write:
        path = out_file or default_prompt_path(cfg, inputs.spec.name, name)
        check_writable(path, overwrite=overwrite)
    needs_lm = pol is not None or (validate and bool(inputs.val)) or selector_tags(name).lm
    scorer = None
    if needs_lm:
        from rl_select.experiments.harness import build_scorer

        with console.status(escape(f"loading model {cfg.lm.model!r} ...")):
            scorer = build_scorer(cfg, inputs.spec)
    pf = select_prompt(chooser, task=inputs.spec, pool=inputs.pool, val=inputs.val, k=k, scorer=scorer, seed=seed,
                       measure=validate, name=name, args=args, source=inputs.source, scorer_spec=cfg.lm, force=force)
    if path is not None:
        pf.save(path, overwrite=overwrite)
    return pf, inputs, scorer, path, seed, pol


def _select_per_query(cfg, explicit: frozenset[str], *, policy: str, seed: int | None, force: bool, validate: bool,
                      out_file: Path | None,
                      overwrite: bool, write: bool):
    """A per-query policy's choices for every test row of the data, as a per-query prompt file (see
    :func:`~rl_select.prompt_file.select_per_query_prompt`); the task and data are the user's (the policy is
    task-agnostic), the scorer the policy's training one unless --force."""
    from rl_select.experiments.harness import build_scorer
    from rl_select.experiments.prompt_runs import default_prompt_path, selection_inputs
    from rl_select.mdp.per_query_policy import PerQueryPolicy
    from rl_select.prompt_file import check_writable, select_per_query_prompt

    pol = PerQueryPolicy.load(policy)
    seed = 0 if seed is None else seed
    cfg = cfg.updated(seeds=[seed], n_test=1)
    if pol.scorer_spec is not None:  # the training scorer's settings, where the user set none (a set one is checked)
        trained = pol.scorer_spec.to_dict()
        cfg = cfg.updated(lm={key: trained[key] for key in ("backend", "model", "mode", "length_norm", "calibrate")
                              if key in trained and key not in explicit})
    inputs = selection_inputs(cfg, seed)
    if pol.m > len(inputs.pool):
        raise ConfigError(f"policy {policy!r} takes M={pol.m} neighbours per query but the pool has "
                          f"{len(inputs.pool)}; expected --n-pool >= {pol.m}")
    path = None
    if write:
        path = out_file or default_prompt_path(cfg, inputs.spec.name, "policy_pq")
        check_writable(path, overwrite=overwrite)
    with console.status(escape(f"loading model {cfg.lm.model!r} ...")):
        scorer = build_scorer(cfg, inputs.spec)
    queries = list(inputs.data.test) if inputs.data is not None else []
    pf = select_per_query_prompt(pol, task=inputs.spec, pool=inputs.pool, queries=queries, scorer=scorer,
                                 val=inputs.val if validate else (), seed=seed, measure=validate,
                                 args={"path": policy}, source={**inputs.source, "queries": "test", "n_queries":
                                                                len(queries)}, scorer_spec=cfg.lm, force=force)
    if path is not None:
        pf.save(path, overwrite=overwrite)
    return pf, inputs, scorer, path, seed, None


@config_command("select", ("task", "data", "k", "n_pool", "n_val", "cache", "out"), LM)
def select_cmd(cfg, explicit: frozenset[str], policy: PolicyPathOpt = None, selector: SelectorOpt = None,
               arg: ArgOpt = None, pool: PoolOpt = None, seed: SeedOpt = None, out_file: OutFileOpt = None,
               overwrite: OverwriteOpt = False, validate: ValidateOpt = True, force: ForceOpt = False) -> None:
    """Choose demonstrations once (a policy or any baseline) and write them as a prompt file to ship.

    The prompt file (.json) holds the task spec, the demonstrations in order, the selector and its settings,
    the scorer spec, the val accuracy and the LM calls spent; beside it, the rendered prefix as .txt. knn
    writes its per-query rule instead of one prefix. With --policy, the task and the scorer are the ones the
    policy was trained with; an option that asks for a different one is refused unless --force.
    """
    pf, inputs, scorer, path, seed, pol = _select_prompt(
        cfg, explicit, policy=policy, selector=selector, arg=arg, pool=pool, seed=seed, force=force,
        validate=validate, out_file=out_file, overwrite=overwrite)
    lm = getattr(scorer, "scorer_spec", None)
    if lm is not None:
        out.print(escape(f"scorer: {lm.model} ({lm.backend}, {lm.dtype}, {lm.mode}"
                         f"{', calibrated' if lm.calibrate else ''}{', length-normalised' if lm.length_norm else ''})"
                         f"; task {scorer.spec.name}"))
    where = f"a pool of {len(pf.per_query.pool if pf.per_query else inputs.pool)}"
    if pf.per_query is None:
        demos = list(pf.demos)
        title = f"{len(demos)} demonstrations chosen from {where} (seed {seed})"
    else:
        demos = pf.demos_for([inputs.example])[0] if inputs.example is not None else []
        title = (f"{pf.selector['name']} chooses {pf.k} of {where} per query, by {pf.per_query.embedder!r} "
                 f"embeddings (seed {seed}); these are the example query's")
    table = Table(title=escape(title))
    for col in ("#", "uid", "label", "text"):
        table.add_column(col)
    for i, d in enumerate(demos):
        table.add_row(str(i + 1), escape(d.uid), escape(d.label), escape(d.text[:90]))
    out.print(table)
    spent = pf.lm_calls.get("select", {}).get("queries", 0)
    out.print(f"LM queries spent selecting: {pol.last_selection_info.get('lm_queries') if pol else spent}")
    if pf.val_accuracy is not None:
        out.print(f"val accuracy: {100 * pf.val_accuracy:.1f}% on {pf.n_val} rows "
                  f"({pf.lm_calls.get('validate', {}).get('queries', 0)} LM queries)")
    if inputs.example is not None:
        out.print("prompt (for a query):")
        print(pf.render(inputs.example))
    out.print(escape(f"prompt file: {path} (prefix: {path.with_suffix('.txt')}); use it with "
                     f"`rl-select prompt --prompt-file {path}`"))


def _read_queries(spec, queries: list[str] | None, queries_file: Path | None) -> list[tuple[str, Any]]:
    """The queries from the arguments, a JSONL/CSV file, or standard input: ``(where, example)`` each."""
    from rl_select.errors import DataError
    from rl_select.prompt_file import parse_query, parse_query_lines, read_query_file

    if queries and queries_file is not None:
        raise ConfigError("give queries as arguments or --queries FILE, not both")
    if queries_file is not None:
        return read_query_file(spec, queries_file)
    if queries:
        return [(f"query argument {i}", parse_query(spec, text, where=f"query argument {i}"))
                for i, text in enumerate(queries, start=1)]
    if sys.stdin is None or sys.stdin.isatty():
        raise ConfigError("no queries; expected query texts as arguments, --queries FILE (JSONL/CSV with the task's "
                          "input fields) or lines on standard input")
    got = list(parse_query_lines(spec, sys.stdin, source="standard input"))
    if not got:
        raise DataError("standard input holds no queries; expected one query a line (text, or a JSON object of the "
                        f"input fields {list(spec.input_fields)})")
    return got


@config_command("prompt", ("task", "data", "k", "n_pool", "n_val", "cache"), LM)
def prompt_cmd(
    cfg, explicit: frozenset[str],
    queries: Annotated[list[str] | None, typer.Argument(
        help="Query texts (a JSON object per argument for pair tasks); default: --queries FILE or stdin.")] = None,
    prompt_file: PromptFileOpt = None, policy: PolicyPathOpt = None,
    queries_file: Annotated[Path | None, typer.Option(
        "--queries", help="A JSONL / CSV file of queries (the task's input fields).")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the JSONL here (default stdout).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl (query, prompt, labels, label_words, demos) | text "
                                                      "(each prompt, then a line of dashes).")] = "jsonl",
    seed: SeedOpt = None, force: ForceOpt = False,
) -> None:
    """The prompt for each query, from a prompt file (no LM, no selection) or a policy (selects once)."""
    from rl_select.prompt_file import PromptFile, query_fields

    if (prompt_file is None) == (policy is None):
        raise ConfigError("give exactly one of --prompt-file FILE or --policy FILE")
    if fmt not in ("jsonl", "text"):
        raise ConfigError(f"--format {fmt!r}; expected jsonl or text")
    if output is not None and output.is_dir():
        raise ConfigError(f"--output {str(output)!r} is a folder; expected a file path")
    if prompt_file is not None:
        if explicit:
            raise ConfigError(f"--prompt-file fixes the task and the demonstrations and needs no LM or data; drop "
                              f"{', '.join('--' + k.replace('_', '-') for k in sorted(explicit))}")
        pf = PromptFile.load(prompt_file)
    else:
        pf = _select_prompt(cfg, explicit, policy=policy, selector=None, arg=None, pool=None, seed=seed, force=force,
                            validate=False, write=False)[0]
    items = _read_queries(pf.task, queries, queries_file)
    examples = [ex for _, ex in items]
    lists = pf.demos_for(examples)
    from rl_select.prompts import render_prompt

    lines = []
    for ex, demos in zip(examples, lists):
        prompt = render_prompt(pf.task, demos, ex)
        if fmt == "text":
            lines.append(f"{prompt}\n{'-' * 40}")
        else:
            lines.append(json.dumps({"query": query_fields(pf.task, ex), "prompt": prompt, "labels": list(pf.labels),
                                     "label_words": list(pf.label_words), "demos": [d.uid for d in demos]},
                                    ensure_ascii=False))
    text = "\n".join(lines) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        console.print(escape(f"{len(lines)} prompts written to {output}"))


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


@app.command("report")
@_friendly
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `baselines` or `evaluate`.")],
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table instead.")] = False,
) -> None:
    """Print the summary table of a finished run from its folder (no model needed)."""
    from rl_select.errors import DataError
    from rl_select.experiments.report import summary_markdown, summary_table
    from rl_select.experiments.rundir import read_status

    path = run_dir / "results.json"
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


@config_command("env", ("task", "data", "k", "n_val", "cache"), LM, ("n_candidates", "feature_set"),
                parent=bench_app)
def bench_env_cmd(
    cfg, explicit: frozenset[str],
    episodes: Annotated[int, typer.Option(help="Episodes run cold, then replayed warm.")] = 3,
) -> None:
    """Time an env step with the real scorer: cold (LM runs) and warm (every score from the cache)."""
    from rl_select.experiments.bench_env import time_env_steps

    if episodes < 1:
        raise ConfigError(f"--episodes {episodes}; expected an integer >= 1")
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


@config_command("collect", ("task", "data", "k", "n_val", "train_pool", "seeds", "episodes"), LM, ("n_candidates",),
                parent=bench_app)
def bench_collect_cmd(
    cfg, explicit: frozenset[str],
    feature_sets: Annotated[str, typer.Option(help="Feature sets, comma-separated.")] = (
        "active,labelled,zeroshot,table"),
    rewards: Annotated[str, typer.Option(help="Reward modes, comma-separated.")] = "marginal,terminal",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Rollout collection per feature set and reward mode, each from an empty cache, table and store.

    --episodes E per configuration (default 8 here); the reference MDP is the default with
    --n-candidates 32 --calibrate (N=32, k=4, 32 validation queries).
    """
    from rl_select.experiments.bench_collect import bench_collect
    from rl_select.tasks import resolve_task

    _quiet_libraries()
    fsets = _comma_list(str)("feature_sets", feature_sets)
    rmodes = _comma_list(str)("rewards", rewards)
    for r in rmodes:
        from rl_select.mdp.episode import check_reward_mode

        check_reward_mode(r)
    # the reference MDP unless told otherwise: N=32, calibrated (k=4 and 32 validation queries are the defaults)
    n = cfg.n_candidates if explicit & {"n_candidates", "n_pool"} else 32
    episodes = cfg.agent.episodes if "episodes" in explicit else 8
    lm = cfg.lm if "calibrate" in explicit else cfg.lm.replace(calibrate=True)
    with console.status("collecting ...") as status:
        res = bench_collect(spec=resolve_task(cfg.task), data=cfg.data, model_id=lm.model, dtype=lm.dtype, k=cfg.k,
                            n_candidates=n, n_val=cfg.splits.n_val, train_pool=cfg.splits.train_pool,
                            episodes=episodes, feature_sets=fsets, rewards=rmodes, calibrate=bool(lm.calibrate),
                            mode=lm.mode, length_norm=bool(lm.length_norm), batch_size=lm.batch_size,
                            seed=cfg.seeds[0], stratify=cfg.splits.stratify, progress=lambda s: status.update(s))
    table = Table(title=f"rollout collection: {res['task']}, N={res['n_candidates']}, k={res['k']}, "
                        f"val {res['n_val']}, "
                        f"pool {res['train_pool']}, {'calibrated' if res['calibrate'] else 'uncalibrated'}, "
                        f"{res['episodes']} episodes each, empty cache; {lm.model} ({res['dtype']}, "
                        f"{res['threads']} threads)")
    for col in ("features", "reward", "episodes/min", "table s", f"{res['target_episodes']} eps, min",
                "LM rows/ep (declared)", "fwd tokens/ep", "in forwards", "peak RSS MB"):
        table.add_column(col, justify="left" if col in ("features", "reward") else "right")
    for r in res["rows"]:
        table.add_row(r["feature_set"], r["reward"], f"{r['episodes_per_min']:.1f}", f"{r['table_seconds']:.1f}",
                      f"{r['projected_2000_min']:.0f}",
                      f"{r['lm_rows_per_episode']:.0f} ({r['declared_rows_per_episode']})",
                      f"{r['forward_tokens_per_episode']:.0f}", f"{100 * r['forward_share']:.0f}%",
                      f"{r['peak_rss_mb']:.0f}")
    out.print(table)
    out.print(f"raw model forward ({res['dtype']}, batch {res['batch_size']}, last-position logits): "
              f"{res['raw_forward_tokens_per_s']:.0f} tok/s at {res['raw_forward_prompt_length']} tokens, "
              f"{res['raw_forward_tokens_per_s_query_length']:.0f} tok/s at {res['raw_forward_query_length']}; "
              f"native bf16 on this CPU: {'yes' if res['native_bf16'] else 'no'}")
    if json_out:
        json_out.write_text(json.dumps(res, indent=2))


@bench_app.command("scorer")
@_friendly
def bench_scorer_cmd(
    task: Annotated[str, typer.Option(help="Task.")] = "sst2",
    data: DataOpt = None,
    model: Annotated[str, typer.Option(help="Model id.")] = "bundled",
    dtype: Annotated[str, typer.Option(help="Scorer dtype.")] = "auto",
    k: Annotated[int, typer.Option("-k", "--k")] = 4,
    n_queries: Annotated[int, typer.Option(help="Test rows: the one prompt's queries and kNN's prompts.")] = 500,
    n_episodes: Annotated[int, typer.Option(help="Per-query episodes (random policy).")] = 2000,
    m: Annotated[int, typer.Option("-m", "--m", help="Nearest pool examples an episode chooses from.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Scorer batch size.")] = 16,
    compare: Annotated[bool, typer.Option(help="Also time kNN's prompts one scorer call each (the old path).")] = True,
    seed: int = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """The scorer's three workloads (one prompt, kNN's per-query prompts, per-query episodes) against raw forwards."""
    from rl_select.experiments.bench_scorer import bench_scorer
    from rl_select.tasks import resolve_task

    _quiet_libraries()
    spec = resolve_task(task)
    for name, value, least in (("--n-queries", n_queries, 1), ("--n-episodes", n_episodes, 1), ("--k", k, 1),
                               ("--m", m, 1), ("--batch-size", batch_size, 1)):
        if value < least:
            raise ConfigError(f"{name} {value}; expected an integer >= {least}")
    if m < k:
        raise ConfigError(f"--m {m} is below --k {k}; expected at least k nearest examples to choose from")
    with console.status("benchmarking the scorer ...") as status:
        res = bench_scorer(spec=spec, data=data, model_id=model, dtype=dtype, k=k, n_queries=n_queries,
                           n_episodes=n_episodes, m=m, batch_size=batch_size, compare=compare, seed=seed,
                           progress=lambda s: status.update(s))
    say = lambda text: out.print(text, soft_wrap=True)  # noqa: E731  (one figure per line)
    say(f"scorer benchmark: {res['task']}, k={k}, pool {res['n_pool']}, {model} ({res['dtype']}, "
              f"{res['threads']} threads), {'calibrated' if res['calibrated'] else 'uncalibrated'}, caches off")
    say(f"CPU: {res['cpu']}; native bf16: {'yes' if res['native_bf16'] else 'no'}; "
              f"RSS after loading the model {res['rss_after_load_mb']:.0f} MB")
    for w in res["workloads"]:
        extra = f", {w['episodes_per_minute']:.0f} episodes/min" if "episodes_per_minute" in w else ""
        say(f"{w['workload']}: {w['prompts']} prompts in {w['seconds']:.1f} s{extra}, "
                  f"{w['lm_tokens_per_s']:.0f} LM tok/s against raw {w['raw_tokens_per_s']:.0f} tok/s "
                  f"(batch {batch_size} x {w['raw_length']} tokens), peak RSS {w['peak_rss_mb']:.0f} MB: "
                  f"{100 * w['fraction_of_raw']:.0f} % of raw")
        if "one_call_per_prompt_seconds" in w:
            say(f"  one scorer call per prompt (the path it replaces): {w['one_call_per_prompt_seconds']:.1f} s "
                      f"({w['speedup_over_one_call_per_prompt']:.2f}x slower); same predictions on "
                      f"{100 * w['prediction_agreement']:.1f} % of rows (differing rows had margins <= "
                      f"{w['max_margin_where_predictions_differ']:.3f}), max |log-prob difference| "
                      f"{w['max_abs_logprob_diff']:.3f}")
        if "rss_at_100pct_mb" in w:
            say(f"  RSS at 10 % of the episodes {w['rss_at_10pct_mb']:.0f} MB, at 100 % "
                      f"{w['rss_at_100pct_mb']:.0f} MB")
    say(f"peak RSS {res['peak_rss_mb']:.0f} MB")
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
    from rl_select.experiments.config import load_config
    from rl_select.tasks import resolve_task

    for name, value, least in (("--k", k, 1), ("--n-queries", n_queries, 1), ("--n-val", n_val, 1),
                               ("--n-candidates", n_candidates, k), ("--episodes", episodes, 1)):
        if value < least:
            raise ConfigError(f"{name} {value}; expected an integer >= {least}")
    resolve_task(task)  # an unknown task fails here, before any model loads
    _quiet_libraries()
    res: dict[str, Any] = {}
    if not skip_server:
        with console.status("backends: HF in process, then the llama-cpp-python server ...") as status:
            b = bench_backends(spec=resolve_task(task), data=data, k=k, n_queries=n_queries,
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
        cfg = load_config(None, dict(task=task, data=data, k=k, n_val=n_val, n_candidates=n_candidates,
                                     episodes=episodes, seeds=[0]))
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
