"""Commands of the selection MDP: ``collect`` (rollouts), ``train`` (an agent, exporting a policy) and
``per-query`` (per-query policies across tasks, stage by stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rl_select.cli.common import (
    AGENT,
    EXECUTOR,
    LM,
    MDP,
    RUN,
    Invocation,
    _friendly,
    _quiet_libraries,
    _task_envs,
    _worker_lm,
    app,
    config_command,
    console,
    out,
)
from rl_select.errors import ConfigError


@config_command("collect", RUN, LM, MDP, ("episodes", "store"), EXECUTOR)
def collect_cmd(cfg, explicit: frozenset[str]) -> None:
    """Random-policy rollouts of the selection MDP into a store (resumable: rerun to continue)."""
    import time

    from rl_select.experiments.collection import EpisodeWorker, check_stores, collect_rollouts
    from rl_select.experiments.executors import Executor, LocalExecutor, RayExecutor
    from rl_select.experiments.task_envs import check_task_envs

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
def train_cmd(cfg, explicit: frozenset[str], invocation: Invocation) -> None:
    """Train an agent; export the policy (policy.safetensors) and a learning curve into a run folder.

    Q-network agents (dqn, offline) export one policy file; the tabular agent, whose table is tied to one
    fixed pool, writes its checkpoint (agent-tabular.safetensors) instead. The policy's training record holds
    ``rebuild``: this command line (and, for an agent that learns from rollouts, the ``collect`` before it), which
    ``rl-select reproduce`` runs.
    """
    import time

    from agents.registry import agent_class
    from rl_select.experiments.collection import check_stores
    from rl_select.experiments.rundir import RunDir
    from rl_select.experiments.task_envs import check_task_envs
    from rl_select.experiments.training import check_agent_tasks, plot_curve, policy_selection, train_agent

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
            where = ("out", "cache")  # where it writes and caches is no part of what it builds
            learn = invocation.line(skip=where)
            res.policy.training["rebuild"] = learn if tags.learns_from == "env" else \
                f"{invocation.line('collect', skip=where)} && {learn}"
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
    from rl_select.experiments.per_query_config import PerQueryRunConfig
    from rl_select.experiments.per_query_runs import run_stage

    def names(text: str | None) -> list[str]:
        return [t.strip() for t in text.split(",") if t.strip()] if text else []

    cfg = PerQueryRunConfig.from_file(config)
    try:
        seed_list = [int(x) for x in names(seeds)] if seeds else None
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}; expected integers separated by commas") from None
    table = run_stage(stage, run_dir, cfg, tasks=names(tasks) or None, feature_sets=names(feature_sets),
                      rewards=names(rewards), split=split, seeds=seed_list, with_baselines=not no_baselines,
                      say=lambda line: out.print(escape(line)), config_path=config)
    if table:
        print(table)
