"""The verify mode's answer stacker (rl_select/mdp/per_query_stacker.py, agents.per_query.train_stacker): its
label features, its choice of one prompt per query, its fit, and its place in a policy file."""

from __future__ import annotations

import numpy as np
import pytest

from agents.per_query import train_stacker
from rl_select.errors import DataError, PolicyError
from rl_select.mdp.per_query import FeatureView
from rl_select.mdp.per_query_policy import PerQueryPolicy
from rl_select.mdp.per_query_stacker import (
    STACK_FEATURES,
    VOTE_FLOOR,
    AnswerStacker,
    choose_by_label,
    label_features,
    stacked_choice,
)
from rl_select.mdp.per_query_verifier import Verifier, input_names
from rl_select.mdp.qnet import CandidateQNet


def _stack_case(rng: np.random.Generator, c: int = 3, q: int = 5, n_labels: int = 4):
    lp = np.log(rng.dirichlet(np.ones(n_labels), size=(c, q)))
    vote = rng.dirichlet(np.ones(n_labels), size=q)
    zs = rng.dirichlet(np.ones(n_labels), size=q)
    return lp, vote, zs


def test_label_features_mean_what_their_names_say():
    lp = np.log(np.array([[[0.7, 0.2, 0.1]], [[0.1, 0.3, 0.6]]]))   # (C=2, Q=1, L=3)
    vote, zs = np.array([[0.5, 0.5, 0.0]]), np.array([[0.2, 0.2, 0.6]])
    x = label_features(lp, vote, zs)
    assert x.shape == (1, 3, len(STACK_FEATURES))
    f = dict(zip(STACK_FEATURES, np.moveaxis(x[0], -1, 0)))
    np.testing.assert_allclose(f["mean_logprob"], lp.mean(0)[0], rtol=1e-6)
    np.testing.assert_allclose(f["answer_share"], [0.5, 0.0, 0.5])
    np.testing.assert_allclose(f["confident_answer_share"], [0.35, 0.0, 0.3], rtol=1e-6)
    np.testing.assert_allclose(f["log_vote"], np.log(vote[0] + VOTE_FLOOR), rtol=1e-6)
    assert f["vote_top"].tolist() == [1.0, 0.0, 0.0] and f["zero_shot_top"].tolist() == [0.0, 0.0, 1.0]


def test_features_follow_the_labels_and_ignore_the_candidates_order():
    rng = np.random.default_rng(0)
    lp, vote, zs = _stack_case(rng)
    x = label_features(lp, vote, zs)
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(label_features(lp[..., perm], vote[:, perm], zs[:, perm]), x[:, perm], rtol=1e-5)
    np.testing.assert_allclose(label_features(lp[::-1], vote, zs), x, rtol=1e-5)


def test_bad_shapes_name_what_was_expected():
    rng = np.random.default_rng(1)
    lp, vote, zs = _stack_case(rng)
    with pytest.raises(ValueError, match=r"expected \(C, Q, L\)"):
        label_features(lp, vote[:, :3], zs)
    with pytest.raises(DataError, match="one non-empty pair per training task"):
        train_stacker([label_features(lp, vote, zs)], [])


def test_choose_by_label_keeps_the_most_confident_prompt_of_the_best_answered_label():
    lp = np.log(np.array([[[0.6, 0.4, 0.0001], [0.9, 0.1, 0.0001]],
                          [[0.2, 0.8, 0.0001], [0.3, 0.6, 0.1]],
                          [[0.1, 0.9, 0.0001], [0.8, 0.1, 0.1]]]))  # (C=3, Q=2, L=3)
    scores = np.array([[0.0, 1.0, 5.0], [2.0, 1.0, 0.0]])             # label 2 is answered by no candidate
    assert choose_by_label(scores, lp).tolist() == [2, 0]


def test_a_fitted_stacker_learns_which_signal_to_trust():
    rng = np.random.default_rng(2)
    feats, golds = [], []
    for n_labels in (2, 4, 6):
        q = 400
        gold = rng.integers(0, n_labels, q)
        vote = rng.dirichlet(np.ones(n_labels), size=q)
        vote[np.arange(q), gold] += 2.0                                  # the vote is informative ...
        vote /= vote.sum(-1, keepdims=True)
        lp = np.log(rng.dirichlet(np.ones(n_labels), size=(3, q)))      # ... the candidates are noise
        zs = rng.dirichlet(np.ones(n_labels), size=q)
        feats.append(label_features(lp, vote, zs))
        golds.append(gold)
    stacker, summary = train_stacker(feats, golds, l2=1e-3)
    named = summary["weights"]
    assert named["log_vote"] > 1.0 and abs(named["mean_logprob"]) < 0.5 * named["log_vote"]
    assert summary["rows"] == [400, 400, 400]
    acc = np.mean([(stacker.scores(x).argmax(-1) == y).mean() for x, y in zip(feats, golds)])
    assert acc > 0.9
    assert train_stacker(feats, golds, l2=1e-3)[1]["weights"] == named  # deterministic


def test_stacked_choice_adds_the_verifiers_support_to_the_stacker():
    lp = np.log(np.array([[[0.9, 0.1]], [[0.4, 0.6]], [[0.45, 0.55]]]))   # (C=3, Q=1, L=2)
    vote, zs = np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]])
    neutral = AnswerStacker(np.zeros(len(STACK_FEATURES)))
    # the stacker has no opinion: the verifier's support decides; label 1 has 0.2 + 0.3, label 0 has 0.9
    assert stacked_choice(neutral, np.array([[0.9], [0.2], [0.3]]), lp, vote, zs).tolist() == [0]
    assert stacked_choice(neutral, np.array([[0.1], [0.6], [0.3]]), lp, vote, zs).tolist() == [1]
    # a stacker that trusts the answer share (two of three say label 1) outvotes a small support gap
    share = AnswerStacker(np.eye(len(STACK_FEATURES))[STACK_FEATURES.index("answer_share")] * 5.0)
    support_for_0 = np.array([[0.9], [0.2], [0.2]])
    assert stacked_choice(neutral, support_for_0, lp, vote, zs).tolist() == [0]
    assert stacked_choice(share, support_for_0, lp, vote, zs).tolist() == [1]


def test_the_stacker_travels_in_the_policy_file_and_needs_a_verifier(tmp_path):
    view = FeatureView.of("full")
    qnet = CandidateQNet(*view.dims)
    ver = Verifier(len(input_names(view)), (8,), 1)
    stacker = AnswerStacker(np.arange(len(STACK_FEATURES), dtype=float) / 10)
    policy = PerQueryPolicy(qnet, feature_set="full", m=8, k=3, reward="margin", verifier=ver)
    assert policy.stacker is None
    with_s = policy.with_stacker(stacker, {"tasks": ["a"], "lm_rows_per_task": {"a": 12}})
    loaded = PerQueryPolicy.load(with_s.save(tmp_path / "p.safetensors"))
    assert loaded.stacker is not None and loaded.stacker.named_weights() == stacker.named_weights()
    assert loaded.stacker_training["lm_rows_per_task"] == {"a": 12} and loaded.verifier is not None
    assert PerQueryPolicy.load(policy.save(tmp_path / "old.safetensors")).stacker is None  # files without one load
    with pytest.raises(PolicyError, match="a stacker without a verifier"):
        PerQueryPolicy(qnet, feature_set="full", m=8, k=3, reward="margin", stacker=stacker)
    with pytest.raises(ValueError, match="expected 7 finite numbers"):
        AnswerStacker(np.array([1.0, np.nan, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="is not this version's"):
        AnswerStacker.from_document({**stacker.document(), "features": ["mean_logprob"]})
