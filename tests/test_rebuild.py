"""``rl-select reproduce``: every shipped policy records the commands that rebuild it, and the command runs them.

Model-free: ``train`` and the per-query stages run in process with the toy scorer and the hashing embedder; the
packaged folder is a temporary one except where the shipped per-query file itself is checked (read only).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from rl_select.cli import app
from rl_select.data import default_data_root
from rl_select.embeddings import HashingEmbedder
from rl_select.errors import PolicyError
from rl_select.experiments import harness, rebuild
from rl_select.experiments import per_query_runs as pqr
from rl_select.mdp import shipped
from rl_select.mdp.artifacts import METADATA_KEY
from rl_select.mdp.per_query import FeatureView
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.policy import SelectorPolicy
from rl_select.mdp.qnet import CandidateQNet
from rl_select.testing import CachedToyScorer, toy_scorer_factory

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _doc(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()[METADATA_KEY])



def _in_process(argv) -> int:
    """Runs a rebuild command with this process's test doubles (instead of a subprocess with the real model)."""
    res = runner.invoke(app, list(argv[1:]))
    assert res.exit_code == 0, (argv, res.output, res.exception)
    return res.exit_code


# --- the shipped per-query policy's record ----------------------------------------------------------------------


def test_the_shipped_per_query_policy_records_its_committed_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    commands = rebuild.recorded_commands("pretrained")
    config = "configs/per_query.json"
    assert commands == [["rl-select", "per-query", "collect", "--config", config],
                        ["rl-select", "per-query", "general", "--config", config, "--feature-sets", "full",
                         "--rewards", "margin"]]
    policy = PerQueryPolicy.load("pretrained")
    assert (policy.feature_set, policy.reward) == ("full", "margin")
    fields = asdict(pqr.PerQueryRunConfig.from_file(ROOT / config))
    recorded = policy.training["run_config"]
    assert {k: v for k, v in recorded.items() if fields[k] != v} == {}  # the config rebuilds the recorded run
    plan = rebuild.plan_rebuild("pretrained", work_dir="w")
    assert plan.output == Path("w/policies/general-full-margin.safetensors")
    assert all(c[-2:] == ["--run-dir", "w"] for c in plan.commands)
    assert shipped.packaged_path("pretrained").stat().st_size < 1_000_000


def test_reproduce_dry_run_prints_the_recorded_commands(monkeypatch):
    monkeypatch.chdir(ROOT)
    res = runner.invoke(app, ["reproduce", "pretrained", "--dry-run", "--work-dir", "runs/x"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [
        "rl-select per-query collect --config configs/per_query.json --run-dir runs/x",
        "rl-select per-query general --config configs/per_query.json --feature-sets full --rewards margin "
        "--run-dir runs/x"]
    assert "runs/x/policies/general-full-margin.safetensors" in res.output


def test_commands_are_rl_select_commands_joined_by_and():
    assert rebuild.parse_commands("rl-select a --x 'b c' && rl-select d") == [["rl-select", "a", "--x", "b c"],
                                                                             ["rl-select", "d"]]
    for bad in ("make all", "rl-select a &&", "rl-select a && rm -rf x", "rl-select 'a"):
        with pytest.raises(PolicyError, match="expected rl-select commands joined by &&|is not a command line"):
            rebuild.parse_commands(bad)


def test_record_resaves_through_the_class_with_the_same_tensors(package):
    torch.manual_seed(0)
    path = PerQueryPolicy(CandidateQNet(*FeatureView.of("full").dims, (8,)), feature_set="full", m=8, k=2,
                          reward="margin", training={"rebuild": "rl-select per-query general --config CONFIG"}
                          ).save(package / "per_query.safetensors")
    before = _doc(path)
    res = runner.invoke(app, ["reproduce", "pretrained", "--record", "make it"])
    assert res.exit_code == 2 and "expected rl-select commands joined by &&" in res.output
    assert _doc(path) == before
    text = "rl-select per-query collect --config c.json && rl-select per-query general --config c.json"
    res = runner.invoke(app, ["reproduce", "pretrained", "--record", text])
    assert res.exit_code == 0, res.output
    after = _doc(path)
    assert after["tensors_sha256"] == before["tensors_sha256"] in res.output
    assert after["sha256"] != before["sha256"] and after["training"]["rebuild"] == text
    assert {k: v for k, v in after.items() if k not in ("sha256", "training")} == \
        {k: v for k, v in before.items() if k not in ("sha256", "training")}
    assert PerQueryPolicy.load("pretrained").training["rebuild"] == text  # the hash checks out


def test_a_policy_without_a_record_is_refused_naming_the_fix(package):
    torch.manual_seed(0)
    PerQueryPolicy(CandidateQNet(*FeatureView.of("full").dims, (8,)), feature_set="full", m=8, k=2,
                   reward="margin").save(package / "per_query.safetensors")
    with pytest.raises(PolicyError, match=r"records no rebuild command .*rl-select reproduce pretrained --record"):
        rebuild.plan_rebuild("pretrained")


# --- train records its command; reproduce runs it ---------------------------------------------------------------


def test_an_invocation_repeats_its_options_as_typed():
    from rl_select.cli.common import COMMAND_KEYS, Invocation

    call = Invocation("train", Path("my configs/c.toml"), {"k": 4, "calibrate": False, "allow_stop": True,
                                                           "seeds": "0,1", "out": "x", "train_steps": 9, "agent": None})
    assert call.line(skip=("out",)) == ("rl-select train --config 'my configs/c.toml' --k 4 --no-calibrate "
                                        "--allow-stop --seeds 0,1 --train-steps 9")
    assert call.line("collect") == "rl-select collect --config 'my configs/c.toml' --k 4 --no-calibrate " \
                                   "--allow-stop --seeds 0,1 --out x"  # collect takes no --train-steps
    assert COMMAND_KEYS["bench collect"] != COMMAND_KEYS["collect"]


@pytest.fixture
def toy_train(tmp_path, monkeypatch):
    """A data folder and a run config for ``collect`` / ``train`` with the toy scorer."""
    monkeypatch.setattr(harness, "scorer_factory", toy_scorer_factory)
    monkeypatch.setattr(harness, "build_scorer", lambda cfg, spec: pytest.fail("a model load"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"text": f"{w} film number {i}", "label": lab} for i in range(20)
            for w, lab in (("good", "positive"), ("bad", "negative"))]
    for name in ("train.jsonl", "test.jsonl"):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.toml").write_text(f"""task = "sst2"
data = "{data}"
k = 2
seeds = [0]
cache = "none"
[splits]
n_pool = 8
n_val = 4
n_test = 4
train_pool = 24
[mdp]
n_candidates = 4
feature_set = "table_labelled"
[agent]
name = "offline"
episodes = 6
train_steps = 5
val_episodes = 0
probe_critic = true
""")
    return tmp_path


def test_train_records_its_rebuild_and_reproduce_runs_it(toy_train, package):
    record = ("rl-select collect --config c.toml --n-val 4 && "
              "rl-select train --config c.toml --n-val 4 --train-steps 6")
    assert runner.invoke(app, ["collect", "--config", "c.toml", "--n-val", "4", "--out", "first"]).exit_code == 0
    res = runner.invoke(app, ["train", "--config", "c.toml", "--n-val", "4", "--train-steps", "6", "--out", "first"])
    assert res.exit_code == 0, res.output
    [trained] = Path("first").glob("*/policy.safetensors")
    policy = SelectorPolicy.load(trained)
    assert policy.training["rebuild"] == record and policy.critic is not None  # --out: where, not what
    shutil.copy(trained, package / "critic.safetensors")

    res = runner.invoke(app, ["reproduce", "pretrained-critic", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [
        "rl-select collect --config c.toml --n-val 4 --out runs/reproduce/pretrained-critic",
        "rl-select train --config c.toml --n-val 4 --train-steps 6 --out runs/reproduce/pretrained-critic"]
    assert not Path("runs").exists()

    original = (package / "critic.safetensors").read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rebuild, "run_command", _in_process)
        res = runner.invoke(app, ["reproduce", "pretrained-critic", "--out", "rebuilt.safetensors"])
    assert res.exit_code == 0, (res.output, res.exception)
    again = SelectorPolicy.load("rebuilt.safetensors")
    assert again.training["rebuild"] == record and again.critic is not None
    assert (package / "critic.safetensors").read_bytes() == original  # --out: the package left alone
    assert list(Path("runs/reproduce/pretrained-critic").glob("*/policy.safetensors"))


def test_reproduce_refuses_bad_input_before_running_anything(toy_train, package, monkeypatch):
    monkeypatch.setattr(rebuild, "run_command", lambda argv: pytest.fail("ran a command"))
    res = runner.invoke(app, ["reproduce", "pretrained-critic"])
    assert res.exit_code == 2 and "missing from this install" in res.output
    torch.manual_seed(0)
    PerQueryPolicy(CandidateQNet(*FeatureView.of("full").dims, (8,)), feature_set="full", m=8, k=2, reward="margin",
                   training={"rebuild": "rl-select per-query collect --config gone.json"}
                   ).save(package / "per_query.safetensors")
    res = runner.invoke(app, ["reproduce", "pretrained"])
    assert res.exit_code == 2 and "config 'gone.json'" in res.output and "repository root" in res.output
    Path("c.json").write_text("{}")
    PerQueryPolicy(CandidateQNet(*FeatureView.of("full").dims, (8,)), feature_set="full", m=8, k=2, reward="margin",
                   training={"rebuild": "rl-select per-query collect --config c.json"}
                   ).save(package / "per_query.safetensors")
    res = runner.invoke(app, ["reproduce", "pretrained"])
    assert res.exit_code == 2 and "expected a command that writes a policy" in res.output
    for argv, words in ((["reproduce", "nosuch"], "no shipped policy 'nosuch'"),
                        (["reproduce", "pretrained", "--out", "data"], "is a folder"),
                        (["reproduce", "pretrained", "--work-dir", "c.toml"], "is a file")):
        res = runner.invoke(app, argv)
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and words in lines[0], res.output


# --- the per-query general stage records its config; reproduce runs it -------------------------------------------


@pytest.mark.skipif(default_data_root() is None, reason="needs ../shared/data")
def test_per_query_general_records_its_config_and_reproduce_rebuilds_the_same_policy(tmp_path, package, monkeypatch):
    class ToySpec:
        calibrate = True

        def factory(self, cache):
            return lambda spec: CachedToyScorer(spec, cache=cache, calibrate=True)

        def to_dict(self):
            return {"model": "toy"}

    monkeypatch.setattr(pqr, "MiniLMEmbedder", lambda: HashingEmbedder(64))
    monkeypatch.setattr(pqr.PerQueryRunConfig, "scorer_spec", lambda self: ToySpec())
    monkeypatch.setenv("RL_SELECT_DATA", str(default_data_root().resolve()))
    monkeypatch.chdir(tmp_path)
    Path("pq.json").write_text(json.dumps({
        "train_tasks": ["sst2", "trec"], "eval_tasks": ["sst2"], "n_pool": 24, "n_val": 10, "n_test": 12, "m": 6,
        "k": 2, "n_queries": 10, "episodes": 20, "train_steps": 10, "hidden": [8], "cache": "none"}))
    for stage in (["collect"], ["general", "--feature-sets", "full", "--rewards", "margin"]):
        res = runner.invoke(app, ["per-query", stage[0], "--config", "pq.json", "--run-dir", "first", *stage[1:]])
        assert res.exit_code == 0, (res.output, res.exception)
    made = pqr.general_policy_path("first", "full", "margin")
    record = ("rl-select per-query collect --config pq.json && "
              "rl-select per-query general --config pq.json --feature-sets full --rewards margin")
    assert PerQueryPolicy.load(made).training["rebuild"] == record
    shutil.copy(made, package / "per_query.safetensors")
    monkeypatch.setattr(rebuild, "run_command", _in_process)
    res = runner.invoke(app, ["reproduce", "pretrained", "--work-dir", "again"])
    assert res.exit_code == 0, (res.output, res.exception)
    assert pqr.general_policy_path("again", "full", "margin").is_file()
    rebuilt = package / "per_query.safetensors"  # replaced in the package
    assert PerQueryPolicy.load("pretrained").training["rebuild"] == record
    assert _doc(rebuilt)["tensors_sha256"] == _doc(made)["tensors_sha256"]  # the same seeds, the same weights
