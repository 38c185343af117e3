"""Integration tests with the real bundled SmolLM2 on a few SST-2 and AGNews rows (marker: model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from rl_select.data import load_folder
from rl_select.lm.cache import ScoreCache
from rl_select.lm.hf import HFScorer
from rl_select.lm.reference import ReferenceScorer
from rl_select.lm.window import ContextWindowWarning
from rl_select.metrics import accuracy
from rl_select.tasks import get_task
from rl_select.types import Example

pytestmark = pytest.mark.model

#: fp32 fast and reference scorers run the same arithmetic in a different order (batched, KV cache).
TOLERANCE = 1e-3


def _rows(data_root, task: str, n_train: int, n_test: int):
    spec = get_task(task)
    train, test = load_folder(data_root / task, spec=spec)
    return spec, train[:n_train], test[:n_test]


@pytest.mark.parametrize("task", ["sst2", "agnews"])
@pytest.mark.parametrize("mode", ["direct", "channel"])
def test_fast_scorer_matches_reference(smollm2, data_root, task, mode):
    model, tok = smollm2
    spec, train, test = _rows(data_root, task, 2, 5)
    fast = HFScorer(model, tok, spec, mode=mode, batch_size=4)
    ref = ReferenceScorer(model, tok, spec, mode=mode)
    for demos in ([], train):
        a = fast.logprobs(demos=demos, queries=test)
        b = ref.logprobs(demos=demos, queries=test)
        assert a.shape == (len(test), len(spec.labels))
        assert np.abs(a - b).max() < TOLERANCE
        assert (a.argmax(1) == b.argmax(1)).all()
    # direct: each query once, labels from its last position; channel: each query once per label
    assert fast.stats.forward_tokens < ref.stats.forward_tokens / (3 if mode == "direct" else 1.5)


def test_multi_token_verbalisers_match_reference(smollm2, data_root):
    model, tok = smollm2
    spec, train, test = _rows(data_root, "sst2", 2, 4)
    spec = type(spec)(name="sst2-long", labels=spec.labels, template=spec.template,
                      verbalizers={"negative": "really terrible", "positive": "truly wonderful"})
    a = HFScorer(model, tok, spec, length_norm=True).logprobs(demos=train, queries=test)
    b = ReferenceScorer(model, tok, spec, length_norm=True).logprobs(demos=train, queries=test)
    assert np.abs(a - b).max() < TOLERANCE


def test_bf16_agrees_on_predictions(data_root):
    from rl_select.lm.hf import load_causal_lm

    spec, train, test = _rows(data_root, "sst2", 2, 16)
    model, tok = load_causal_lm("bundled", dtype="bf16", device="cpu")
    ref_model, _ = load_causal_lm("bundled", dtype="fp32", device="cpu")
    a = HFScorer(model, tok, spec).logprobs(demos=train, queries=test)
    b = HFScorer(ref_model, tok, spec).logprobs(demos=train, queries=test)
    assert np.mean(a.argmax(1) == b.argmax(1)) >= 0.85
    assert np.abs(a - b).max() < 0.5


def test_cache_makes_repeats_free(smollm2, data_root, tmp_path):
    model, tok = smollm2
    spec, train, test = _rows(data_root, "sst2", 2, 8)
    cache = ScoreCache(tmp_path / "scores.sqlite")
    first = HFScorer(model, tok, spec, cache=cache, calibrate=True)
    a = first.logprobs(demos=train, queries=test)
    assert first.stats.cache_misses == len(test) + 3  # + content-free queries
    second = HFScorer(model, tok, spec, cache=ScoreCache(tmp_path / "scores.sqlite"), calibrate=True,
                      fingerprint=first.model_fingerprint)
    b = second.logprobs(demos=train, queries=test)
    assert second.stats.cache_misses == 0 and second.stats.prefix_forwards == 0
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(np.exp(a).sum(1), 1.0, atol=1e-9)


def test_zero_shot_sst2_beats_chance(smollm2, data_root):
    model, tok = smollm2
    spec, _, test = _rows(data_root, "sst2", 0, 48)
    acc = accuracy(HFScorer(model, tok, spec), demos=[], examples=test)
    assert acc > 0.6


def test_rows_over_the_context_window_drop_demonstrations_or_fail_one_row(smollm2):
    model, tok = smollm2
    spec = get_task("sst2")
    scorer = HFScorer(model, tok, spec)
    long = Example(text="word " * 9000, label="positive")
    fine = Example("a fine, moving film", "positive")
    with pytest.warns(ContextWindowWarning, match=r"dropped 1 of 1 demonstrations .*8,192-token context window"):
        cut = scorer.logprobs(demos=[long], queries=[fine])
    np.testing.assert_allclose(cut, scorer.logprobs(demos=[], queries=[fine]), atol=1e-4)  # as zero-shot
    with pytest.warns(ContextWindowWarning, match=r"the query alone is .* scored as a failure"):
        rows = scorer.logprobs(demos=[], queries=[long, fine])
    assert rows[0].argmax() != spec.labels.index("positive") and scorer.stats.rows_failed == 1
    assert rows[1].argmax() == cut[0].argmax()  # the other row is scored as usual


def test_embed_and_model_fingerprint_are_stable(smollm2):
    model, tok = smollm2
    scorer = HFScorer(model, tok, get_task("sst2"))
    e = scorer.embed(["a good film", "a bad film", "stock prices fell"])
    assert e.shape == (3, model.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert HFScorer(model, tok, get_task("sst2")).fingerprint == scorer.fingerprint


def test_cli_evaluate_twice_second_run_hits_cache(data_root, tmp_path):
    from rl_select.cli import app

    args = ["evaluate", "--selector", "random", "--task", "sst2", "--k", "2", "--n-pool", "6", "--n-val", "4",
            "--n-test", "12", "--seeds", "0,1", "--dtype", "fp32", "--cache", str(tmp_path / "c.sqlite"),
            "--out", str(tmp_path / "runs")]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    docs = [json.loads((r / "results.json").read_text()) for r in runs]
    assert docs[0]["lm_calls"]["cache_misses"] > 0
    assert docs[1]["lm_calls"]["cache_misses"] == 0
    assert [r["test_acc"] for r in docs[0]["rows"]] == [r["test_acc"] for r in docs[1]["rows"]]
    for name in ("config.toml", "results.csv", "summary.csv", "test_accuracy.png", "log.txt"):
        assert (runs[0] / name).is_file()


def test_mdp_smoke_with_real_model(smollm2, data_root, tmp_path):
    """The selection MDP on SmolLM2: pool 8, k 2, a few random episodes, offline training, export, select."""
    from rl_select.experiments.config import RunConfig
    from rl_select.experiments.executors import LocalExecutor
    from rl_select.experiments.training import EpisodeWorker, build_task_envs, collect_rollouts, train_agent
    from rl_select.mdp.policy import SelectorPolicy

    model, tok = smollm2
    cache = ScoreCache(tmp_path / "scores.sqlite")
    cfg = RunConfig.from_dict(dict(task="sst2", data=str(data_root / "sst2"), k=2, n_pool=8, n_val=8, seeds=[0],
                                   train_pool=24, episodes=3, train_steps=20, hidden=[16], out=str(tmp_path / "runs")))
    fp: list[str] = []

    def scorer_for(spec):
        s = HFScorer(model, tok, spec, cache=cache, fingerprint=fp[0] if fp else None)
        fp[:] = [s.model_fingerprint]
        return s

    envs = build_task_envs(cfg, scorer_for)
    report = collect_rollouts(cfg, LocalExecutor(EpisodeWorker(envs)))[0]
    assert report["episodes"] == 3 and report["lm_cache_misses"] > 0
    res = train_agent(cfg, envs)
    pol = SelectorPolicy.load(res.policy.save(tmp_path / "policy.safetensors"))
    assert pol.scorer_differences(envs[0].scorer) == []
    pool = list(envs[0].env.pool[:8])
    demos = pol.select(pool, scorer=envs[0].scorer, val=list(envs[0].env.val))
    assert len(demos) == 2 and all(d in pool for d in demos)
    assert pol.build_prompt("a charming film", demos).endswith("Review: a charming film\nSentiment:")
    again = collect_rollouts(cfg, LocalExecutor(EpisodeWorker(envs)))[0]  # resumable: nothing to do, no LM call
    assert again["written"] == 0 and again["lm_queries"] == 0
