"""A policy reproduces its training: `rl-select select` rebuilds the scorer and task recorded in the file.

Issue 10's two bugs: `select` used to rebuild the task by name and the scorer from defaults, so a policy
trained with --calibrate --mode channel on a custom task-spec file ran uncalibrated in direct mode, or
could not find its task. Marker: model (trains a tiny DQN on the real SmolLM2).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rl_select.cli import app
from rl_select.mdp.policy import SelectorPolicy
from rl_select.tasks import get_task

pytestmark = pytest.mark.model


def _uids(output: str) -> list[str]:
    """The uids column of `select`'s table (rows like '│ 1 │ train.jsonl:17 │ positive │ ...')."""
    return re.findall(r"^\W*\d+\W+(\S+\.jsonl:\d+)\s", output, flags=re.M)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> dict:
    tmp = tmp_path_factory.mktemp("repro")
    spec = get_task("sst2").to_dict()
    spec.update(name="moviesent", instruction="Is the review positive or negative?",
                template="Film review: {text}\nVerdict: {label}", hf=None)
    spec_file = tmp / "moviesent.json"
    spec_file.write_text(json.dumps(spec))
    args = ["train", "--task", str(spec_file), "--data", str(data_root / "sst2"), "--calibrate", "--mode",
            "channel", "--dtype", "fp32", "--agent", "dqn", "--train-steps", "12", "--k", "2", "--n-pool", "6",
            "--n-val", "4", "--n-candidates", "4", "--train-pool", "24", "--seeds", "3", "--hidden", "8",
            "--cache", str(tmp / "cache.sqlite"), "--out", str(tmp / "runs")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    run = next((tmp / "runs").iterdir())
    return {"tmp": tmp, "policy": run / "policy.safetensors", "spec": spec,
            "results": json.loads((run / "results.json").read_text())}


def test_policy_file_records_the_scorer_and_the_task(trained):
    pol = SelectorPolicy.load(trained["policy"])
    assert pol.task.name == "moviesent" and pol.task.template == trained["spec"]["template"]
    lm = pol.scorer_spec
    assert (lm.backend, lm.model, lm.mode, lm.calibrate, lm.length_norm, lm.dtype) == (
        "hf", "bundled", "channel", True, False, "fp32")
    assert lm.model_fingerprint and len(lm.model_fingerprint) == 24


def test_select_gives_the_training_runs_own_choice(trained):
    res = CliRunner().invoke(app, ["select", "--policy", str(trained["policy"]),
                                   "--cache", str(trained["tmp"] / "cache.sqlite")])
    assert res.exit_code == 0, res.output
    assert "channel, calibrated" in res.output and "task moviesent" in res.output
    own = trained["results"]["policy_selection"]
    assert own["seed"] == 3 and len(own["demos"]) == 2
    assert _uids(res.output) == own["demos"]
    assert "Film review:" in res.output  # the prompt uses the policy's own template


def test_select_refuses_other_scorer_settings_unless_forced(trained):
    base = ["select", "--policy", str(trained["policy"]), "--cache", str(trained["tmp"] / "cache.sqlite")]
    res = CliRunner().invoke(app, [*base, "--no-calibrate"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "calibrate: trained True vs asked False" in lines[0], res.output
    res = CliRunner().invoke(app, [*base, "--mode", "direct", "--task", "sst2", "--force"])
    assert res.exit_code == 0, res.output
    assert "direct" in res.output and "task sst2" in res.output
