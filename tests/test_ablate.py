"""``rl-select ablate``: grid files, dry-run estimates and budgets, resume after a kill, failed cells, outputs.

Every LM is the model-free CachedToyScorer (``harness.scorer_factory`` replaced, as tests/test_cli.py does).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from agents.rollouts import RolloutStore
from rl_select.cli import app
from rl_select.errors import MAX_MESSAGE, ConfigError, DataError
from rl_select.experiments import ablate, harness
from rl_select.experiments.ablate import Runner, estimate, load_plan, read_rows, row_key, training_rows
from rl_select.testing import toy_scorer_factory

runner = CliRunner()

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def toy_lm(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("the real model load was reached")

    monkeypatch.setattr(harness, "build_scorer", refuse)
    monkeypatch.setattr(harness, "scorer_factory", toy_scorer_factory)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


def write_plan(tmp_path: Path, data_root: Path, *, grid: str = 'k = [1, 2]\nfeature_set = ["active", "labelled"]',
               selectors: str = '["zero_shot", "random", "random_search", "policy", "policy_search:3"]',
               extra: str = "", name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(f"""
selectors = {selectors}
seeds = [0, 1]

[base]
task = "sst2"
data = "{data_root / 'sst2'}"
cache = "{tmp_path / 'cache.sqlite'}"
out = "{tmp_path / 'runs'}"
{extra}

[base.splits]
n_pool = 5
n_val = 6
n_test = 8
train_pool = 30

[base.agent]
episodes = 4
train_steps = 16
hidden = [8]

[base.selectors.args.random_search]
n_prompts = 3

[grid]
{grid}
""")
    return path


def invoke(*args: str):
    return runner.invoke(app, ["ablate", *args])


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert len(re.sub(r"'[^']*/[^']*'", "''", errors[0])) < MAX_MESSAGE + len("error: "), errors[0]  # paths aside
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


# --- the file ---------------------------------------------------------------------------------------


def test_plan_is_the_product_of_the_grid(tmp_path, data_root):
    plan = load_plan(write_plan(tmp_path, data_root))
    assert len(plan.cells) == 4 and len(plan.units) == 4 * 2 * 5
    assert {(c.cfg.k, c.cfg.mdp.feature_set) for c in plan.cells} == {(1, "active"), (1, "labelled"),
                                                                       (2, "active"), (2, "labelled")}
    assert len({c.id for c in plan.cells}) == 4
    assert plan.cells[0].cfg.splits.n_pool == 5 and plan.cells[0].cfg.seeds == [0, 1]
    # the id is a function of the values, not of the grid's order
    again = load_plan(write_plan(tmp_path, data_root, grid='feature_set = ["active", "labelled"]\nk = [1, 2]',
                                 name="b.toml"))
    assert {c.id for c in again.cells} == {c.id for c in plan.cells}


@pytest.mark.parametrize("grid, needles", [
    ("colour = [1, 2]", ["'colour'", "is not a grid key", "agent, allow_stop", "more) (docs/ablate.md)", "grid.toml"]),
    ("feature_st = [1, 2]", ["'feature_st'", "expected one of feature_set,"]),  # the closest key first
    ('feature_set = ["active", "shiny"]', ["feature_set = 'shiny'", "expected one of", "labelled", "grid.toml"]),
    ('agent = ["offline", "ppo"]', ["agent = 'ppo'", "dqn", "tabular"]),
    ('task = ["sst2", "nope"]', ["task = 'nope'", "grid.toml"]),
    ("k = 2", ["k = 2", "non-empty list"]),
    ('k = ["two"]', ["k = 'two'", "grid.toml"]),
])
def test_bad_grid_refused_in_one_line(tmp_path, data_root, grid, needles):
    path = write_plan(tmp_path, data_root, grid=grid)
    with pytest.raises(ConfigError):
        load_plan(path)
    one_line_error(invoke(str(path), "--dry-run"), *needles)


def test_bad_selector_and_top_level_key_refused(tmp_path, data_root):
    path = write_plan(tmp_path, data_root, selectors='["random", "oracle"]')
    one_line_error(invoke(str(path), "--dry-run"), "'oracle'", "is not a selector", "greedy")
    path = write_plan(tmp_path, data_root, selectors='["policy_search:many"]')
    one_line_error(invoke(str(path), "--dry-run"), "policy_search:M")
    path = tmp_path / "top.toml"
    path.write_text("[base]\n[grids]\nk = [1]\n")
    one_line_error(invoke(str(path), "--dry-run"), "'grids'", "grid", "top.toml")


# --- dry run and budget -----------------------------------------------------------------------------


def test_estimate_formulas(tmp_path, data_root):
    plan = load_plan(write_plan(tmp_path, data_root, grid="k = [2]", selectors=(
        '["zero_shot", "random_search", "greedy", "policy", "policy_search:3"]')))
    est = estimate(plan)
    rows = {(r["seed"], r["selector"]): r for r in est["rows"]}
    P, V, T, k, N = 5, 6, 8, 2, 5
    assert rows[(0, "zero_shot")]["select"] == 0 and rows[(0, "zero_shot")]["eval"] == T + V
    assert rows[(0, "random_search")]["select"] == 3 * V
    assert rows[(0, "greedy")]["select"] == (P + (P - 1)) * V  # the default greedy args: max_candidates 8
    assert rows[(0, "policy")]["select"] == k * (P + V)
    assert rows[(0, "policy_search:3")]["select"] == 3 * k * (P + V) + 3 * V
    # training counted once per cell x seed, on the first trained selector
    cfg = plan.cells[0].cfg
    evals = 8  # train_steps 16 -> a greedy validation every 2 steps
    assert training_rows(cfg) == (4 + 3 * evals) * (k + 1) * (N + V)
    assert rows[(0, "policy")]["train"] == training_rows(cfg) and rows[(0, "policy_search:3")]["train"] == 0
    assert est["training"] == 2 * training_rows(cfg)
    assert est["total"] == sum(r["select"] + r["eval"] + r["train"] for r in est["rows"])
    assert est["pending"] == 10


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, data_root):
    path = write_plan(tmp_path, data_root)
    res = invoke(str(path), "--dry-run")
    assert res.exit_code == 0, res.output
    total = estimate(load_plan(path))["total"]
    assert "4 cells x 2 seeds x 5 selectors = 40 rows" in res.output.replace("\n", " ")
    assert str(total) in res.output and "policy_search:3" in res.output
    assert not (tmp_path / "runs").exists()


def test_budget_refuses_before_anything_runs(tmp_path, data_root):
    path = write_plan(tmp_path, data_root)
    total = estimate(load_plan(path))["total"]
    one_line_error(invoke(str(path), "--budget", str(total - 1)), f"estimated {total}", f"--budget {total - 1}")
    assert not (tmp_path / "runs").exists()
    one_line_error(invoke(str(path), "--dry-run", "--budget", "10"), "--budget 10")


# --- running ----------------------------------------------------------------------------------------


class Killed(Exception):
    pass


def by_key(rows):
    return {row_key(r): r for r in rows}


def test_resume_after_a_kill_skips_finished_rows(tmp_path, data_root, monkeypatch):
    plan = load_plan(write_plan(tmp_path, data_root, grid="k = [1, 2]",
                                selectors='["random", "policy", "policy_search:2"]'))
    folder = tmp_path / "runs" / "grid"
    first: list[dict] = []

    def kill_after_two(row):  # random and policy of cell 1, seed 0 done; its policy_search:2 not yet
        first.append(row)
        if len(first) == 2:
            raise Killed

    with pytest.raises(Killed):
        Runner(plan, folder).run(on_row=kill_after_two)
    assert len(read_rows(folder / "results.csv")) == 2
    policies = sorted((folder / "policies").glob("*.safetensors"))
    assert policies
    stamps = {p: p.stat().st_mtime_ns for p in policies}

    trained: list[tuple] = []
    real_train = Runner.train

    def count_train(self, cell, seed):
        trained.append((cell.id, seed, (self.dir / "training" / f"{cell.id}-s{seed}.json").is_file()))
        return real_train(self, cell, seed)

    monkeypatch.setattr(Runner, "train", count_train)
    again = Runner(plan, folder)
    assert len(again.pending()) == len(plan.units) - 2
    second = again.run()
    assert {row_key(r) for r in second}.isdisjoint({row_key(r) for r in first})  # nothing redone
    rows = read_rows(folder / "results.csv")
    keys = [row_key(r) for r in rows]
    assert len(keys) == len(set(keys)) == len(plan.units) == 12
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    assert all(stamps[p] == p.stat().st_mtime_ns for p in policies)  # finished training reused, not redone
    assert trained[0] == (plan.cells[0].id, 0, True)  # the killed cell's policy came from its record
    assert by_key(rows)[(plan.cells[0].id, 0, "policy_search:2")]["train_queries"] == \
        by_key(rows)[(plan.cells[0].id, 0, "policy")]["train_queries"] > 0
    assert Runner(plan, folder).run() == []  # a third run has nothing left


def test_a_full_grid_writes_rows_summary_and_plots(tmp_path, data_root):
    path = write_plan(tmp_path, data_root, grid='k = [1, 2]\nallow_stop = [false, true]',
                      selectors='["zero_shot", "random_search", "policy", "policy_search:3"]')
    res = invoke(str(path), "--run-dir", str(tmp_path / "runs" / "full"))
    assert res.exit_code == 0, res.output
    folder = tmp_path / "runs" / "full"
    rows = read_rows(folder / "results.csv")
    assert len(rows) == 4 * 2 * 4 and all(r["status"] == "ok" for r in rows), rows[:1]
    with (folder / "results.csv").open() as fh:
        header = next(csv.reader(fh))
    for col in ("test_acc", "val_acc", "train_queries", "select_queries", "labelled", "seconds",
                "select_cache_hits", "cell_id", "seed", "selector", "k", "allow_stop"):
        assert col in header
    by = {(r["cell_id"], r["seed"], r["selector"]): r for r in rows}
    for (cid, seed, name), r in by.items():
        if name == "policy_search:3":
            greedy = by[(cid, seed, "policy")]
            assert r["val_acc"] >= greedy["val_acc"]  # the greedy rollout is one of the proposals
            assert r["select_queries"] > greedy["select_queries"]
            assert r["train_queries"] == greedy["train_queries"] > 0
        if name == "zero_shot":
            assert r["select_queries"] == 0 and r["labelled"] == 0 and r["train_queries"] is None
    summary = (folder / "summary.md").read_text()
    assert summary.count("| policy_search:3 |") == 4 and "±" in summary
    for png in ("accuracy_by_selector.png", "accuracy_vs_lm_calls.png", "learning_curves.png"):
        assert (folder / png).stat().st_size > 1000, png
    assert (folder / "ablate.toml").read_text() == path.read_text()
    # --run-dir alone continues it from the stored ablate.toml: nothing to do, no rows added
    res = invoke("--run-dir", str(folder))
    assert res.exit_code == 0, res.output
    assert len(read_rows(folder / "results.csv")) == 32
    # the repeat is free: every query row of a rerun cell comes from the cache
    plan = load_plan(path)
    fresh = tmp_path / "runs" / "repeat"
    row = Runner(plan, fresh).run_unit(plan.cells[0], 0, "random_search")
    assert row["select_queries"] == row["select_cache_hits"] > 0


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tmp_path, data_root):
    path = write_plan(tmp_path, data_root, grid="k = [2, 7]", selectors='["random", "policy"]')
    res = invoke(str(path), "--run-dir", str(tmp_path / "runs" / "f"))
    assert res.exit_code == 0, res.output
    rows = read_rows(tmp_path / "runs" / "f" / "results.csv")
    assert len(rows) == 8
    bad = [r for r in rows if r["k"] == 7]
    good = [r for r in rows if r["k"] == 2]
    assert all(r["status"] == "failed" and "k=7" in r["error"] and "\n" not in r["error"] for r in bad)
    assert all(r["status"] == "ok" for r in good)
    assert "rows failed" in res.output
    summary = (tmp_path / "runs" / "f" / "summary.md").read_text()
    assert "k=7" in summary


def test_a_tabular_cell_fails_its_policy_rows_with_the_reason(tmp_path, data_root):
    plan = load_plan(write_plan(tmp_path, data_root, grid='agent = ["tabular"]', selectors='["policy"]'))
    rows = Runner(plan, tmp_path / "runs" / "t").run()
    assert len(rows) == 2 and all(r["status"] == "failed" and "exports no policy" in r["error"] for r in rows)


def test_model_error_in_one_row_is_recorded(tmp_path, data_root, monkeypatch):
    from rl_select.errors import ModelError
    from rl_select.selectors.random_search import RandomSearchSelector

    def too_long(self, ctx):
        raise ModelError("prompt of 4096 tokens does not fit the context window of 2048; expected fewer demos")

    monkeypatch.setattr(RandomSearchSelector, "select", too_long)
    plan = load_plan(write_plan(tmp_path, data_root, grid="k = [1]", selectors='["random", "random_search"]'))
    rows = Runner(plan, tmp_path / "runs" / "m").run()
    assert [r["status"] for r in rows] == ["ok", "failed", "ok", "failed"]
    assert "context window" in rows[1]["error"]


def test_the_example_config_parses_and_is_small():
    path = Path(__file__).resolve().parents[1] / "configs" / "ablate_example.toml"
    plan = load_plan(path)
    assert len(plan.cells) == 4 and "policy_search:4" in plan.selectors
    est = estimate(plan)
    assert 0 < est["total"] < 100_000 and est["training"] > 0


# --- the reference experiment's pieces: transfer cells, one rollout store per task, results.md ------


def write_transfer_plan(tmp_path: Path, data_root: Path, monkeypatch, *, extra_agent: str = "") -> Path:
    monkeypatch.setenv("RL_SELECT_DATA", str(data_root))
    path = tmp_path / "ref.toml"
    path.write_text(f"""
# a tiny reference grid
selectors = ["zero_shot", "random", "random_search:3", "policy", "policy_search:2", "policy_rank"]
seeds = [0, 1]

[base]
task = "sst2"
cache = "{tmp_path / 'cache.sqlite'}"
out = "{tmp_path / 'runs'}"
k = 2

[base.splits]
n_pool = 5
n_val = 6
n_test = 8
train_pool = 30

[base.selectors.args."random_search:3"]
n_prompts = 3

[base.mdp]
n_candidates = 5
feature_set = "table_labelled"
reward = "terminal"

[base.agent]
episodes = 4
train_steps = 16
hidden = [8]
rollout_seed = 0
val_episodes = 0
{extra_agent}

[grid]
task = ["sst2", "subj", "cb"]
train_tasks = ["self", "others"]
""")
    return path


def test_train_tasks_self_and_others_resolve_per_cell(tmp_path, data_root, monkeypatch):
    plan = load_plan(write_transfer_plan(tmp_path, data_root, monkeypatch))
    got = {(c.values["task"], c.values["train_tasks"]): c.cfg.train_tasks for c in plan.cells}
    assert got[("sst2", "self")] == ["sst2"] and got[("sst2", "others")] == ["subj", "cb"]
    assert got[("cb", "others")] == ["sst2", "subj"]
    doc = {"base": {"task": "sst2"}, "grid": {"train_tasks": ["others"]}}
    with pytest.raises(ConfigError, match="'others' needs a \\[grid\\] task list"):
        ablate.plan_from_dict(doc)


def test_labelled_entries_cost_their_own_arguments(tmp_path, data_root, monkeypatch):
    plan = load_plan(write_transfer_plan(tmp_path, data_root, monkeypatch))
    rows = {r["selector"]: r for r in estimate(plan)["rows"] if r["seed"] == 0 and r["cell"].startswith("task=sst2")}
    V, P = 6, 5
    assert rows["random_search:3"]["select"] == 3 * V
    assert rows["policy"]["select"] == P  # table features: the pool's table rows, no prompt
    assert rows["policy_search:2"]["select"] == P + 2 * V  # the table once, then each proposal on val
    cfg = plan.cells[0].cfg
    assert ablate.select_labels(cfg, "policy") == P  # the candidates' own labels, no val label
    assert ablate.select_labels(cfg, "policy_search:2") == P + V
    cfg.selectors.args["policy_search:6s"] = {"screen": 2, "keep": 2}
    assert ablate.select_rows(cfg, "policy_search:6s") == P + 6 * 2 + 2 * (V - 2)  # screened on 2 val rows
    cfg.selectors.args["policy_search:6s"] = {"screen": V}
    assert ablate.select_rows(cfg, "policy_search:6s") == P + 6 * V  # a screen of all of val is no screen


def test_one_store_per_task_serves_every_seed_and_the_transfer_cells(tmp_path, data_root, monkeypatch):
    path = write_transfer_plan(tmp_path, data_root, monkeypatch)
    plan = load_plan(path)
    est = estimate(plan)
    per_task = 4 * 6 + 30  # 4 terminal episodes of V rows, plus the one-off table of train_pool (no val rows)
    assert est["training"] == 3 * per_task  # three stores, each counted once over 6 cells x 2 seeds
    folder = tmp_path / "runs" / "ref"
    res = invoke(str(path), "--run-dir", str(folder))
    assert res.exit_code == 0, res.output
    rows = read_rows(folder / "results.csv")
    assert len(rows) == 6 * 2 * 6 and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows][:3]
    ranked = [r for r in rows if r["selector"] == "policy_rank"]
    assert all(r["select_queries"] == 5 for r in ranked)  # the pool's table rows (P = 5), no prompt scored
    stores = sorted((tmp_path / "runs" / "rollouts").glob("*.jsonl"))
    assert len(stores) == 3 and all(len(RolloutStore(p)) == 4 for p in stores)
    transfer = [r for r in rows if r["train_tasks"] is not None and r["selector"] == "policy"]
    assert len(transfer) == 6
    assert all(r["task"] not in r["train_tasks"] and len(r["train_tasks"]) == 2 for r in transfer)
    # each store is collected once (by the first cell that needs it), then every training reads it
    trained = [r for r in rows if r["selector"] == "policy"]
    spending = [r for r in trained if r["train_queries"]]
    assert [(r["cell"], r["seed"]) for r in spending] == [("task=sst2, train_tasks=self", 0),
                                                          ("task=sst2, train_tasks=others", 0)]
    collected = sum(e.lm_queries for p in stores for e in RolloutStore(p).load())
    assert sum(r["train_queries"] for r in trained) == collected > 0
    # baselines are the same rows in the self and others cells of a task (the cache answers the second)
    base = {(r["task"], r["seed"], r["train_tasks"] is None): r for r in rows if r["selector"] == "random"}
    assert all(base[(t, s, True)]["test_acc"] == base[(t, s, False)]["test_acc"] for t, s, _ in base)
    # the policies of two seeds differ only by the training seed: same data
    docs = [json.loads(p.read_text()) for p in sorted((folder / "training").glob("*.json"))]
    assert len(docs) == 12 and all(d["policy"] for d in docs)

    # docs/results.md from the folder: headline, targets, every cell
    out_file = tmp_path / "results.md"
    res = runner.invoke(app, ["results", str(folder), "--out", str(out_file)])
    assert res.exit_code == 0, res.output
    text = out_file.read_text()
    for needle in ("| policy (seen) |", "| policy (transfer) |", "| policy_search:2 (transfer) |",
                   "| sst2 | subj | cb | average |", "native bf16"):
        assert needle in text, needle
    assert "target" not in text.lower()  # the library reports figures; the targets live in benchmarks/
    head = text[text.index("## Headline"):text.index("## Every cell")]
    zs = [ln for ln in head.splitlines() if ln.startswith("| zero_shot |")][0]
    assert zs.count("±") == 4  # three tasks and the average, each over 2 seeds
    # the targets, from the same folder, by the benchmark script
    import importlib.util

    spec = importlib.util.spec_from_file_location("reference_targets", ROOT / "benchmarks" / "reference_targets.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lines = bench.main([str(folder)])
    text = "\n".join(lines)
    for needle in ("Transfer policy vs random", "Transfer policy_rank vs random", "Training LM rows for cb"):
        assert needle in text, needle

    # an ablation folder: one lever, its table per value, averaged over the tasks
    lever = tmp_path / "lever.toml"
    lever.write_text(path.read_text().replace('selectors = ["zero_shot", "random", "random_search:3", "policy", '
                                              '"policy_search:2", "policy_rank"]', 'selectors = ["policy"]')
                     .replace('# a tiny reference grid', '# Ablation: rollout count')
                     .replace('train_tasks = ["self", "others"]', 'train_tasks = ["others"]\nepisodes = [2]'))
    res = invoke(str(lever), "--run-dir", str(tmp_path / "runs" / "lever"))
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["results", str(folder), "--ablation", str(tmp_path / "runs" / "lever"),
                              "--out", str(out_file)])
    assert res.exit_code == 0, res.output
    text = out_file.read_text()
    assert "## Ablation: rollout count" in text and "| selector | episodes | sst2 | subj | cb | average |" in text
    assert [ln for ln in text.splitlines() if ln.startswith("| policy | 2 |")][0].count("±") == 4
    # read against the reference run's own transfer policy (its episodes value), not its seen one
    ref = [ln for ln in text.splitlines() if ln.startswith("| policy (reference) |")]
    assert len(ref) == 1 and ref[0].startswith("| policy (reference) | 4 |") and ref[0].count("±") == 4
    headline = [ln for ln in text.splitlines() if ln.startswith("| policy (transfer) |")][0]
    assert ref[0].split("|")[-5:] == headline.split("|")[-5:]  # the same three tasks and average


def test_results_refuses_a_folder_without_results(tmp_path):
    res = runner.invoke(app, ["results", str(tmp_path)])
    one_line_error(res, str(tmp_path), "ablate.toml")


def test_a_rollout_count_reads_a_prefix_of_a_larger_store(tmp_path, data_root, monkeypatch):
    from rl_select.experiments.training import build_task_envs, load_rollouts

    path = write_transfer_plan(tmp_path, data_root, monkeypatch)
    plan = load_plan(path)
    cell = plan.cells[0]
    Runner(plan, tmp_path / "runs" / "x").train(cell, 0)  # collects 4 episodes
    cfg = cell.cfg.updated(seeds=[1], episodes=2)
    envs = build_task_envs(cfg, toy_scorer_factory(cfg))
    got = load_rollouts(cfg, envs)
    assert [e.episode for e in got] == [0, 1]


def test_a_results_file_with_an_older_header_is_migrated_not_misread(tmp_path):
    path = tmp_path / "results.csv"
    old = [c for c in ablate.COLUMNS if c != "q_target"]
    path.write_text(",".join(old) + "\n" + ",".join("c1" if c == "cell_id" else "0" if c == "seed" else
                                                    "random" if c == "selector" else "ok" if c == "status" else ""
                                                    for c in old) + "\n")
    ablate._append(path, {"cell_id": "c2", "seed": 1, "selector": "policy", "status": "ok", "q_target": "mc"})
    rows = ablate.read_rows(path)
    got = [(r["cell_id"], r["selector"], r["q_target"]) for r in rows]
    assert got == [("c1", "random", None), ("c2", "policy", "mc")]
    assert path.read_text().splitlines()[0].split(",") == list(ablate.COLUMNS)
    path.write_text("cell_id,shiny\nc1,1\n")
    with pytest.raises(DataError, match="'shiny'"):
        ablate._append(path, {"cell_id": "c3"})


def test_policy_probe_trains_the_critic_on_the_cells_stores(tmp_path, data_root, monkeypatch):
    path = write_transfer_plan(tmp_path, data_root, monkeypatch)
    text = path.read_text().replace('"policy_search:2", "policy_rank"]', '"policy_probe"]')
    path.write_text(text)
    with pytest.raises(ConfigError, match="policy_probe in cell .* needs agent.probe_critic = true"):
        load_plan(path)
    folder = tmp_path / "runs" / "probe"
    # first without the probe: the policies are trained and saved without a critic
    first = tmp_path / "first.toml"
    first.write_text(text.replace(', "policy_probe"]', "]"))
    assert invoke(str(first), "--run-dir", str(folder)).exit_code == 0
    from safetensors.torch import load_file

    before = {p.name: load_file(str(p)) for p in (folder / "policies").glob("*.safetensors")}
    path.write_text(text.replace("val_episodes = 0", "val_episodes = 0\nprobe_critic = true\ncritic_episodes = 3"))
    plan = load_plan(path)
    assert sum(c.cfg.agent.probe_critic for c in plan.cells) == len(plan.cells)
    res = invoke(str(path), "--run-dir", str(folder))
    assert res.exit_code == 0, res.output
    # the stored policies gained a critic; their Q-networks are the ones the first rows used
    for name, old in before.items():
        new = load_file(str(folder / "policies" / name))
        assert set(new) == set(old) | {"probe_critic"}
        assert all(torch.equal(new[k], old[k]) for k in old)
    rows = read_rows(folder / "results.csv")
    probe = [r for r in rows if r["selector"] == "policy_probe"]
    assert len(probe) == 6 * 2 and all(r["status"] == "ok" for r in probe), [r["error"] for r in probe][:2]
    assert all(r["select_queries"] == 16 * 6 for r in probe)  # 16 prompts x V = 6 val texts
    from rl_select.mdp.policy import SelectorPolicy

    transfer = [p for p in sorted((folder / "policies").glob("*.safetensors"))
                if len(SelectorPolicy.load(p).training["tasks"]) == 2]
    assert transfer and all(SelectorPolicy.load(p).critic.n_train == 2 * 3 for p in transfer)  # 2 stores x 3


# --- a run that stops early records why in its folder; results reports it, ablate resumes it ----------


def test_a_crashed_grid_records_why_and_resumes(tmp_path, data_root):
    path = write_plan(tmp_path, data_root, grid="k = [1]", selectors='["random", "random_search"]')
    folder = tmp_path / "runs" / "crash"

    def disk_full(row):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        Runner(load_plan(path), folder).run(on_row=disk_full)
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "failed" and status["error"] == "OSError: [Errno 28] No space left on device"
    assert status["command"] == "ablate" and status["time"] and status["error_type"] == "OSError"
    log = (folder / "log.txt").read_text()
    assert "run failed: OSError: [Errno 28] No space left on device" in log and "Traceback" in log

    res = runner.invoke(app, ["results", str(folder), "--out", str(tmp_path / "r.md")])
    assert res.exit_code == 0, res.output
    shown = " ".join(res.output.split())  # the printed head, as rich wrapped it
    assert "Run state: **failed** at" in shown and "No space left on device; resume with" in shown, shown
    assert "Run state: **failed**" in (tmp_path / "r.md").read_text()

    res = invoke("--run-dir", str(folder))
    assert res.exit_code == 0, res.output
    shown = " ".join(res.output.split())
    assert "resuming: the last run (failed" in shown and "No space left" in shown, shown
    assert len(read_rows(folder / "results.csv")) == 4
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "done" and status["rows"] == 4 and status["failed_rows"] == 0


def test_failed_rows_are_reported_and_run_again_on_request(tmp_path, data_root, monkeypatch):
    from rl_select.errors import ModelError
    from rl_select.selectors.random_search import RandomSearchSelector

    real = RandomSearchSelector.select

    def too_long(self, ctx):
        raise ModelError("prompt of 4096 tokens does not fit the context window of 2048; expected fewer demos")

    monkeypatch.setattr(RandomSearchSelector, "select", too_long)
    path = write_plan(tmp_path, data_root, grid="k = [1]", selectors='["random", "random_search"]')
    folder = tmp_path / "runs" / "rows"
    assert invoke(str(path), "--run-dir", str(folder)).exit_code == 0
    assert json.loads((folder / "status.json").read_text())["failed_rows"] == 2
    assert "context window" in (folder / "log.txt").read_text()
    res = runner.invoke(app, ["results", str(folder), "--out", str(tmp_path / "r.md")])
    shown = " ".join(res.output.split())
    assert "Failed rows: 2 (k=1 | random_search seed 0: prompt of 4096 tokens" in shown, shown
    assert "--retry-failed` runs them again" in shown and "Run state" not in shown  # the run itself ended

    monkeypatch.setattr(RandomSearchSelector, "select", real)  # the cause is fixed
    res = invoke("--run-dir", str(folder))
    assert "2 rows failed before and are kept; --retry-failed" in " ".join(res.output.split())
    assert sum(r["status"] == "failed" for r in read_rows(folder / "results.csv")) == 2
    res = invoke("--run-dir", str(folder), "--retry-failed")
    assert res.exit_code == 0, res.output
    rows = read_rows(folder / "results.csv")
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert [row_key(r) for r in rows] == [row_key(u) for u in ({"cell_id": c.id, "seed": s, "selector": n}
                                                               for c, s, n in load_plan(path).units)]


def test_results_names_a_run_that_failed_before_any_row(tmp_path, data_root):
    from rl_select.experiments.rundir import write_status

    folder = tmp_path / "runs" / "early"
    folder.mkdir(parents=True)
    (folder / "ablate.toml").write_text(write_plan(tmp_path, data_root).read_text())
    write_status(folder, "running", command="ablate")
    write_status(folder, "failed", error="the cache folder '/x' is not writable", error_type="CacheError")
    res = runner.invoke(app, ["results", str(folder)])
    one_line_error(res, "has no results: its run stopped (failed", "'/x' is not writable", "--run-dir")
