"""The per-query MDP: neighbourhoods and features, the env, batched collection, offline training, the artifact,
the neighbour rules and the per-query policy selector (toy scorer, hashing embedder: no model)."""

from __future__ import annotations

import dataclasses
import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from agents.dqn import DQNAgent
from agents.per_query import (
    BEHAVIOURS,
    PerQueryStore,
    behaviour_order,
    collect_per_query,
    to_episodes,
    train_per_query,
)
from rl_select.embeddings import HashingEmbedder
from rl_select.errors import ConfigError, DataError, PolicyError, SelectionError
from rl_select.mdp.episode import EpisodeRule
from rl_select.mdp.per_query import (
    CANDIDATE_FEATURES,
    FEATURE_SETS,
    STATE_FEATURES,
    FeatureView,
    PoolTable,
    QueryContexts,
    features,
    pool_reliability,
    reward_of,
    step_gain,
)
from rl_select.mdp.per_query_policy import PerQueryPolicy, greedy_orders
from rl_select.mdp.qnet import CandidateQNet
from rl_select.selectors import SelectionContext, make_selector
from rl_select.testing import CachedToyScorer, toy_examples, toy_task

SPEC = toy_task(3)
DATA = toy_examples(SPEC, 140, seed=1)
POOL, QUERIES = DATA[:40], DATA[40:]
EMB = HashingEmbedder(64)


def _scorer(*, faithful=False, **kw):
    """The toy scorer; ``faithful``: every demonstration pushes towards its own label (a label-copying LM; left
    uncalibrated, since the toy's push is the same for every query and calibration would cancel it)."""
    scorer = CachedToyScorer(SPEC, calibrate=not faithful, **kw)
    if faithful:
        scorer.toy._quality = lambda demo: 1.0
    return scorer


def _contexts(m=8, scorer=None, queries=QUERIES):
    table = PoolTable.build(POOL, labels=SPEC.labels, embedder=EMB, scorer=scorer)
    return table, QueryContexts.build(table, queries, m=m, embedder=EMB, scorer=scorer)


# --- neighbourhoods and features -------------------------------------------------------------------------


def test_neighbours_are_the_most_similar_and_exclude_the_query_itself():
    table, ctx = _contexts(m=8, queries=[POOL[3], *QUERIES[:5]])
    assert ctx.nbr.shape == (6, 8) and ctx.sims.shape == (6, 8)
    assert np.all(np.diff(ctx.sims, axis=1) <= 1e-12)  # most similar first
    assert 3 not in ctx.nbr[0][:7]  # the query's own row ranks last
    full = EMB.encode([QUERIES[0].text]) @ table.emb.T
    assert np.isclose(ctx.sims[1, 0], full.max())


def test_features_have_the_documented_shapes_and_mean_what_they_say():
    table, ctx = _contexts(m=8, scorer=_scorer())
    state, cands = features(table, ctx, 0, [], 4)
    assert state.shape == (len(STATE_FEATURES),) and cands.shape == (8, len(CANDIDATE_FEATURES))
    assert np.isfinite(state).all() and np.isfinite(cands).all()
    col = {n: i for i, n in enumerate(CANDIDATE_FEATURES)}
    assert np.allclose(cands[:, col["sim"]], ctx.sims[0])
    assert np.all(cands[:, col["redundancy"]] == 0) and state[0] == 0.0
    state2, cands2 = features(table, ctx, 0, [2, 5], 4)
    assert state2[0] == pytest.approx(0.5)
    emb = table.emb[ctx.nbr[0]]
    assert cands2[0, col["redundancy"]] == pytest.approx(max(emb[0] @ emb[2], emb[0] @ emb[5]), abs=1e-5)
    y = table.labels[ctx.nbr[0]]
    assert cands2[:, col["chosen_share"]] == pytest.approx((y[:, None] == y[[2, 5]][None]).mean(axis=1))
    assert np.allclose(cands[:, col["zs_prob"]], ctx.zs[0][y])


@pytest.mark.parametrize("name", sorted(FEATURE_SETS))
def test_feature_sets_select_columns_and_say_whether_they_need_the_lm(name):
    view = FeatureView.of(name)
    table, ctx = _contexts(m=6, scorer=_scorer())
    s, c = view(table, ctx, 1, [0], 3)
    assert (s.shape[0], c.shape[1]) == view.dims
    assert view.needs_lm == name.startswith("full")


def test_pool_reliability_is_the_pools_zero_shot_and_leave_one_out_vote_accuracy():
    table, ctx = _contexts(m=6, scorer=_scorer())
    zs_acc, vote_acc = pool_reliability(table, 6)
    assert zs_acc == pytest.approx(np.mean(table.zs_correct)) and 0.0 <= vote_acc <= 1.0
    assert np.allclose(ctx.pool_acc, [zs_acc, vote_acc])
    # brute force: each pool row's 6 nearest other rows vote, weighted by similarity
    sims = table.emb @ table.emb.T
    np.fill_diagonal(sims, -np.inf)
    right = []
    for i in range(len(table.pool)):
        nb = np.argsort(-sims[i], kind="stable")[:6]
        right.append(np.argmax(np.bincount(table.labels[nb], weights=np.clip(sims[i, nb], 1e-6, None),
                                           minlength=table.n_labels)) == table.labels[i])
    assert vote_acc == pytest.approx(np.mean(right))
    # a pool whose neighbours always share the label: the vote is always right
    labels = np.arange(len(table.pool)) % 2
    sorted_emb = np.zeros_like(table.emb)
    sorted_emb[:, 0], sorted_emb[:, 1] = labels == 0, labels == 1
    clean = dataclasses.replace(table, emb=sorted_emb, labels=labels)
    assert pool_reliability(clean, 3)[1] == 1.0
    state, _ = features(table, ctx, 0, [], 4)
    assert list(state[-2:]) == pytest.approx([zs_acc, vote_acc])


def test_unknown_feature_set_and_bad_m_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown per-query feature set 'nope'"):
        FeatureView.of("nope")
    table = PoolTable.build(POOL, labels=SPEC.labels, embedder=EMB)
    with pytest.raises(SelectionError, match="M=41 neighbours per query; expected an integer in 1..40"):
        QueryContexts.build(table, QUERIES[:2], m=41, embedder=EMB)


def test_rewards_correct_and_margin():
    lp = np.log(np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]]))
    gold = np.array([0, 2])
    assert reward_of(lp, gold, "correct").tolist() == [1.0, 0.0]
    margin = reward_of(lp, gold, "margin")
    assert margin[0] == pytest.approx(np.log(0.7 / 0.2) / 3) and margin[1] == pytest.approx(np.log(0.3 / 0.5) / 3)
    with pytest.raises(ConfigError, match="unknown per-query reward"):
        reward_of(lp, gold, "accuracy")


# --- the env ---------------------------------------------------------------------------------------------


def _env(**kw):
    return gym.make(envs.PER_QUERY_SELECTION_ID, scorer=_scorer(), pool=POOL, queries=QUERIES[:30], embedder=EMB,
                    k=3, m=8, **kw)


def test_env_passes_gymnasiums_checker_and_rewards_the_final_prompt_only():
    env = _env()
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0, options={"query": 4})
    assert info["query"] == 4 and obs["action_mask"].tolist() == [1] * 8 + [0]
    rewards = []
    for a in (5, 0, 2):
        obs, r, term, trunc, info = env.step(np.int64(a))
        rewards.append(r)
    assert term and not trunc and rewards[:2] == [0.0, 0.0] and rewards[2] in (0.0, 1.0)
    assert info["chosen"] == [5, 0, 2] and obs["action_mask"].sum() == 0 and "correct" in info
    assert rewards[2] == float(info["correct"])


def test_gain_reward_pays_each_steps_margin_change_and_sums_to_final_minus_zero_shot():
    env = _env(reward="gain", allow_stop=True, min_len=1)
    check_env(env.unwrapped, skip_render_check=True)
    scorer, u = env.unwrapped.scorer, env.unwrapped
    _, info = env.reset(seed=0, options={"query": 7})
    rows = scorer.stats.queries
    gold = u.gold[[7]]
    rewards = [env.step(np.int64(a))[1] for a in (3, 1)]
    assert scorer.stats.queries - rows == 2 * (1 + 3)  # one row a prefix, with its three content-free rows
    _, r_stop, term, _, info = env.step(np.int64(8))  # STOP: the prompt did not change
    assert term and r_stop == 0.0 and info["chosen"] == [3, 1] and "correct" in info
    q, demos = u.ctx.queries[7], u.ctx.demos(u.table, 7, [3, 1])
    zero, final = scorer.logprobs(demos=[], queries=[q]), scorer.logprobs(demos=demos, queries=[q])
    first = scorer.logprobs(demos=demos[:1], queries=[q])
    assert rewards[0] == pytest.approx(step_gain(zero, first, gold)[0])
    assert sum(rewards) == pytest.approx(reward_of(final, gold, "margin")[0] - reward_of(zero, gold, "margin")[0])
    assert info["correct"] == bool(final[0].argmax() == gold[0])
    with pytest.raises(ConfigError, match=r"unknown per-query reward 'gains'; expected one of \['correct', 'margin', "
                                          r"'gain'\]"):
        _env(reward="gains")


def test_sb3s_masked_dqn_learns_online_from_the_gain_reward_and_its_q_net_selects_per_query():
    """The SB3 agent trains on the Gymnasium env itself (no logged store), with per-step rewards; a label-copying LM
    rewards the query's gold-label neighbours, which the features hint at. Its Q-network is the policy's kind:
    its greedy orders must beat random ones."""
    scorer = _scorer(faithful=True)
    env = gym.make(envs.PER_QUERY_SELECTION_ID, scorer=scorer, pool=POOL, queries=QUERIES[:60], embedder=EMB,
                   k=3, m=8, reward="gain")
    agent = DQNAgent(hidden=(32,), learning_starts=100, batch_size=32, target_update_interval=100, seed=0,
                     exploration_fraction=0.5).learn(env, 600)
    u = env.unwrapped
    rng = np.random.default_rng(0)
    orders = {"learned": greedy_orders(agent.qnet, u.view, u.table, u.ctx, 3),
              "random": [behaviour_order("random", 8, 3, rng) for _ in u.ctx.queries]}
    margin = {name: reward_of(scorer.logprobs_many(demo_lists=[u.ctx.demos(u.table, i, o) for i, o in enumerate(os)],
                                                   queries=list(u.ctx.queries)), u.gold, "margin").mean()
              for name, os in orders.items()}
    assert all(len(set(o)) == 3 for o in orders["learned"]) and margin["learned"] > margin["random"] + 0.1


def test_env_refuses_masked_actions_and_bad_queries_in_one_line():
    env = _env().unwrapped
    env.reset(seed=1)
    env.step(np.int64(1))
    with pytest.raises(SelectionError, match="action 1 is masked"):
        env.step(np.int64(1))
    with pytest.raises(SelectionError, match=r"options\['query'\]=99; expected an integer in 0..29"):
        env.reset(options={"query": 99})


# --- collection, store, training ----------------------------------------------------------------------------


def test_behaviour_orders_are_legal_and_knn_perturbed_keeps_the_nearest_often():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    for policy in BEHAVIOURS:
        for _ in range(20):
            order = behaviour_order(policy, 8, 4, rng, labels=labels, vote_top=0)
            assert len(order) == 4 == len(set(order)) and all(0 <= j < 8 for j in order)
    orders = [behaviour_order("knn_perturbed", 16, 4, np.random.default_rng(i)) for i in range(200)]
    assert np.mean([o[-1] == 0 for o in orders]) > 0.4
    with pytest.raises(ConfigError, match="unknown behaviour policy"):
        behaviour_order("greedy", 8, 4, rng)
    with pytest.raises(ConfigError, match="needs the neighbours' labels"):
        behaviour_order("one_label", 8, 4, rng)


def test_one_label_behaviour_pushes_one_label_mostly_the_votes():
    labels = np.array([1, 0, 2, 0, 1, 0, 2, 0, 1, 2, 1, 2, 0, 1, 2, 1])
    orders = [behaviour_order("one_label", 16, 3, np.random.default_rng(i), labels=labels, vote_top=0)
              for i in range(400)]
    majority = [np.bincount(labels[o], minlength=3).argmax() for o in orders]
    homogeneous = np.mean([np.bincount(labels[o]).max() >= 2 for o in orders])
    assert homogeneous > 0.9 and 0.55 < np.mean(np.array(majority) == 0) < 0.8  # 1/2 + 1/2 * 5/16 ~ 0.66
    assert all(o == sorted(o, reverse=True) for o in orders)  # the nearest last


def test_collection_scores_a_whole_batch_in_one_call_and_resumes_to_the_same_store(tmp_path, monkeypatch):
    scorer = _scorer()
    table, ctx = _contexts(m=8, scorer=scorer, queries=QUERIES[:50])  # 150 episodes: each behaviour in turn
    calls = []
    real = scorer.logprobs_many
    monkeypatch.setattr(scorer, "logprobs_many", lambda **kw: calls.append(len(kw["queries"])) or real(**kw))
    full = PerQueryStore(tmp_path / "full.jsonl")
    collect_per_query(scorer, table, ctx, full, n_episodes=150, k=3, seed=7, batch=50)
    assert calls == [50, 50, 50]
    part = PerQueryStore(tmp_path / "part.jsonl")
    collect_per_query(scorer, table, ctx, part, n_episodes=70, k=3, seed=7, batch=50)
    with part.path.open("a") as f:
        f.write('{"query": "toy:4')  # a torn line from a killed run
    assert len(part) == 70
    assert collect_per_query(scorer, table, ctx, part, n_episodes=150, k=3, seed=7, batch=50) == 80
    assert part.path.read_text() == full.path.read_text()
    eps = full.load()
    assert {e.policy for e in eps} == set(BEHAVIOURS) and all(len(e.order) == 3 for e in eps)
    # the logged log-probs are the scorer's for that prompt
    e = eps[3]
    i = [q.uid for q in ctx.queries].index(e.query)
    assert np.allclose(scorer.logprobs(demos=ctx.demos(table, i, e.order), queries=[ctx.queries[i]])[0],
                       e.logprobs, atol=1e-5)


def test_store_refuses_other_settings(tmp_path):
    store = PerQueryStore(tmp_path / "s.jsonl")
    store.check_meta({"task": "a", "m": 8})
    store.check_meta({"task": "a", "m": 8})
    with pytest.raises(DataError, match=r"collected with other settings \(\['m'\]\)"):
        store.check_meta({"task": "a", "m": 16})


def _trained(tmp_path, feature_set="full", n=300, faithful=False):
    scorer = _scorer(faithful=faithful)
    table, ctx = _contexts(m=8, scorer=scorer)
    store = PerQueryStore(tmp_path / "s.jsonl")
    collect_per_query(scorer, table, ctx, store, n_episodes=n, k=3, seed=0)
    view = FeatureView.of(feature_set)
    eps = to_episodes(store.load(), table, ctx, view, k=3, reward="margin", labels=SPEC.labels)
    qnet, summary = train_per_query(eps, seed=0, steps=200)
    policy = PerQueryPolicy(qnet, feature_set=feature_set, m=8, k=3, reward="margin", scorer_spec=None,
                            training={"episodes": len(eps)})
    return scorer, table, ctx, eps, policy


def test_logged_episodes_become_training_episodes_with_the_terminal_reward(tmp_path):
    scorer, table, ctx, eps, _ = _trained(tmp_path, n=60)
    ep = eps[0]
    assert ep.states.shape == (4, FeatureView.of("full").dims[0])
    assert ep.candidates.shape == (4, 8, len(CANDIDATE_FEATURES))
    assert ep.masks[-1].sum() == 0 and ep.rewards[:2] == [0.0, 0.0]
    rule = EpisodeRule(n_candidates=8, k=3)
    assert all((ep.masks[t] == rule.mask(ep.actions[:t])).all() for t in range(3))


def test_training_exports_a_policy_that_roundtrips_and_selects_k_distinct_neighbours(tmp_path):
    scorer, table, ctx, _, policy = _trained(tmp_path)
    path = policy.save(tmp_path / "pq.safetensors")
    loaded = PerQueryPolicy.load(path)
    assert (loaded.m, loaded.k, loaded.feature_set, loaded.reward) == (8, 3, "full", "margin")
    a = greedy_orders(policy.qnet, policy.view, table, ctx, 3)
    b = greedy_orders(loaded.qnet, loaded.view, table, ctx, 3)
    assert a == b and all(len(set(o)) == 3 for o in a)
    demos = loaded.select_for(POOL, QUERIES[:10], labels=SPEC.labels, embedder=EMB, scorer=scorer)
    assert [len({d.uid for d in ds}) for ds in demos] == [3] * 10
    assert all(d in POOL for ds in demos for d in ds)


def test_the_learned_policy_beats_random_orders_on_its_training_queries(tmp_path):
    """A label-copying LM rewards demonstrations of the query's gold label, which the features hint at (the
    neighbourhood vote, the zero-shot prediction): the Q must find them better than random orders do."""
    scorer, table, ctx, eps, policy = _trained(tmp_path, n=600, faithful=True)
    gold = np.array([SPEC.labels.index(q.label) for q in ctx.queries])
    orders = greedy_orders(policy.qnet, policy.view, table, ctx, 3)
    lp = scorer.logprobs_many(demo_lists=[ctx.demos(table, i, o) for i, o in enumerate(orders)],
                              queries=list(ctx.queries))
    learned = reward_of(lp, gold, "margin").mean()
    behaviour = np.mean([e.rewards[-1] for e in eps if e.policy == "random"])
    assert learned > behaviour + 0.05


def test_policy_files_refuse_edits_the_other_shape_and_too_small_pools(tmp_path):
    scorer, table, ctx, _, policy = _trained(tmp_path, n=60)
    path = policy.save(tmp_path / "pq.safetensors")
    raw = bytearray(path.read_bytes())
    at = raw.find(b'\\"k\\": 3,')  # the document is JSON inside the header's JSON: quotes are escaped
    assert at > 0
    raw[at + 7] = ord("2")
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(bytes(raw))
    with pytest.raises(PolicyError, match="edited or corrupted"):
        PerQueryPolicy.load(edited)
    from rl_select.mdp.policy import SelectorPolicy

    with pytest.raises(PolicyError, match="holds a 'per_query_policy' document; expected 'policy'"):
        SelectorPolicy.load(path)
    with pytest.raises(SelectionError, match="M=8 neighbours per query but the pool has 5"):
        policy.select_for(POOL[:5], QUERIES[:2], labels=SPEC.labels, embedder=EMB, scorer=scorer)
    with pytest.raises(PolicyError, match="do not match feature set"):
        PerQueryPolicy(CandidateQNet(3, 3), feature_set="full", m=8, k=3, reward="correct")


def test_a_fixed_prompt_policy_is_refused_as_a_per_query_one(tmp_path):
    from rl_select.mdp.artifacts import write_artifact

    path = write_artifact(tmp_path / "fixed.safetensors", kind="policy", tensors={}, doc={"k": 4})
    with pytest.raises(PolicyError, match="is a fixed-prompt policy .*; expected a per-query policy"):
        PerQueryPolicy.load(path)


# --- selectors -------------------------------------------------------------------------------------------


def _ctx(k=4):
    return SelectionContext(pool=POOL, val=[], k=k, scorer=_scorer(), rng=np.random.default_rng(0))


@pytest.mark.parametrize("name", ["knn_majority", "knn_balanced", "knn_mmr"])
def test_neighbour_rules_choose_k_distinct_neighbours_nearest_last(name):
    sel = make_selector(name, m=8, embedder=EMB)
    demos = sel.select_for(_ctx(), QUERIES[:12])
    table, ctx = _contexts(m=8, queries=QUERIES[:12])
    for i, ds in enumerate(demos):
        assert len({d.uid for d in ds}) == 4
        pos = [[POOL[j].uid for j in ctx.nbr[i]].index(d.uid) for d in ds]
        assert pos[-1] == min(pos)  # the most similar chosen one sits next to the query
    assert sel.tags.per_query and not sel.tags.val_labels and not sel.tags.lm


def test_majority_rule_keeps_the_majority_label_and_balanced_spreads_labels():
    table, ctx = _contexts(m=8, queries=QUERIES[:20])
    maj = make_selector("knn_majority", m=8, embedder=EMB).select_for(_ctx(3), QUERIES[:20])
    bal = make_selector("knn_balanced", m=8, embedder=EMB).select_for(_ctx(3), QUERIES[:20])
    for i in range(20):
        y = table.labels[ctx.nbr[i]]
        top = SPEC.labels[int(np.argmax(np.bincount(y, weights=np.clip(ctx.sims[i], 1e-6, None), minlength=3)))]
        if (y == SPEC.labels.index(top)).sum() >= 3:
            assert {d.label for d in maj[i]} == {top}
        assert len({d.label for d in bal[i]}) == min(3, len(set(y.tolist())))


def test_policy_selector_uses_the_policy_and_checks_k(tmp_path):
    scorer, table, ctx, _, policy = _trained(tmp_path, n=60)
    path = policy.save(tmp_path / "pq.safetensors")
    sel = make_selector("policy_pq", path=str(path), embedder=EMB)
    demos = sel.select_for(SelectionContext(pool=POOL, val=[], k=3, scorer=scorer, rng=np.random.default_rng(0)),
                           QUERIES[:5])
    assert demos == policy.select_for(POOL, QUERIES[:5], labels=SPEC.labels, embedder=EMB, scorer=scorer)
    with pytest.raises(SelectionError, match="trained for k=3; expected k=3"):
        sel.select_for(SelectionContext(pool=POOL, val=[], k=2, scorer=scorer, rng=np.random.default_rng(0)),
                       QUERIES[:5])


# --- per-query prompt files --------------------------------------------------------------------------------


def test_a_per_query_policy_writes_a_prompt_file_that_renders_each_query_with_its_own_demos(tmp_path):
    from rl_select.prompt_file import PromptFile, PromptFileError, select_per_query_prompt

    scorer, table, ctx, _, policy = _trained(tmp_path, n=60)
    queries = QUERIES[:6]
    pf = select_per_query_prompt(policy, task=SPEC, pool=POOL, queries=queries, scorer=scorer, val=QUERIES[6:16],
                                 embedder=EMB)
    want = policy.select_for(POOL, queries, labels=SPEC.labels, embedder=EMB, scorer=scorer)
    assert pf.kind == "per_query" and pf.per_query.method == "policy" and pf.k == 3
    assert pf.demos_for(queries) == want and 0.0 <= pf.val_accuracy <= 1.0 and pf.n_val == 10
    path = pf.save(tmp_path / "pq.json")
    loaded = PromptFile.load(path)
    assert loaded.render_many(queries) == pf.render_many(queries)
    assert queries[0].text in path.with_suffix(".txt").read_text()
    with pytest.raises(PromptFileError, match="not one of the 6 queries .*needs the LM to choose for a new query"):
        loaded.render("a query nobody chose for")
    doc = json.loads(path.read_text())
    doc["per_query"]["assigned"][0]["demos"][0] = "toy:999"
    path.write_text(json.dumps(doc))
    with pytest.raises(PromptFileError, match="edited or corrupted"):
        PromptFile.load(path)


def test_the_pretrained_name_resolves_to_the_shipped_policy():
    from rl_select.mdp.per_query_policy import resolve_policy_path

    path = resolve_policy_path("pretrained")
    policy = PerQueryPolicy.load("pretrained")
    assert path.is_file() and path.stat().st_size < 1_000_000
    assert policy.training["tasks"] and policy.training["rebuild"].startswith("rl-select per-query")
    assert resolve_policy_path("x.safetensors").name == "x.safetensors"
    large = PerQueryPolicy.load("pretrained-large")  # the one for pools of 1,000 rows or more
    assert large.training["run_config"]["n_pool"] == 1000 and policy.training["run_config"]["n_pool"] == 100
    assert large.verifier is not None and policy.verifier is not None
    for shipped in (policy, large):  # the verify mode votes with an answer stacker fitted on every training task
        assert shipped.stacker is not None and shipped.stacker_training["tasks"] == shipped.training["tasks"]
        assert all(0 < n <= 17_000 for n in shipped.stacker_training["lm_rows_per_task"].values())
    assert "per_query_pool1000_trained.json" in large.training["rebuild"]


def test_the_same_model_in_another_dtype_is_accepted_with_a_warning_another_model_refused(tmp_path):
    from types import SimpleNamespace

    from rl_select.lm.spec import ScorerSpec
    from rl_select.mdp.per_query_policy import PerQueryPolicyWarning

    trained = ScorerSpec(model="bundled", dtype="bf16", model_fingerprint="aaa", calibrate=True)
    policy = PerQueryPolicy(CandidateQNet(*FeatureView.of("full").dims), feature_set="full", m=8, k=3,
                            reward="margin", scorer_spec=trained)
    fp32 = SimpleNamespace(scorer_spec=trained.replace(dtype="fp32", model_fingerprint="bbb"))
    with pytest.warns(PerQueryPolicyWarning, match="trained with dtype bf16, used with fp32"):
        assert policy.check_scorer(fp32)
    other_weights = SimpleNamespace(scorer_spec=trained.replace(model_fingerprint="ccc"))
    with pytest.raises(PolicyError, match="model_fingerprint: 'aaa' vs 'ccc'"):
        policy.check_scorer(other_weights)
    other_model = SimpleNamespace(scorer_spec=trained.replace(dtype="fp32", model="gpt2"))
    with pytest.raises(PolicyError, match="model: 'bundled' vs 'gpt2'.*training scorer \\(model='bundled'\\)"):
        policy.check_scorer(other_model)
    uncalibrated = SimpleNamespace(scorer_spec=trained.replace(dtype="fp32", calibrate=False))
    with pytest.raises(PolicyError, match="calibrate: True vs False"):
        policy.check_scorer(uncalibrated)


def test_critic_mode_keeps_each_querys_best_candidate_by_the_last_steps_q(tmp_path):
    import torch

    from rl_select.mdp.neighbour_orders import ORDERS
    from rl_select.mdp.per_query_policy import critic_orders, last_step_values

    scorer, table, ctx, _, policy = _trained(tmp_path, n=60)
    orders, sources = critic_orders(policy.qnet, policy.view, table, ctx, 3)
    cands = {"greedy": greedy_orders(policy.qnet, policy.view, table, ctx, 3),
             **{n: [o(table, ctx, i, 3) for i in range(len(ctx.queries))] for n, o in ORDERS.items()}}
    batched = last_step_values(policy.qnet, policy.view, table, ctx, orders)
    for i in range(0, len(ctx.queries), 7):
        values = {}
        for name, cand in cands.items():  # one query at a time, by hand
            o = cand[i]
            s, c = policy.view(table, ctx, i, o[:-1], 3)
            with torch.no_grad():
                values[name] = float(policy.qnet(torch.as_tensor(s[None]), torch.as_tensor(c[None]))[0, o[-1]])
        best = max(values, key=values.get)
        assert sources[i] == best and orders[i] == cands[best][i]
        assert batched[i] == pytest.approx(values[best], abs=1e-5)
    assert len(set(sources)) > 1  # the critic does not always keep one source
    demos = policy.select_for(POOL, QUERIES, labels=SPEC.labels, embedder=EMB, scorer=scorer)  # critic by default
    assert [[d.uid for d in ds] for ds in demos] == [[table.pool[ctx.nbr[i, j]].uid for j in o]
                                                     for i, o in enumerate(orders)]
    greedy = policy.select_for(POOL, QUERIES, labels=SPEC.labels, embedder=EMB, scorer=scorer, mode="greedy")
    assert [[d.uid for d in ds] for ds in greedy] == [[table.pool[ctx.nbr[i, j]].uid for j in o]
                                                      for i, o in enumerate(cands["greedy"])]
    with pytest.raises(SelectionError, match="mode 'beam'; expected one of"):
        policy.select_for(POOL, QUERIES[:2], labels=SPEC.labels, embedder=EMB, scorer=scorer, mode="beam")
