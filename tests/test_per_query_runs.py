"""The per-query run stages end to end on real shared task files, with the toy scorer and the hashing embedder
(no model): collect resumes, leave-one-task-out training, evaluation rows, adaptation to a task's own pool, report."""

from __future__ import annotations

import csv

import pytest

from agents.per_query import PerQueryStore
from rl_select.data import default_data_root
from rl_select.embeddings import HashingEmbedder
from rl_select.errors import ConfigError, DataError
from rl_select.experiments import per_query_runs as pqr
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.testing import CachedToyScorer

pytestmark = pytest.mark.skipif(default_data_root() is None, reason="needs ../shared/data")


@pytest.fixture
def toy_run(monkeypatch, tmp_path):
    """PerQueryRun with the toy scorer and the hashing embedder (the real task files)."""
    monkeypatch.setattr(pqr, "MiniLMEmbedder", lambda: HashingEmbedder(64))
    monkeypatch.setattr(pqr.PerQueryRunConfig, "scorer_spec", lambda self: _ToySpec())
    return pqr.PerQueryRunConfig(train_tasks=["sst2", "trec", "mpqa"], eval_tasks=["sst2"], n_pool=24, n_val=10,
                                 n_test=12, m=6, k=2, n_queries=20, episodes=60, seeds=[0], reward="margin",
                                 train_steps=40, hidden=[8], adapt_episodes=24, adapt_repeat=2,
                                 cache=str(tmp_path / "cache.sqlite"))


class _ToySpec:
    """Stands in for the bundled model's ScorerSpec: builds toy scorers."""

    calibrate = True

    def factory(self, cache):
        return lambda spec: CachedToyScorer(spec, cache=cache, calibrate=True)

    def to_dict(self):
        return {"model": "toy"}


def test_stages_collect_train_evaluate_adapt_and_report(toy_run, tmp_path):
    cfg, run_dir = toy_run, tmp_path / "run"
    lines = []
    pqr.run_stage("collect", run_dir, cfg, say=lines.append)
    assert all(len(PerQueryStore(run_dir / "stores" / f"{t}.jsonl")) == 60 for t in cfg.train_tasks)
    assert {e.policy for e in PerQueryStore(run_dir / "stores" / "sst2.jsonl").load()} == {
        "random", "knn_perturbed", "one_label"}  # 60 episodes over 20 queries: each behaviour in turn
    before = (run_dir / "stores" / "trec.jsonl").read_bytes()
    pqr.run_stage("collect", run_dir, cfg, say=lines.append)  # nothing left to collect
    assert (run_dir / "stores" / "trec.jsonl").read_bytes() == before
    pqr.run_stage("evaluate", run_dir, cfg, split="val", say=lines.append)
    policy = PerQueryPolicy.load(run_dir / "policies" / "loo-sst2-full-margin.safetensors")
    assert policy.training["tasks"] == ["trec", "mpqa"]  # never the held-out task
    # its answer stacker: fitted on the rule prompts of the same training tasks' first queries, LM rows counted
    assert policy.stacker is not None and policy.stacker_training["tasks"] == ["trec", "mpqa"]
    assert sorted(f.name for f in (run_dir / "rule_stores").iterdir()) == ["rules-mpqa.jsonl", "rules-trec.jsonl"]
    assert policy.stacker_training["rows"] == [20, 20]  # n_queries 20 < stacker_queries 300
    assert all(n >= 20 * 4 for n in policy.stacker_training["lm_rows_per_task"].values())
    assert any("rule prompts" in line for line in lines)
    pqr.run_stage("adapt", run_dir, cfg, split="val", say=lines.append)
    adapted = PerQueryPolicy.load(run_dir / "policies" / "adapt-sst2-s0-full-margin.safetensors")
    assert adapted.training["adapted_to"] == "sst2" and adapted.training["pool_episodes"] == 24
    assert len(PerQueryStore(run_dir / "pool_stores" / "sst2-s0.jsonl")) == 24
    with (run_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    sels = {r["selector"] for r in rows}
    assert {"knn", "knn_majority", "knn_vote", "policy_pq:full-margin", "policy_pq:critic-full-margin",
            "policy_pq:verify+stack-full-margin", "policy_pq:adapt-full-margin"} <= sels
    assert "policy_pq:verify-full-margin" not in sels  # its policy carries a stacker: its rows say so
    assert all(r["split"] == "val" and r["n"] == "10" for r in rows)
    table = pqr.run_stage("report", run_dir, cfg, split="val")
    assert "| policy_pq:adapt-full-margin |" in table and "average" in table
    n = len(rows)
    pqr.run_stage("adapt", run_dir, cfg, split="val", say=lines.append)  # rows already there are skipped
    with (run_dir / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == n


def test_unknown_stage_and_split_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown stage 'fly'"):
        pqr.run_stage("fly", tmp_path, pqr.PerQueryRunConfig())
    with pytest.raises(ConfigError, match="split='dev'"):
        pqr.run_stage("evaluate", tmp_path, pqr.PerQueryRunConfig(), split="dev")
    with pytest.raises(ConfigError, match=r"stacker_queries=-1; expected an integer >= 0"):
        pqr.PerQueryRunConfig(stacker_queries=-1)


def test_evaluate_takes_another_runs_policies_and_names_a_missing_one(toy_run, tmp_path):
    """``policy_run``: the held-out policies of a first run are evaluated in a second run with a larger pool,
    and nothing is collected or trained there."""
    cfg = pqr.PerQueryRunConfig(**{**toy_run.__dict__, "train_tasks": ["sst2", "trec"], "episodes": 30})
    first = tmp_path / "first"
    with pytest.raises(DataError, match="holds no episodes"):  # train before collect: one line
        pqr.run_stage("train", first, cfg, say=lambda _: None)
    pqr.run_stage("collect", first, cfg, say=lambda _: None)
    pqr.run_stage("train", first, cfg, say=lambda _: None)
    big = pqr.PerQueryRunConfig(**{**cfg.__dict__, "n_pool": 48, "policy_run": str(first)})
    second = tmp_path / "second"
    pqr.run_stage("evaluate", second, big, split="val", say=lambda _: None)
    assert not (second / "stores").exists() and not (second / "policies").exists()
    with (second / "results.csv").open() as f:
        sels = {r["selector"] for r in csv.DictReader(f)}
    assert {"knn", "policy_pq:full-margin", "policy_pq:critic-full-margin"} <= sels
    with pytest.raises(DataError, match="loo-sst2-full-correct"):
        pqr.run_stage("evaluate", second, big, split="val", rewards=["correct"], say=lambda _: None)
    with pytest.raises(ConfigError, match="policy_run=3"):
        pqr.PerQueryRunConfig(policy_run=3)


def _benchmark(name):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(f"bench_{name}", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_answer_comparison_benchmarks_run_on_a_trained_run(toy_run, tmp_path):
    """benchmarks/verify_rules.py, more_q_candidates.py, verifier_local.py, answer_stacker.py and batch_calibration.py
    through their shared driver (:mod:`rl_select.experiments.per_query_compare`): one CSV row per task and seed,
    figures that hang together."""
    import json

    cfg = pqr.PerQueryRunConfig(**{**toy_run.__dict__, "train_tasks": ["sst2", "trec"], "episodes": 30,
                                   "stacker_queries": 0})
    run_dir, cfg_file = tmp_path / "run", tmp_path / "cfg.json"
    pqr.run_stage("collect", run_dir, cfg, say=lambda _: None)
    pqr.run_stage("train", run_dir, cfg, say=lambda _: None)
    policy = PerQueryPolicy.load(run_dir / "policies" / "loo-sst2-full-margin.safetensors")
    assert policy.verifier is not None and policy.stacker is None  # stacker_queries 0: none, no rule prompt scored
    assert not (run_dir / "rule_stores").exists()
    cfg_file.write_text(json.dumps(cfg.__dict__))
    rows = {}
    for name in ("verify_rules", "more_q_candidates", "verifier_local"):
        out = tmp_path / f"{name}.csv"
        bench = _benchmark(name)
        bench.VERIFIER_STEPS = 50  # verifier_local's own verifiers: enough to run, not to learn
        bench.main(["--config", str(cfg_file), "--run-dir", str(run_dir), "--split", "val", "--seeds", "0",
                               "--out", str(out)])
        with out.open() as f:
            (rows[name],) = list(csv.DictReader(f))
        assert rows[name]["task"] == "sst2" and rows[name]["split"] == "val"
    out = tmp_path / "answer_stacker.csv"
    _benchmark("answer_stacker").main(["--rules", str(tmp_path / "rules"), "--n-train", "20", "--config",
                                       str(cfg_file), "--run-dir", str(run_dir), "--split", "val", "--seeds", "0",
                                       "--out", str(out)])
    with out.open() as f:
        (rows["answer_stacker"],) = list(csv.DictReader(f))
    # the stacker for held-out sst2 is fitted on its policy's training task only
    assert sorted(p.name for p in (tmp_path / "rules").iterdir()) == ["rules-trec.jsonl"]
    with (tmp_path / "rules" / "rules-trec.jsonl").open() as f:
        logged = [json.loads(line) for line in f]
    assert len(logged) == 20 * 4 and {e["policy"] for e in logged} == {"knn", "knn_majority", "knn_balanced",
                                                                        "knn_mmr"}
    vr, mq, vl, st = (({k: float(v) for k, v in rows[n].items() if k not in ("task", "split")})
                      for n in ("verify_rules", "more_q_candidates", "verifier_local", "answer_stacker"))
    assert st["verify"] == vr["verify"] and st["max_conf_rules"] == vr["max_conf_rules"]
    stackers = ("stack", "stack_verify", "stack_rules", "poe_vote_rules")
    assert st["oracle"] == vr["oracle"] and all(0.0 <= st[v] <= st["oracle"] for v in stackers)
    cands = [v for k, v in vr.items() if k.startswith("cand_") and k != "cand_vote"]
    assert len(cands) == 5 and vr["oracle"] >= max(cands) and vr["oracle"] >= vr["verify"]
    assert sum(v for k, v in vr.items() if k.startswith("share_")) == pytest.approx(1.0)
    assert mq["verify5"] == vr["verify"] and mq["oracle5"] == vr["oracle"] and mq["oracle7"] >= mq["oracle5"]
    assert mq["max_conf_rules"] == vr["max_conf_rules"] == vl["max_conf_rules"] and vl["shipped"] == vr["verify"]
    assert all(0.0 <= vl[v] <= vr["oracle"] for v in ("base", "local", "local_ans"))
    out = tmp_path / "batch_calibration.csv"
    _benchmark("batch_calibration").main(["--time", "4", "--config", str(cfg_file), "--run-dir", str(run_dir),
                                          "--split", "val", "--seeds", "0", "--out", str(out)])
    with out.open() as f:
        (bc,) = [{k: float(v) for k, v in r.items() if k not in ("task", "split")} for r in csv.DictReader(f)]
    # the contextual readout is the run's own scorer: the same answers as the comparisons above
    assert bc["knn_contextual"] == vr["cand_knn"] and bc["knn_majority_contextual"] == vr["cand_knn_majority"]
    assert bc["poe_vote_rules_contextual"] == st["poe_vote_rules"] and bc["policy_pq_contextual"] == vr["verify"]
    assert bc["rows_batch"] < bc["rows_contextual"] <= 4 * bc["rows_batch"] and 1.0 <= bc["rows_batch"] <= 4.0
    assert bc["sec_none"] > 0 and bc["sec_contextual"] > 0
    for readout in ("none", "batch", "batch16", "contextual+batch"):
        assert all(0.0 <= bc[f"{s}_{readout}"] <= 1.0
                   for s in ("zero_shot", "knn", "knn_majority", "poe_vote_rules", "policy_pq"))
