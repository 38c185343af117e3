"""The two verifier levers of issue 22 that were measured and not kept (benchmarks/verifier_local.py and
benchmarks/more_q_candidates.py): what they add to each candidate or query means what their docstrings say."""

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



def test_batch_calibration_divides_out_each_familys_mean_prediction_per_chunk():
    bench = _bench("batch_calibration")
    rng = np.random.default_rng(0)
    lp = np.log(rng.dirichlet(np.ones(3), size=(2, 8)))                     # (C=2, Q=8, L=3)
    out = bench.batch_calibrate(lp)
    assert out.shape == lp.shape and np.allclose(np.logaddexp.reduce(out, axis=-1), 0.0)
    # one family always predicting the same biased distribution becomes uniform
    same = np.broadcast_to(np.log([0.7, 0.2, 0.1]), (1, 8, 3))
    assert np.allclose(bench.batch_calibrate(same), np.log(1 / 3))
    # families are calibrated apart; chunks of 4 are two batches of 4
    assert np.allclose(bench.batch_calibrate(lp[:1]), out[:1])
    halves = np.concatenate([bench.batch_calibrate(lp[:, :4]), bench.batch_calibrate(lp[:, 4:])], axis=1)
    assert np.allclose(bench.batch_calibrate(lp, 4), halves) and not np.allclose(halves, out)
    assert np.allclose(bench.batch_calibrate(lp, 8), out)


def test_batch_calibration_names_a_bad_time_count_in_one_line(capsys):
    for bad in ("-3", "x"):
        with pytest.raises(SystemExit) as exc:
            _bench("batch_calibration").main(["--time", bad, "--config", "c.json", "--run-dir", "r", "--out", "o"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert exc.value.code == 2 and f"argument --time: {bad!r}; expected a non-negative integer" in err
