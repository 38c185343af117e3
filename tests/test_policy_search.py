"""Policy-guided search (``policy_search``) and SelectorPolicy's sampled rollouts, with the model-free ToyScorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl_select.errors import SelectionError
from rl_select.mdp.features import FeatureSpec
from rl_select.mdp.policy import SelectorPolicy
from rl_select.mdp.qnet import CandidateQNet
from rl_select.metrics import accuracy
from rl_select.selectors import SELECTORS, SelectionContext, make_selector
from rl_select.tasks import get_task
from rl_select.testing import ToyScorer, sentiment_examples

_examples = sentiment_examples


TASK = get_task("sst2")


@pytest.fixture(params=[0, 1, 2])
def policy_file(request, tmp_path):
    spec = FeatureSpec("active")
    torch.manual_seed(request.param)
    qnet = CandidateQNet(spec.state_dim, spec.cand_dim, (16, 8))
    pol = SelectorPolicy(qnet, feature_spec=spec, k=3, task=TASK, scorer_spec=None,
                         scorer_fingerprint=ToyScorer(TASK).fingerprint, training={"agent": "dqn"})
    return pol.save(tmp_path / f"p{request.param}.safetensors")


@pytest.fixture
def table_policy_file(tmp_path):
    """An untrained ``table_labelled`` policy (k = 3) for the toy scorer."""
    spec = FeatureSpec("table_labelled")
    torch.manual_seed(0)
    qnet = CandidateQNet(spec.state_dim, spec.cand_dim, (8,))
    return SelectorPolicy(qnet, feature_spec=spec, k=3, task=TASK, scorer_spec=None,
                          scorer_fingerprint=ToyScorer(TASK).fingerprint, training={}).save(tmp_path / "t.safetensors")


def _ctx(seed: int = 0, k: int = 3) -> SelectionContext:
    return SelectionContext(pool=_examples(10, 1), val=_examples(12, 2), k=k, scorer=ToyScorer(TASK),
                            rng=np.random.default_rng(seed))


def test_registered():
    assert SELECTORS["policy_search"].__name__ == "PolicySearchSelector"


def test_m1_is_the_greedy_policy(policy_file):
    greedy = make_selector("policy", path=str(policy_file)).select(_ctx())
    search = make_selector("policy_search", path=str(policy_file), m=1).select(_ctx())
    assert [d.uid for d in search] == [d.uid for d in greedy]


def test_larger_m_never_lowers_val_accuracy_and_costs_more(policy_file):
    accs, queries = [], []
    for m in (1, 2, 4, 8):
        ctx = _ctx()
        sel = make_selector("policy_search", path=str(policy_file), m=m, temperature=0.5)
        demos = sel.select(ctx)
        queries.append(ctx.scorer.stats.queries)
        assert len(demos) == 3 and len({d.uid for d in demos}) == 3
        accs.append(accuracy(ToyScorer(TASK), demos=demos, examples=ctx.val))
        assert accs[-1] == max(sel.last_search_info["val_acc"])
    assert all(a >= accs[0] for a in accs[1:])
    assert queries == sorted(queries) and len(set(queries)) == len(queries)  # strictly more LM work with M


def test_ties_go_to_the_first_proposal(policy_file, monkeypatch):
    sel = make_selector("policy_search", path=str(policy_file), m=3, temperature=5.0)
    monkeypatch.setattr("rl_select.selectors.policy_search.accuracy", lambda *a, **k: 0.5)
    ctx = _ctx()
    demos = sel.select(ctx)
    assert sel.last_search_info["best"] == 0
    greedy = make_selector("policy", path=str(policy_file)).select(_ctx())
    assert [d.uid for d in demos] == [d.uid for d in greedy]


def test_bad_arguments_are_refused(policy_file):
    with pytest.raises(SelectionError, match="m=0"):
        make_selector("policy_search", path=str(policy_file), m=0)
    with pytest.raises(SelectionError, match="temperature"):
        make_selector("policy_search", path=str(policy_file), temperature=0)
    with pytest.raises(SelectionError, match="non-empty validation"):
        ctx = _ctx()
        ctx.val = []
        make_selector("policy_search", path=str(policy_file)).select(ctx)


def test_sampled_rollouts_are_valid_seeded_and_differ_from_greedy(policy_file):
    pol = SelectorPolicy.load(policy_file)
    pool, val = _examples(10, 1), _examples(6, 2)
    greedy = pol.select(pool, scorer=ToyScorer(TASK), val=val)
    assert pol.select(pool, scorer=ToyScorer(TASK), val=val, temperature=0.0) == greedy
    draws = [tuple(d.uid for d in pol.select(pool, scorer=ToyScorer(TASK), val=val, temperature=10.0,
                                             rng=np.random.default_rng(s))) for s in range(6)]
    assert all(len(set(d)) == 3 for d in draws)
    again = tuple(d.uid for d in pol.select(pool, scorer=ToyScorer(TASK), val=val, temperature=10.0,
                                            rng=np.random.default_rng(0)))
    assert again == draws[0]
    assert len(set(draws)) > 1  # a hot softmax explores
    with pytest.raises(SelectionError, match="rng"):
        pol.select(pool, scorer=ToyScorer(TASK), val=val, temperature=1.0)
    with pytest.raises(SelectionError, match="temperature"):
        pol.select(pool, scorer=ToyScorer(TASK), val=val, temperature=-1.0, rng=np.random.default_rng(0))


def test_sampling_respects_the_mask_with_stop(tmp_path):
    spec = FeatureSpec("active")
    torch.manual_seed(0)
    pol = SelectorPolicy(CandidateQNet(spec.state_dim, spec.cand_dim, (8,)), feature_spec=spec, k=4, task=TASK,
                         scorer_spec=None, scorer_fingerprint=ToyScorer(TASK).fingerprint, allow_stop=True, min_len=2)
    pool, val = _examples(6, 1), _examples(6, 2)
    for s in range(10):
        demos = pol.select(pool, scorer=ToyScorer(TASK), val=val, temperature=100.0, rng=np.random.default_rng(s))
        assert 2 <= len(demos) <= 4 and len({d.uid for d in demos}) == len(demos)


def test_table_policies_ask_for_the_pool_rows_once_across_proposals(table_policy_file):
    path = table_policy_file
    rows = {}
    for m in (1, 4):
        ctx = _ctx()
        sel = make_selector("policy_search", path=str(path), m=m, temperature=0.5)
        sel.select(ctx)
        rows[m] = ctx.scorer.stats.queries
        distinct = len({tuple(p) for p in sel.last_search_info["proposals"]})
        # the table (the 10 pool rows; val is not in a table_labelled table) once, then each distinct
        # proposal's val rows
        assert rows[m] == 10 + distinct * 12, (m, rows[m], distinct)


def test_screening_scores_every_proposal_on_the_head_and_keeps_the_best_on_all_of_val(policy_file):
    ctx = _ctx()
    sel = make_selector("policy_search", path=str(policy_file), m=6, temperature=0.5, screen=4, keep=2)
    demos = sel.select(ctx)
    info = sel.last_search_info
    distinct = {tuple(p) for p in info["proposals"]}
    full = [a for a in info["val_acc"] if a is not None]
    assert len({tuple(p) for p, a in zip(info["proposals"], info["val_acc"]) if a is not None}) == min(2, len(distinct))
    # the kept proposals' val accuracy is their accuracy on all of val (head + rest)
    by_key = {tuple(p): a for p, a in zip(info["proposals"], info["val_acc"]) if a is not None}
    pool = ctx.pool
    for key, acc in by_key.items():
        assert acc == pytest.approx(accuracy(ToyScorer(TASK), demos=[pool[i] for i in key], examples=ctx.val))
    assert accuracy(ToyScorer(TASK), demos=demos, examples=ctx.val) == pytest.approx(max(full))
    # the kept ones are the best on the head (the first 4 val rows)
    head = {tuple(p): s for p, s in zip(info["proposals"], info["screen_acc"])}
    worst_kept = min(head[key] for key in by_key)
    assert all(s <= worst_kept for key, s in head.items() if key not in by_key)


def test_screening_spends_fewer_val_rows_than_scoring_every_proposal(policy_file):
    rows = {}
    for screen in (None, 4):
        ctx = _ctx()
        make_selector("policy_search", path=str(policy_file), m=6, temperature=0.5, screen=screen, keep=2).select(ctx)
        rows[screen] = ctx.scorer.stats.queries
    assert rows[4] < rows[None]


def test_bad_screening_arguments_are_refused(policy_file):
    with pytest.raises(SelectionError, match="screen=0"):
        make_selector("policy_search", path=str(policy_file), screen=0)
    with pytest.raises(SelectionError, match="keep=0"):
        make_selector("policy_search", path=str(policy_file), screen=3, keep=0)


# --- policy_rank: the Q as a critic of random prompts ----------------------------------------------------


def test_q_of_orders_is_the_q_of_the_last_step_that_select_would_log(policy_file):
    pol = SelectorPolicy.load(policy_file)
    ctx = _ctx()
    greedy = pol.select(ctx.pool, scorer=ctx.scorer, val=ctx.val, k=3)
    steps = pol.last_selection_info["steps"]
    order = [ctx.pool.index(d) for d in greedy]
    q = pol.q_of_orders(ctx.pool, [order, order[::-1]], scorer=ctx.scorer, val=ctx.val)
    assert q.shape == (2,) and q[0] == pytest.approx(steps[-1]["q_action"], abs=1e-6)
    with pytest.raises(SelectionError, match="distinct pool indices"):
        pol.q_of_orders(ctx.pool, [[0, 0, 1]], scorer=ctx.scorer, val=ctx.val)


def test_policy_rank_returns_the_drawn_order_with_the_highest_q(policy_file):
    ctx = _ctx(seed=3)
    sel = make_selector("policy_rank", path=str(policy_file), n_sets=8)
    demos = sel.select(ctx)
    info = sel.last_rank_info
    assert len(info["orders"]) == 8 and all(len(set(o)) == 3 for o in info["orders"])
    assert info["best"] == int(np.argmax(info["q"]))
    assert [d.uid for d in demos] == [ctx.pool[i].uid for i in info["orders"][info["best"]]]
    again = make_selector("policy_rank", path=str(policy_file), n_sets=8).select(_ctx(seed=3))
    assert [d.uid for d in again] == [d.uid for d in demos]  # a function of the context's rng
    with pytest.raises(SelectionError, match="n_sets=0"):
        make_selector("policy_rank", path=str(policy_file), n_sets=0)


def test_policy_rank_with_a_table_policy_asks_only_for_the_pool_rows(table_policy_file):
    path = table_policy_file
    ctx = _ctx()
    make_selector("policy_rank", path=str(path), n_sets=16).select(ctx)
    assert ctx.scorer.stats.queries == len(ctx.pool)  # the pool's zero-shot table rows, once; no prompt scored
