"""The shipped policies by name (``pretrained``, ``pretrained-critic``) wherever a policy path is accepted, and
``evaluate`` / ``baselines --policy`` with per-query and fixed-prompt policies, alone or mixed.

Model-free: policies are built by hand (or the shipped per-query one is run with the toy scorer and the hashing
embedder); the packaged folder is replaced by a temporary one where a test needs a file the install lacks.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rl_select import embeddings
from rl_select.cli import app
from rl_select.errors import MAX_MESSAGE, ConfigError, PolicyError
from rl_select.experiments import harness
from rl_select.experiments.config import RunConfig
from rl_select.experiments.reproduce import policy_rows
from rl_select.lm.spec import ScorerSpec
from rl_select.mdp import shipped
from rl_select.mdp.critic import CRITIC_FEATURES, ProbeCritic
from rl_select.mdp.features import FeatureSpec
from rl_select.mdp.per_query import FeatureView
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.policy import SelectorPolicy
from rl_select.mdp.qnet import CandidateQNet
from rl_select.selectors import PolicyProbeSelector, knn, make_selector, selector_tags
from rl_select.selectors.policy_selector import load_policy
from rl_select.selectors.tags import CostSetting
from rl_select.tasks import get_task

TRAINED = ScorerSpec(model="bundled", dtype="fp32", mode="channel", calibrate=True, model_fingerprint="f" * 24)


def _fixed(spec: ScorerSpec | None = TRAINED, critic: bool = True, training_cfg: dict | None = None) -> SelectorPolicy:
    torch.manual_seed(0)
    fs = FeatureSpec("table_labelled")
    return SelectorPolicy(CandidateQNet(fs.state_dim, fs.cand_dim, (8,)), feature_spec=fs, k=2, task=get_task("sst2"),
                          scorer_spec=spec, scorer_fingerprint="hf:x",
                          training={"agent": "offline", "config": training_cfg or {}},
                          critic=ProbeCritic(np.arange(len(CRITIC_FEATURES) + 1) / 10, n_train=3) if critic else None)


def _per_query(spec: ScorerSpec | None = TRAINED, m: int = 8, k: int = 2) -> PerQueryPolicy:
    torch.manual_seed(0)
    return PerQueryPolicy(CandidateQNet(*FeatureView.of("full").dims, (8,)), feature_set="full", m=m, k=k,
                          reward="margin", scorer_spec=spec, training={"tasks": ["trec"]})



# --- the names --------------------------------------------------------------------------------------------------


def test_pretrained_critic_is_the_packaged_fixed_prompt_policy_everywhere(package):
    path = _fixed().save(package / "critic.safetensors")
    assert shipped.resolve_policy_path("pretrained-critic") == path
    assert shipped.resolve_policy_path("x.safetensors") == Path("x.safetensors")
    assert SelectorPolicy.load("pretrained-critic").critic is not None
    assert load_policy("pretrained-critic").agent == "offline"
    probe = make_selector("policy_probe")  # no path: the shipped policy with its critic
    assert probe.path == "pretrained-critic" and probe.policy.critic is not None
    assert make_selector("policy", path="pretrained-critic").policy.k == 2


def test_policy_probe_defaults_to_the_shipped_critic_and_keeps_its_declaration():
    assert inspect.signature(PolicyProbeSelector).parameters["path"].default == shipped.PRETRAINED_CRITIC
    tags = selector_tags("policy_probe")
    assert tags.trained and not tags.val_labels and tags.lm  # a trained policy, the shipped one by default
    s = CostSetting(n_pool=20, n_val=5, n_test=None, k=2)
    assert tags.lm_rows(s) == 16 * 5 and tags.labels_read(s) == 20


@pytest.mark.parametrize("name, load", [("pretrained-critic", SelectorPolicy.load), ("pretrained", PerQueryPolicy.load),
                                        ("pretrained-critic", lambda p: make_selector("policy_probe"))])
def test_a_shipped_name_this_install_lacks_is_one_line(package, name, load):
    with pytest.raises(PolicyError) as info:
        load(name)
    msg = str(info.value)
    assert "\n" not in msg and f"({name!r}) is missing from this install" in msg and "reinstall rl_select" in msg
    assert len(msg.replace(str(package), "")) < MAX_MESSAGE


def test_a_shipped_name_of_the_other_kind_is_refused(package):
    _fixed().save(package / "critic.safetensors")
    with pytest.raises(PolicyError, match="is a fixed-prompt policy"):
        PerQueryPolicy.load("pretrained-critic")
    _per_query().save(package / "per_query.safetensors")
    with pytest.raises(PolicyError, match="'per_query_policy' document; expected 'policy'"):
        SelectorPolicy.load("pretrained")


# --- evaluate / baselines --policy: the rows and the settings ---------------------------------------------------


def _cfg(**kw) -> RunConfig:
    return RunConfig().updated(selectors={"names": ["zero_shot"]}, n_pool=20, **kw)


def test_a_per_query_policy_is_a_policy_pq_row_with_its_scorer_and_k(tmp_path):
    path = str(_per_query(k=3).save(tmp_path / "pq.safetensors"))
    cfg = policy_rows([path], _cfg(k=5, mode="direct", calibrate=False))
    assert cfg.selectors.names == ["zero_shot", "policy_pq"]
    assert cfg.selectors.args["policy_pq"] == {"path": path, "force": False}
    assert (cfg.lm.mode, cfg.lm.calibrate, cfg.lm.model, cfg.k) == ("channel", True, "bundled", 3)
    assert cfg.task == "sst2"  # task-agnostic: the user's task


def test_an_explicit_other_scorer_or_k_is_refused_in_one_line_unless_forced(tmp_path):
    path = str(_per_query().save(tmp_path / "pq.safetensors"))
    with pytest.raises(PolicyError) as info:
        policy_rows([path], _cfg(mode="direct"), explicit={"mode"})
    msg = str(info.value)
    assert "\n" not in msg and "mode: trained 'channel' vs asked 'direct'" in msg and "--force" in msg
    cfg = policy_rows([path], _cfg(mode="direct"), explicit={"mode"}, force=True)
    assert cfg.lm.mode == "direct" and cfg.selectors.args["policy_pq"]["force"] is True
    with pytest.raises(ConfigError, match=r"k=3 but per-query policy .* trained for k=2; expected no --k or --k 2"):
        policy_rows([path], _cfg(k=3), explicit={"k"})
    with pytest.raises(ConfigError, match=r"M=8 neighbours per query but the pool has 4; expected --n-pool >= 8"):
        policy_rows([path], RunConfig().updated(n_pool=4))


def test_a_fixed_and_a_per_query_policy_run_together_on_one_scorer(tmp_path):
    trained = RunConfig().updated(n_pool=12, n_val=5).to_dict()
    fixed = str(_fixed(training_cfg=trained).save(tmp_path / "fixed.safetensors"))
    pq = str(_per_query().save(tmp_path / "pq.safetensors"))
    cfg = policy_rows([fixed, pq], _cfg())
    assert cfg.selectors.names == ["zero_shot", "policy:offline", "policy_pq"]
    assert cfg.selectors.args["policy:offline"]["path"] == fixed and cfg.selectors.args["policy_pq"]["path"] == pq
    assert (cfg.lm.mode, cfg.lm.dtype, cfg.splits.n_pool, cfg.k) == ("channel", "fp32", 12, 2)
    other = str(_per_query(spec=TRAINED.replace(calibrate=False)).save(tmp_path / "pq-raw.safetensors"))
    with pytest.raises(PolicyError, match=r"different scorers \(calibrate: True vs False\)"):
        policy_rows([fixed, other], _cfg())
    assert policy_rows([fixed, other], _cfg(), force=True).lm.calibrate is True  # the fixed-prompt policy's


def test_the_pretrained_row_of_a_config_is_reused_and_another_policy_gets_its_own(tmp_path):
    cfg = RunConfig().updated(selectors={"names": ["zero_shot", "policy_pq"],
                                         "args": {"policy_pq": {"mode": "greedy"}}})
    got = policy_rows(["pretrained"], cfg)
    assert got.selectors.names == ["zero_shot", "policy_pq"]
    assert got.selectors.args["policy_pq"] == {"mode": "greedy", "path": "pretrained", "force": False}
    path = str(_per_query(spec=PerQueryPolicy.load("pretrained").scorer_spec, k=4).save(tmp_path / "mine.safetensors"))
    got = policy_rows(["pretrained", path], cfg)
    assert got.selectors.names == ["zero_shot", "policy_pq", "policy_pq:mine"]
    assert got.selectors.args["policy_pq:mine"] == {"path": path, "force": False}


# --- the CLI ----------------------------------------------------------------------------------------------------


class Built(Exception):
    """The CLI reached the scorer build: carries the config it would build from."""


def _data(folder: Path, n: int = 14) -> Path:
    folder.mkdir()
    rows = [{"text": f"{w} film number {i}", "label": lab} for i in range(n)
            for w, lab in (("good", "positive"), ("bad", "negative"))]
    for name, part in (("train.jsonl", rows), ("test.jsonl", rows[:8])):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


@pytest.fixture
def capture(tmp_path, monkeypatch):
    def build(cfg, spec):
        raise Built(cfg)

    monkeypatch.setattr(harness, "build_scorer", build)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return _data(tmp_path / "data")


def test_baselines_takes_a_fixed_and_a_per_query_policy_in_one_list(capture, tmp_path):
    trained = RunConfig().updated(data=str(capture), n_pool=10, n_val=4, n_test=4, seeds=[0]).to_dict()
    fixed = _fixed(training_cfg=trained).save(tmp_path / "fixed.safetensors")
    pq = _per_query().save(tmp_path / "pq.safetensors")
    res = CliRunner().invoke(app, ["baselines", "--selectors", "zero_shot", "--policy", f"{fixed},{pq}",
                                   "--cache", "none"])
    assert isinstance(res.exception, Built), res.output
    cfg = res.exception.args[0]
    assert cfg.selectors.names == ["zero_shot", "policy:offline", "policy_pq"]
    assert (cfg.lm.mode, cfg.lm.calibrate, cfg.k, cfg.splits.n_pool) == ("channel", True, 2, 10)


def test_evaluate_refuses_a_per_query_policy_with_another_scorer_before_the_model(capture, tmp_path):
    pq = _per_query().save(tmp_path / "pq.safetensors")
    res = CliRunner().invoke(app, ["evaluate", "--policy", str(pq), "--data", str(capture), "--n-pool", "10",
                                   "--no-calibrate", "--cache", "none"])
    assert res.exit_code == 2 and not isinstance(res.exception, Built), res.output
    errors = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(errors) == 1 and "calibrate: trained True vs asked False" in errors[0] and "--force" in errors[0]


def test_evaluate_policy_pretrained_runs_offline_with_test_doubles(tmp_path, monkeypatch):
    from rl_select.testing import CachedToyScorer

    monkeypatch.setattr(harness, "build_scorer", lambda cfg, spec: CachedToyScorer(spec, calibrate=cfg.lm.calibrate))
    monkeypatch.setattr(embeddings, "MiniLMEmbedder", lambda *a, **kw: embeddings.HashingEmbedder(64))
    monkeypatch.setattr(knn, "MiniLMEmbedder", lambda *a, **kw: embeddings.HashingEmbedder(64))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    data = _data(tmp_path / "data")
    res = CliRunner().invoke(app, ["evaluate", "--policy", "pretrained", "--task", "sst2", "--data", str(data),
                                   "--n-pool", "16", "--n-val", "4", "--n-test", "6", "--seeds", "0",
                                   "--cache", "none"])
    assert res.exit_code == 0, (res.output, res.exception)
    [run] = (tmp_path / "runs").iterdir()
    doc = json.loads((run / "results.json").read_text())
    assert [r["selector"] for r in doc["rows"]] == ["policy_pq"]
    assert doc["config"]["selectors"]["args"]["policy_pq"]["path"] == "pretrained" and doc["config"]["k"] == 4
    assert doc["config"]["lm"]["calibrate"] is True  # the shipped policy's training scorer


def test_the_shipped_per_query_file_is_small_and_its_critic_twin_is_wired(package):
    real = Path(shipped.__file__).resolve().parent.parent / "pretrained" / "per_query.safetensors"
    assert real.stat().st_size < 1_000_000
    shutil.copy(real, package / "per_query.safetensors")
    assert PerQueryPolicy.load("pretrained").k == 4
    assert shipped.packaged_path("pretrained-critic") == package / "critic.safetensors"


def test_pretrained_stands_for_the_large_pool_policy_from_a_thousand_rows(package):
    assert shipped.per_query_for_pool("pretrained", 5000) == "pretrained"  # this install lacks the large one
    _per_query(m=8).save(package / "per_query.safetensors")
    _per_query(m=6).save(package / "per_query_pool1000.safetensors")
    assert shipped.per_query_for_pool("pretrained", shipped.LARGE_POOL_MIN - 1) == "pretrained"
    assert shipped.per_query_for_pool("pretrained", shipped.LARGE_POOL_MIN) == "pretrained-large"
    assert shipped.per_query_for_pool("mine.safetensors", 5000) == "mine.safetensors"
    sel = make_selector("policy_pq")
    assert sel.policy_for(100).m == 8 and sel.policy_for(1000).m == 6
    assert sel.policy_for(2000) is sel.policy_for(1000)  # loaded once
    assert make_selector("policy_pq", path="pretrained-large").policy_for(100).m == 6  # a named file as it is
