"""``rl-select bench ...``: benchmarks of the env step, rollout collection, the scorer and scaling out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rl_select.cli.common import (
    LM,
    DataOpt,
    _comma_list,
    _friendly,
    _quiet_libraries,
    _task_envs,
    app,
    config_command,
    console,
    out,
)
from rl_select.errors import ConfigError

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (ratios measured side by side in one run).")
app.add_typer(bench_app, name="bench")


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
