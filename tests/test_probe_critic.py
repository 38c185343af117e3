"""The probe critic (a learned value of a complete prompt from label-free prediction statistics), its place in
the policy file, the ``policy_probe`` selector and its training from rollout stores (model-free: ToyScorer)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rl_select.embeddings import HashingEmbedder
from rl_select.errors import ConfigError, PolicyError, SelectionError
from rl_select.experiments.config import RunConfig
from rl_select.mdp.critic import CRITIC_FEATURES, ProbeCritic, critic_features, per_query_features
from rl_select.mdp.features import FeatureSpec
from rl_select.mdp.policy import SelectorPolicy
from rl_select.mdp.qnet import CandidateQNet
from rl_select.selectors import KNNSelector, RandomSearchSelector, SelectionContext, make_selector
from rl_select.tasks import get_task
from rl_select.testing import ToyScorer, sentiment_examples

TASK = get_task("sst2")
F = len(CRITIC_FEATURES)


def _policy(critic: ProbeCritic | None) -> SelectorPolicy:
    spec = FeatureSpec("table_labelled")
    torch.manual_seed(0)
    return SelectorPolicy(CandidateQNet(spec.state_dim, spec.cand_dim, (8,)), feature_spec=spec, k=3, task=TASK,
                          scorer_spec=None, scorer_fingerprint=ToyScorer(TASK).fingerprint, training={}, critic=critic)


def _ctx(seed: int = 0, val=None) -> SelectionContext:
    return SelectionContext(pool=sentiment_examples(10, 1), val=sentiment_examples(12, 2) if val is None else val,
                            k=3, scorer=ToyScorer(TASK), rng=np.random.default_rng(seed))


def test_features_are_the_probe_stats_and_the_demo_balance():
    lp = np.log(np.array([[0.8, 0.2], [0.3, 0.7]]))
    x = critic_features(lp, ["positive", "positive"], TASK.labels)
    assert x.shape == (F,) and x[0] == pytest.approx(1.0) and x[-1] == 0.0
    assert critic_features(lp, ["positive", "negative"], TASK.labels)[-1] == pytest.approx(1.0)
    assert critic_features(lp, [], TASK.labels)[-1] == 0.0  # the zero-shot prompt


def test_fit_recovers_a_linear_value_and_task_returns_are_z_scored():
    rng = np.random.default_rng(0)
    w = np.array([2.0, -1.0, 0.5, 0.0, 1.0])
    tasks = []
    for shift in (0.0, 3.0):
        x = rng.uniform(size=(40, F))
        tasks.append((x, x @ w + shift))
    one = ProbeCritic.fit(tasks[:1], ridge=1e-8)
    assert one.n_train == 40 and one.returns == "raw"
    np.testing.assert_allclose(one.weights, [*w, 0.0], atol=1e-6)  # weights, then the bias
    raw = ProbeCritic.fit(tasks, ridge=1e-8)
    assert raw.n_train == 80 and 0.0 < raw.weights[-1] < 3.0  # one bias between the two tasks' levels
    z = ProbeCritic.fit(tasks, returns="task", ridge=1e-8)
    x0, y0 = tasks[0]
    assert np.corrcoef(z.score(x0), y0)[0, 1] > 0.99
    with pytest.raises(PolicyError, match="returns='nope'"):
        ProbeCritic.fit(tasks, returns="nope")
    with pytest.raises(PolicyError, match="at least 2 episodes"):
        ProbeCritic.fit([(np.zeros((1, F)), np.zeros(1))])


def test_a_policy_file_carries_its_critic_and_refuses_a_tampered_one(tmp_path):
    critic = ProbeCritic(np.arange(F + 1, dtype=np.float64) / 10, n_train=7)
    path = _policy(critic).save(tmp_path / "p.safetensors")
    back = SelectorPolicy.load(path)
    np.testing.assert_array_equal(back.critic.weights, critic.weights)
    assert back.critic.n_train == 7 and back.describe()["critic"]["features"] == list(CRITIC_FEATURES)
    assert SelectorPolicy.load(_policy(None).save(tmp_path / "none.safetensors")).critic is None
    # edited weights: the tensors' hash no longer matches
    tensors = load_file(str(path))
    with open(path, "rb") as fh:
        header = json.loads(fh.read(8 + int.from_bytes(open(path, "rb").read(8), "little"))[8:])
    meta = header["__metadata__"]
    tensors["probe_critic"] = tensors["probe_critic"] + 1.0
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=meta)
    with pytest.raises(PolicyError, match="hash|sha256"):
        SelectorPolicy.load(tmp_path / "edited.safetensors")


def test_critic_entries_are_checked():
    good = ProbeCritic(np.zeros(F + 1)).document()
    with pytest.raises(PolicyError, match="malformed"):
        ProbeCritic.from_document({**good, "features": ["x"]}, np.zeros(F + 1), where="here")
    with pytest.raises(PolicyError, match="finite"):
        ProbeCritic.from_document(good, np.array([np.nan] * (F + 1)), where="here")
    with pytest.raises(PolicyError, match=f"expected {F + 1}"):
        ProbeCritic.from_document(good, np.zeros(F), where="here")


def test_policy_probe_keeps_the_highest_valued_of_random_search_draws_without_val_labels(tmp_path):
    critic = ProbeCritic(np.array([1.0, 0.5, -0.2, 0.1, 0.3, 0.0]))
    path = _policy(critic).save(tmp_path / "p.safetensors")
    sel = make_selector("policy_probe", path=str(path), n_prompts=6)
    ctx = _ctx(seed=4)
    demos = sel.select(ctx)
    info = sel.last_info
    assert len(info["values"]) == 6 and info["best"] == int(np.argmax(info["values"]))
    np.testing.assert_allclose(info["values"], critic.score(np.array(info["features"])))
    assert ctx.scorer.stats.queries == 6 * len(ctx.val)  # one val-text call per prompt, nothing else
    # the prompts random_search:6 tries with the same rng
    seen = []
    scorer = ToyScorer(TASK)
    scorer_logprobs = scorer.logprobs
    scorer.logprobs = lambda *, demos, queries: (seen.append([d.uid for d in demos]), scorer_logprobs(
        demos=demos, queries=queries))[1]
    RandomSearchSelector(n_prompts=6).select(replace(_ctx(seed=4), scorer=scorer))
    assert [d.uid for d in demos] == seen[info["best"]]
    flipped = [replace(v, label="negative" if v.label == "positive" else "positive") for v in ctx.val]
    again = make_selector("policy_probe", path=str(path), n_prompts=6).select(_ctx(seed=4, val=flipped))
    assert [d.uid for d in again] == [d.uid for d in demos]  # val labels are never read
    with pytest.raises(SelectionError, match="no probe critic"):
        make_selector("policy_probe", path=str(_policy(None).save(tmp_path / "n.safetensors")))
    with pytest.raises(SelectionError, match="n_prompts=0"):
        make_selector("policy_probe", path=str(path), n_prompts=0)
    with pytest.raises(SelectionError, match="unlabelled probe queries"):
        sel.select(_ctx(val=[]))


def test_probe_critic_needs_the_offline_agent():
    with pytest.raises(ConfigError, match="agent.probe_critic = true with agent.name='dqn'"):
        RunConfig().updated(agent="dqn", probe_critic=True)
    with pytest.raises(ConfigError, match="agent.probe_critic='yes'"):
        RunConfig().updated(probe_critic="yes")
    with pytest.raises(ConfigError, match="agent.critic_episodes=1; expected an integer >= 2"):
        RunConfig().updated(probe_critic=True, critic_episodes=1)


def test_per_query_features_assemble_the_queries_and_average_the_demo_balance():
    lp = np.log(np.array([[0.8, 0.2], [0.3, 0.7]]))
    x = per_query_features(lp, [["positive", "positive"], ["positive", "negative"]], TASK.labels)
    np.testing.assert_allclose(x[:-1], critic_features(lp, [], TASK.labels)[:-1])
    assert x[-1] == pytest.approx(0.5)
    with pytest.raises(PolicyError, match="1 demo lists for 2 probe queries"):
        per_query_features(lp, [["positive"]], TASK.labels)


def test_policy_probe_with_knn_lets_the_critic_choose_retrieval_or_a_fixed_prompt(tmp_path):
    test_queries = sentiment_examples(5, 9)

    def run(weights: np.ndarray, name: str):
        path = _policy(ProbeCritic(weights)).save(tmp_path / f"{name}.safetensors")
        sel = make_selector("policy_probe", path=str(path), n_prompts=1, with_knn=True, embedder=HashingEmbedder())
        assert sel.per_query
        ctx = _ctx(seed=3)
        lists = sel.select_for(ctx, test_queries)
        assert ctx.scorer.stats.queries == 2 * len(ctx.val)  # the fixed prompt + each val query with its neighbours
        return sel.last_info, lists, path

    info, lists, path = run(np.zeros(F + 1), "zero")
    assert info["chose"] == "fixed"  # a tie keeps the fixed prompt
    knn_val = KNNSelector(HashingEmbedder()).select_for(_ctx(seed=3), _ctx().val)
    value, feats = _policy(ProbeCritic(np.zeros(F + 1))).critic_value_per_query(knn_val, scorer=ToyScorer(TASK),
                                                                                 val=_ctx().val)
    np.testing.assert_allclose(info["knn_features"], feats)
    gap = np.asarray(info["knn_features"]) - np.asarray(info["features"][0])
    assert np.abs(gap).sum() > 0
    info, lists, _ = run(np.append(gap, 0.0), "to_knn")  # values kNN's features above the fixed prompt's
    assert info["chose"] == "knn" and info["knn_value"] > info["values"][0]
    assert lists == KNNSelector(HashingEmbedder()).select_for(_ctx(seed=3), test_queries)
    info, lists, _ = run(np.append(-gap, 0.0), "to_fixed")
    assert info["chose"] == "fixed"
    fixed = make_selector("policy_probe", path=str(path), n_prompts=1).select(_ctx(seed=3))
    assert lists == [fixed] * len(test_queries)
    flipped = [replace(v, label="negative" if v.label == "positive" else "positive") for v in _ctx().val]
    sel = make_selector("policy_probe", path=str(tmp_path / "to_knn.safetensors"), n_prompts=1, with_knn=True,
                        embedder=HashingEmbedder())
    sel.select_for(_ctx(seed=3, val=flipped), test_queries)
    assert sel.last_info["chose"] == "knn"  # val labels are never read
    assert not make_selector("policy_probe", path=str(path)).per_query
    with pytest.raises(SelectionError, match="with_knn='yes'"):
        make_selector("policy_probe", path=str(path), with_knn="yes")
