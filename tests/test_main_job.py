"""The README's main job: ``rl-select baselines --config configs/main.toml``.

The config is parsed and run end to end with test doubles (a toy scorer, a hashing embedder, tiny data): the
real run loads the LM and is timed by hand; here nothing loads a model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rl_select import embeddings
from rl_select.cli import app
from rl_select.experiments import harness
from rl_select.experiments.config import load_config
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.selectors import knn, selector_tags

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "configs" / "main.toml"
SELECTORS = ["zero_shot", "random", "knn", "knn_majority", "policy_pq"]


def test_main_config_is_the_promised_job():
    cfg = load_config(MAIN)
    assert (cfg.task, cfg.k, cfg.seeds) == ("sst2", 4, [0, 1, 2])
    assert cfg.lm.model == "bundled" and cfg.lm.calibrate and cfg.lm.backend == "hf"
    assert cfg.splits.n_test >= 200
    assert cfg.selectors.names == SELECTORS
    assert "policy_pq" not in cfg.selectors.args, "the pretrained policy is policy_pq's default: no path in the config"


def test_no_selector_of_the_main_job_reads_validation_labels():
    cfg = load_config(MAIN)
    tags = {name: selector_tags(name) for name in cfg.selectors.names}
    assert [n for n, t in tags.items() if t.val_labels] == []
    assert [n for n, t in tags.items() if t.trained] == ["policy_pq"]
    assert [n for n, t in tags.items() if not t.pool_labels] == ["zero_shot"]


def test_policy_pq_defaults_to_the_shipped_policy_and_fits_the_main_job():
    cfg = load_config(MAIN)
    jobs = dict(harness.make_jobs(cfg))
    policy = jobs["policy_pq"].policy
    shipped = PerQueryPolicy.load("pretrained")
    assert jobs["policy_pq"].path == "pretrained"
    assert (policy.k, policy.m, policy.feature_set) == (shipped.k, shipped.m, shipped.feature_set)
    assert policy.k == cfg.k and cfg.splits.n_pool >= policy.m
    # the scorer the main job builds is the policy's training scorer (dtype: "auto" resolves on the machine)
    assert cfg.lm.differences(policy.scorer_spec) == []


@pytest.fixture
def toy_run(monkeypatch, tmp_path):
    """``baselines`` with a toy LM, a hashing embedder and a tiny SST-2-shaped data folder."""
    from rl_select.testing import CachedToyScorer

    monkeypatch.setattr(harness, "build_scorer", lambda cfg, spec: CachedToyScorer(spec, calibrate=cfg.lm.calibrate))
    monkeypatch.setattr(embeddings, "MiniLMEmbedder", lambda *a, **kw: embeddings.HashingEmbedder(64))
    monkeypatch.setattr(knn, "MiniLMEmbedder", lambda *a, **kw: embeddings.HashingEmbedder(64))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    rows = [{"text": f"{word} film number {i}", "label": label}
            for i in range(14) for word, label in (("good", "positive"), ("bad", "negative"))]
    data = tmp_path / "data"
    data.mkdir()
    for name, part in (("train.jsonl", rows), ("test.jsonl", rows[:8])):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    return data


def test_the_main_job_runs_with_test_doubles(toy_run, tmp_path):
    result = CliRunner().invoke(app, ["baselines", "--config", str(MAIN), "--data", str(toy_run), "--n-pool", "16",
                                      "--n-val", "4", "--n-test", "6", "--seeds", "0,1", "--cache", "none"])
    assert result.exit_code == 0, (result.output, result.exception)
    for name in SELECTORS:
        assert re.search(rf"\b{name}\b", result.output), name
    assert "calibrated" in result.output
    run_dir = next((tmp_path / "runs").iterdir())
    doc = json.loads((run_dir / "results.json").read_text())
    assert [s["selector"] for s in doc["summary"]] == SELECTORS
    assert all(s["seeds"] == 2 for s in doc["summary"])
    assert (run_dir / "test_accuracy.png").is_file()
