"""The per-query verifier: its answer features, its training, the policy file that carries it, the verify mode."""

from __future__ import annotations

import numpy as np
import pytest

from agents.per_query import (
    PerQueryStore,
    collect_per_query,
    to_episodes,
    train_per_query,
    train_verifier,
    verifier_data,
)
from rl_select.embeddings import HashingEmbedder
from rl_select.errors import DataError, PolicyError, SelectionError
from rl_select.mdp.artifacts import write_artifact
from rl_select.mdp.per_query import FeatureView, PoolTable, QueryContexts, vote_shares
from rl_select.mdp.per_query_policy import KIND, PerQueryPolicy, candidate_orders, verify_orders
from rl_select.mdp.per_query_verifier import RESPONSE_FEATURES, Verifier, choose, input_names, response_features
from rl_select.testing import CachedToyScorer, toy_examples, toy_task

SPEC = toy_task(3)
DATA = toy_examples(SPEC, 140, seed=1)
POOL, QUERIES = DATA[:40], DATA[40:]
EMB = HashingEmbedder(64)


def _setup(tmp_path, n=300):
    scorer = CachedToyScorer(SPEC, calibrate=True)
    table = PoolTable.build(POOL, labels=SPEC.labels, embedder=EMB, scorer=scorer)
    ctx = QueryContexts.build(table, QUERIES, m=8, embedder=EMB, scorer=scorer)
    store = PerQueryStore(tmp_path / "s.jsonl")
    collect_per_query(scorer, table, ctx, store, n_episodes=n, k=3, seed=0)
    return scorer, table, ctx, store.load()


def _policy(table, ctx, logged, *, steps, q_steps):
    """A per-query policy (``full`` features) with a one-member verifier, both trained briefly on ``logged``."""
    view = FeatureView.of("full")
    ver, _ = train_verifier(*verifier_data(logged, table, ctx, view, k=3, labels=SPEC.labels), steps=steps, members=1)
    qnet, _ = train_per_query(to_episodes(logged, table, ctx, view, k=3, reward="margin", labels=SPEC.labels),
                              seed=0, steps=q_steps)
    return PerQueryPolicy(qnet, feature_set="full", m=8, k=3, reward="margin", verifier=ver)


def test_response_features_mean_what_they_say(tmp_path):
    scorer, table, ctx, _ = _setup(tmp_path, n=3)
    order = [5, 2, 0]
    lp = np.log(np.array([0.1, 0.7, 0.2]))
    feats, answer = response_features(table, ctx, 0, order, lp)
    f = dict(zip(RESPONSE_FEATURES, feats))
    vote = vote_shares(table, ctx, 0)
    y = table.labels[ctx.nbr[0][order]]
    assert answer == 1 and len(feats) == len(RESPONSE_FEATURES)
    assert f["top_prob"] == pytest.approx(0.7) and f["top_margin"] == pytest.approx(0.5)
    assert 0 < f["entropy"] < 1 and f["inv_labels"] == pytest.approx(1 / 3)
    assert f["vote_share_of_answer"] == pytest.approx(vote[1]) and f["answer_is_vote_top"] == float(vote.argmax() == 1)
    assert f["zs_prob_of_answer"] == pytest.approx(ctx.zs[0][1], abs=1e-6)
    assert f["demo_share_of_answer"] == pytest.approx(np.mean(y == 1)) and f["last_demo_is_answer"] == float(y[-1] == 1)


def test_choose_takes_the_best_supported_answer_then_its_most_trusted_prompt():
    p = np.array([[0.9, 0.2], [0.6, 0.5], [0.5, 0.4]])  # (C=3, Q=2)
    answers = np.array([[0, 1], [1, 0], [1, 0]])
    # query 0: answer 1 gathers 1.1 > answer 0's 0.9, so candidate 1 (0.6) rather than the single most trusted one
    # query 1: answer 0 gathers 0.9 > 0.2; its best candidate is 1
    assert choose(p, answers, 2).tolist() == [1, 1]


def test_the_verifier_learns_which_answers_are_right_and_travels_in_the_policy_file(tmp_path):
    scorer, table, ctx, logged = _setup(tmp_path)
    view = FeatureView.of("full")
    x, y = verifier_data(logged, table, ctx, view, k=3, labels=SPEC.labels)
    assert x.shape == (len(logged), len(input_names(view))) and set(np.unique(y)) <= {0.0, 1.0}
    ver, summary = train_verifier(x, y, seed=0, steps=300, members=2)
    p = ver.p_correct(x)
    assert p[y == 1].mean() > p[y == 0].mean() + 0.1  # it tells right answers from wrong ones
    assert summary["rows"] == len(x) and summary["members"] == 2
    eps = to_episodes(logged, table, ctx, view, k=3, reward="margin", labels=SPEC.labels)
    qnet, _ = train_per_query(eps, seed=0, steps=50)
    plain = PerQueryPolicy(qnet, feature_set="full", m=8, k=3, reward="margin")
    assert plain.default_mode == "critic"
    policy = plain.with_verifier(ver, summary)
    loaded = PerQueryPolicy.load(policy.save(tmp_path / "pq.safetensors"))
    assert loaded.default_mode == "verify" and loaded.verifier_training["rows"] == len(x)
    assert np.allclose(loaded.verifier.p_correct(x), p)
    with pytest.raises(DataError, match="0 verifier rows for 0 targets"):
        train_verifier(x[:0], y[:0])
    with pytest.raises(PolicyError, match="verifier in_dim 3 does not match feature set 'full'"):
        plain.with_verifier(Verifier(3))


def test_verify_mode_scores_every_candidate_in_one_call_and_keeps_the_chosen(tmp_path, monkeypatch):
    scorer, table, ctx, logged = _setup(tmp_path, n=200)
    view = FeatureView.of("full")
    policy = _policy(table, ctx, logged, steps=100, q_steps=50)
    qnet, ver = policy.qnet, policy.verifier
    calls = []
    real = scorer.logprobs_many
    monkeypatch.setattr(scorer, "logprobs_many", lambda **kw: calls.append(len(kw["queries"])) or real(**kw))
    orders, sources = verify_orders(qnet, ver, view, table, ctx, 3, scorer)
    cands = candidate_orders(qnet, view, table, ctx, 3)
    assert calls == [len(cands) * len(ctx.queries)]
    assert all(orders[i] == cands[s][i] for i, s in enumerate(sources))
    # query by query, by hand
    for i in range(0, len(ctx.queries), 11):
        lps = [real(demo_lists=[ctx.demos(table, i, c[i])], queries=[ctx.queries[i]])[0] for c in cands.values()]
        x = [np.concatenate([*(lambda s, c, o: (s, c[o[-1]]))(*view(table, ctx, i, c[i][:-1], 3), c[i]),
                             response_features(table, ctx, i, c[i], lp)[0]]) for c, lp in zip(cands.values(), lps)]
        p = ver.p_correct(np.stack(x))[:, None]
        answers = np.array([[int(np.argmax(lp))] for lp in lps])
        assert orders[i] == list(cands.values())[int(choose(p, answers, 3)[0])][i]
    demos = policy.select_for(POOL, QUERIES, labels=SPEC.labels, embedder=EMB, scorer=scorer)  # verify by default
    expected = [[d.uid for d in ctx.demos(table, i, o)] for i, o in enumerate(orders)]
    assert [[d.uid for d in ds] for ds in demos] == expected
    with pytest.raises(SelectionError, match="mode 'verify' scores each candidate prompt with the LM"):
        policy.select_for(POOL, QUERIES[:2], labels=SPEC.labels, embedder=EMB, scorer=None, mode="verify")
    plain = PerQueryPolicy(qnet, feature_set="full", m=8, k=3, reward="margin")
    with pytest.raises(SelectionError, match="mode 'verify' needs a policy trained with a verifier"):
        plain.select_for(POOL, QUERIES[:2], labels=SPEC.labels, embedder=EMB, scorer=scorer, mode="verify")


def test_a_file_whose_verifier_entry_and_tensors_disagree_is_refused(tmp_path):
    scorer, table, ctx, logged = _setup(tmp_path, n=60)
    policy = _policy(table, ctx, logged, steps=10, q_steps=10)
    path = write_artifact(tmp_path / "odd.safetensors", kind=KIND, tensors=policy._tensors(),
                          doc={**policy._document(), "verifier": None})
    with pytest.raises(PolicyError, match="verifier's metadata and tensors do not go together"):
        PerQueryPolicy.load(path)
    doc = policy._document()
    doc["verifier"] = {**doc["verifier"], "members": 2}
    path = write_artifact(tmp_path / "odd2.safetensors", kind=KIND, tensors=policy._tensors(), doc=doc)
    with pytest.raises(PolicyError, match="odd2.safetensors.*verifier: "):
        PerQueryPolicy.load(path)
