"""The verifier levers of issue 22 that were measured and not kept (benchmarks/verifier_local.py,
benchmarks/more_q_candidates.py and benchmarks/answer_stacker.py): what they add to each candidate or query
means what their docstrings say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.per_query import PerQueryStore, collect_per_query, to_episodes, train_per_query
from rl_select.embeddings import HashingEmbedder
from rl_select.experiments.per_query_compare import compare_main
from rl_select.mdp.episode import EpisodeRule
from rl_select.mdp.per_query import FeatureView, PoolTable, QueryContexts
from rl_select.mdp.per_query_policy import greedy_orders
from rl_select.mdp.qnet import masked_q
from rl_select.testing import CachedToyScorer, toy_examples, toy_task

ROOT = Path(__file__).resolve().parents[1]
SPEC = toy_task(3)
DATA = toy_examples(SPEC, 100, seed=2)
POOL, QUERIES = DATA[:40], DATA[40:]


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _contexts():
    scorer = CachedToyScorer(SPEC, calibrate=True)
    table = PoolTable.build(POOL, labels=SPEC.labels, embedder=HashingEmbedder(64), scorer=scorer)
    ctx = QueryContexts.build(table, QUERIES, m=8, embedder=HashingEmbedder(64), scorer=scorer)
    return scorer, table, ctx


def test_local_features_measure_the_neighbours_zero_shot_and_vote():
    bench = _bench("verifier_local")
    _, table, ctx = _contexts()
    rows = [0, 3, 0]
    f = bench.local_features(table, ctx, rows)
    assert f.shape == (3, 4) and np.array_equal(f[0], f[2]) and ((f >= 0) & (f <= 1)).all()
    nb = ctx.nbr[3]
    assert f[1, 0] == np.float32(np.mean(table.zs_correct[nb]))
    assert f[1, 1] == np.float32(np.mean(table.own_gold[nb]))
    answers = np.array([0, 1, 2])
    a = bench.answer_features(table, ctx, rows, answers)
    mine = table.zs_correct[ctx.nbr[3]][table.labels[ctx.nbr[3]] == 1]
    assert a.shape == (3, 2) and a[1, 0] == np.float32((mine.sum() + 0.5) / (len(mine) + 1))
    assert bench.extra("base", table, ctx, rows, answers).shape == (3, 0)
    assert bench.extra("local_ans", table, ctx, rows, answers).shape == (3, 6)


def test_ranked_first_rollouts_start_with_the_q_networks_next_best_action(tmp_path):
    bench = _bench("more_q_candidates")
    scorer, table, ctx = _contexts()
    store = PerQueryStore(tmp_path / "s.jsonl")
    collect_per_query(scorer, table, ctx, store, n_episodes=120, k=3, seed=0)
    view = FeatureView.of("full")
    qnet, _ = train_per_query(to_episodes(store.load(), table, ctx, view, k=3, reward="margin", labels=SPEC.labels),
                              seed=0, steps=50)
    greedy = greedy_orders(qnet, view, table, ctx, 3)
    assert bench.ranked_first(qnet, view, table, ctx, 3, 0) == greedy
    second = bench.ranked_first(qnet, view, table, ctx, 3, 1)
    s, c = zip(*[view(table, ctx, i, [], 3) for i in range(len(ctx.queries))])
    with torch.no_grad():
        q = masked_q(qnet(torch.as_tensor(np.stack(s)), torch.as_tensor(np.stack(c))),
                     torch.as_tensor(np.stack([EpisodeRule(n_candidates=ctx.m, k=3).mask([])] * len(s))))
    runner_up = q.argsort(dim=1, descending=True)[:, 1].tolist()
    assert [o[0] for o in second] == runner_up and all(len(set(o)) == 3 for o in second)
    assert all(o[0] != g[0] for o, g in zip(second, greedy))


def test_the_comparison_driver_names_bad_seeds_in_one_line(capsys):
    for bad in ("0,x", "-1", ""):
        with pytest.raises(SystemExit) as exc:
            compare_main(["--config", "c.json", "--run-dir", "run", "--out", "o.csv", "--seeds", bad], "d",
                         lambda *a: {})
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert exc.value.code == 2 and f"argument --seeds: {bad!r}; expected comma-separated" in err


STK = _bench("answer_stacker")


def _stack_case(rng: np.random.Generator, c: int = 3, q: int = 5, n_labels: int = 4):
    lp = np.log(rng.dirichlet(np.ones(n_labels), size=(c, q)))
    vote = rng.dirichlet(np.ones(n_labels), size=q)
    zs = rng.dirichlet(np.ones(n_labels), size=q)
    return lp, vote, zs


def test_stacker_label_features_mean_what_their_names_say():
    lp = np.log(np.array([[[0.7, 0.2, 0.1]], [[0.1, 0.3, 0.6]]]))   # (C=2, Q=1, L=3)
    vote, zs = np.array([[0.5, 0.5, 0.0]]), np.array([[0.2, 0.2, 0.6]])
    x = STK.label_features(lp, vote, zs)
    assert x.shape == (1, 3, len(STK.STACK_FEATURES))
    f = dict(zip(STK.STACK_FEATURES, np.moveaxis(x[0], -1, 0)))
    np.testing.assert_allclose(f["mean_logprob"], lp.mean(0)[0], rtol=1e-6)
    np.testing.assert_allclose(f["answer_share"], [0.5, 0.0, 0.5])
    np.testing.assert_allclose(f["confident_answer_share"], [0.35, 0.0, 0.3], rtol=1e-6)
    np.testing.assert_allclose(f["log_vote"], np.log(vote[0] + STK.VOTE_FLOOR), rtol=1e-6)
    assert f["vote_top"].tolist() == [1.0, 0.0, 0.0] and f["zero_shot_top"].tolist() == [0.0, 0.0, 1.0]


def test_stacker_features_follow_the_labels_and_ignore_the_candidates_order():
    rng = np.random.default_rng(0)
    lp, vote, zs = _stack_case(rng)
    x = STK.label_features(lp, vote, zs)
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_allclose(STK.label_features(lp[..., perm], vote[:, perm], zs[:, perm]), x[:, perm], rtol=1e-5)
    np.testing.assert_allclose(STK.label_features(lp[::-1], vote, zs), x, rtol=1e-5)


def test_stacker_bad_shapes_name_what_was_expected():
    rng = np.random.default_rng(1)
    lp, vote, zs = _stack_case(rng)
    with pytest.raises(ValueError, match=r"expected \(C, Q, L\)"):
        STK.label_features(lp, vote[:, :3], zs)
    with pytest.raises(ValueError, match="one non-empty pair per training task"):
        STK.fit_stacker([STK.label_features(lp, vote, zs)], [])


def test_stacker_choose_by_label_keeps_the_most_confident_prompt_of_the_best_answered_label():
    lp = np.log(np.array([[[0.6, 0.4, 0.0001], [0.9, 0.1, 0.0001]],
                          [[0.2, 0.8, 0.0001], [0.3, 0.6, 0.1]],
                          [[0.1, 0.9, 0.0001], [0.8, 0.1, 0.1]]]))  # (C=3, Q=2, L=3)
    scores = np.array([[0.0, 1.0, 5.0], [2.0, 1.0, 0.0]])             # label 2 is answered by no candidate
    assert STK.choose_by_label(scores, lp).tolist() == [2, 0]


def test_stacker_a_fitted_stacker_learns_which_signal_to_trust():
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
        feats.append(STK.label_features(lp, vote, zs))
        golds.append(gold)
    w, summary = STK.fit_stacker(feats, golds, l2=1e-3)
    named = summary["weights"]
    assert named["log_vote"] > 1.0 and abs(named["mean_logprob"]) < 0.5 * named["log_vote"]
    assert summary["rows"] == [400, 400, 400]
    acc = np.mean([((x @ w).argmax(-1) == y).mean() for x, y in zip(feats, golds)])
    assert acc > 0.9

