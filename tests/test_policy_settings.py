"""experiments.reproduce: a policy's recorded scorer and task become the run's, explicit clashes are refused.

Fast (no model): policies are built by hand with a recorded ScorerSpec; the CLI tests stop at the model
load and check what would have been built.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rl_select.cli import app
from rl_select.errors import MAX_MESSAGE, PolicyError
from rl_select.experiments import harness
from rl_select.experiments.config import RunConfig
from rl_select.experiments.reproduce import policy_settings
from rl_select.lm.spec import ScorerSpec
from rl_select.mdp.features import FeatureSpec
from rl_select.mdp.policy import SelectorPolicy
from rl_select.mdp.qnet import CandidateQNet
from rl_select.tasks import get_task, resolve_task

TRAINED = ScorerSpec(model="bundled", dtype="fp32", mode="channel", calibrate=True, model_fingerprint="f" * 24)


def _policy(task=None, spec: ScorerSpec | None = TRAINED, training_cfg: dict | None = None) -> SelectorPolicy:
    torch.manual_seed(0)
    fs = FeatureSpec("active")
    return SelectorPolicy(CandidateQNet(fs.state_dim, fs.cand_dim, (8,)), feature_spec=fs, k=2,
                          task=task or get_task("sst2"), scorer_spec=spec, scorer_fingerprint="hf:x",
                          training={"agent": "dqn", "config": training_cfg or {}})


def test_recorded_scorer_and_splits_become_the_runs():
    trained_cfg = RunConfig().updated(n_pool=7, n_val=5, data="/somewhere").to_dict()
    cfg, task = policy_settings([_policy(training_cfg=trained_cfg)], RunConfig(), explicit=())
    assert (cfg.lm.mode, cfg.lm.calibrate, cfg.lm.dtype, cfg.lm.model_fingerprint) == ("channel", True, "fp32", None)
    assert (cfg.splits.n_pool, cfg.splits.n_val, cfg.data) == (7, 5, "/somewhere")
    assert task == get_task("sst2") and cfg.task == "sst2"
    # explicit settings that agree are fine; explicit split sizes win
    cfg, _ = policy_settings([_policy(training_cfg=trained_cfg)], RunConfig().updated(calibrate=True, n_val=9),
                             explicit={"calibrate", "n_val"})
    assert cfg.lm.calibrate and cfg.splits.n_val == 9


def test_explicit_clash_is_refused_naming_both_unless_forced():
    asked = RunConfig().updated(calibrate=False, mode="direct")
    with pytest.raises(PolicyError) as info:
        policy_settings([_policy()], asked, explicit={"calibrate", "mode"})
    msg = str(info.value)
    assert "\n" not in msg and "mode: trained 'channel' vs asked 'direct'" in msg and "calibrate: trained True" in msg
    cfg, _ = policy_settings([_policy()], asked, explicit={"calibrate", "mode"}, force=True)
    assert (cfg.lm.mode, cfg.lm.calibrate) == ("direct", False)


def test_a_custom_task_spec_is_found_from_the_policy_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("RL_SELECT_CACHE", str(tmp_path / "cache" / "scores.sqlite"))
    d = get_task("sst2").to_dict()
    d.update(name="moviesent", template="Film review: {text}\nVerdict: {label}", hf=None)
    custom = type(get_task("sst2")).from_dict(d)
    cfg, task = policy_settings([_policy(task=custom)], RunConfig(), explicit=())
    assert task == custom and Path(cfg.task).is_file() and resolve_task(cfg.task) == custom
    with pytest.raises(PolicyError, match="trained on task 'moviesent'"):
        policy_settings([_policy(task=custom)], RunConfig().updated(task="sst2"), explicit={"task"})


def test_another_task_is_refused_in_one_short_line_naming_the_fields():
    with pytest.raises(PolicyError) as info:
        policy_settings([_policy()], RunConfig().updated(task="agnews"), explicit={"task"})
    msg = str(info.value)
    assert "trained on task 'sst2' but task 'agnews' was asked" in msg and "labels, verbalizers, template" in msg
    assert "{" not in msg and "\n" not in msg and len(msg) < MAX_MESSAGE, msg


def test_policies_of_different_scorers_are_refused_together():
    with pytest.raises(PolicyError, match="different scorers"):
        policy_settings([_policy(), _policy(spec=TRAINED.replace(calibrate=False))], RunConfig(), explicit=())


class Built(Exception):
    """The CLI reached the scorer build: carries the config it would build from."""


@pytest.fixture
def policy_file(tmp_path, monkeypatch) -> Path:
    def capture(cfg, spec):
        raise Built(cfg)

    monkeypatch.setattr(harness, "build_scorer", capture)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data"
    folder.mkdir()
    rows = [json.dumps({"text": f"{w} film {i}", "label": lab}) for i in range(12)
            for w, lab in (("good", "positive"), ("bad", "negative"))]
    for name in ("train.jsonl", "test.jsonl"):
        (folder / name).write_text("\n".join(rows) + "\n")
    trained = RunConfig().updated(data=str(folder), n_pool=6, n_val=4, n_test=4, seeds=[0]).to_dict()
    return _policy(training_cfg=trained).save(tmp_path / "policy.safetensors")


@pytest.mark.parametrize("command", [["evaluate"], ["baselines", "--selectors", "zero_shot"]])
def test_evaluate_and_baselines_rebuild_the_policys_scorer(policy_file, command):
    res = CliRunner().invoke(app, [*command, "--policy", str(policy_file), "--seeds", "0", "--cache", "none"])
    assert isinstance(res.exception, Built), res.output
    cfg = res.exception.args[0]
    assert (cfg.lm.mode, cfg.lm.calibrate, cfg.lm.dtype) == ("channel", True, "fp32")
    assert cfg.splits.n_pool == 6 and any(n.startswith("policy:") for n in cfg.selectors.names)


def test_evaluate_refuses_another_setting_in_one_line(policy_file):
    res = CliRunner().invoke(app, ["evaluate", "--policy", str(policy_file), "--no-calibrate", "--cache", "none"])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "calibrate: trained True vs asked False" in errors[0] and "--force" in errors[0]
