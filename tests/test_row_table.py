"""Issue 11: the one-off row table, the table feature sets (layouts, LM cost per step) and store headers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.rollouts import RolloutStore
from rl_select.errors import ConfigError, DataError
from rl_select.experiments.config import RunConfig
from rl_select.experiments.executors import LocalExecutor
from rl_select.experiments.training import EpisodeWorker, build_task_envs, collect_rollouts, store_path
from rl_select.mdp.features import FEATURE_SETS, FeatureSpec, Featurizer
from rl_select.mdp.table import RowTable, table_key
from rl_select.testing import CachedToyScorer, toy_env, toy_examples, toy_task


class OtherModel(CachedToyScorer):
    @property
    def fingerprint(self) -> str:
        return "cached-toy:other-model"


# --- layouts ---------------------------------------------------------------------------------------


def test_existing_layouts_are_unchanged():
    active, labelled = FeatureSpec("active"), FeatureSpec("labelled")
    assert active.state_names == ("step_frac", "val_mean_entropy", "val_mean_max", "val_query_entropy",
                                  "val_query_max", "val_log_mass")
    assert active.cand_names == ("entropy", "max_prob", "min_prob", "std_prob", "log_mass", "chosen")
    assert (labelled.state_dim, labelled.cand_dim) == (7, 11)
    assert not active.uses_table and not labelled.uses_table


def test_table_feature_set_layouts():
    assert set(FEATURE_SETS) >= {"zeroshot", "table"}
    zs, tab = FeatureSpec("zeroshot"), FeatureSpec("table")
    assert zs.state_names == FeatureSpec("active").state_names  # val under the current prompt
    assert zs.cand_names == tab.cand_names == ("zs_entropy", "zs_max_prob", "zs_min_prob", "zs_std_prob",
                                               "zs_log_mass", "chosen", "length", "max_cos", "mean_cos")
    assert tab.state_names == ("step_frac", "chosen_zs_entropy", "chosen_zs_max", "chosen_length",
                               "chosen_mean_cos")
    assert FeatureSpec.from_dict(tab.to_dict()) == tab
    with pytest.raises(ConfigError, match="unknown feature set"):
        FeatureSpec("tabel")


@pytest.mark.parametrize("kind", ["zeroshot", "table"])
def test_table_sets_observations_fit_their_spaces(kind):
    env = toy_env(feature_set=kind, k=3, n_candidates=6)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    obs, *_ = env.step(int(np.flatnonzero(env.action_masks())[0]))
    assert env.observation_space.contains(obs)
    assert obs["candidates"][:, 5].sum() == 1.0  # the chosen flag


# --- LM cost per step --------------------------------------------------------------------------------


def _rows_per_call(feature_set: str, reward: str, *, k: int = 3, n: int = 6, n_val: int = 8):
    spec = toy_task(2)
    data = toy_examples(spec, 40 + n_val, seed=0)
    scorer = CachedToyScorer(spec)  # no disk cache: every row asked is counted
    from envs.demo_selection import DemoSelectionEnv

    env = DemoSelectionEnv(scorer=scorer, pool=data[:40], val=data[40:], k=k, n_candidates=n,
                           feature_set=feature_set, reward=reward)
    rows = []
    before = scorer.stats.queries
    env.reset(seed=1)
    rows.append(scorer.stats.queries - before)
    table = env.featurizer.table
    one_off = table.lm_rows if table is not None else 0
    for _ in range(k):
        before = scorer.stats.queries
        env.step(int(np.flatnonzero(env.action_masks())[0]))
        rows.append(scorer.stats.queries - before)
    return rows, one_off


@pytest.mark.parametrize("feature_set,reward", [(f, r) for f in FEATURE_SETS
                                                 for r in ("marginal", "terminal")])
def test_lm_rows_per_step_match_the_declared_cost(feature_set, reward):
    k, n, n_val = 3, 6, 8
    rows, one_off = _rows_per_call(feature_set, reward, k=k, n=n, n_val=n_val)
    spec = FeatureSpec(feature_set)
    cost = spec.lm_rows(n, n_val, reward=reward, k=k)
    if spec.uses_table:
        # reset fills the table: the one-off rows (val's only where they are read: the zeroshot state, the
        # marginal reward's empty-prompt accuracy)
        in_table = n + (n_val if feature_set == "zeroshot" or reward == "marginal" else 0)
        assert one_off == in_table and rows[0] == in_table
        assert sum(rows[1:]) == cost["per_episode"]
    else:
        assert one_off == 0 and sum(rows) == cost["per_episode"]
    if feature_set == "zeroshot":
        assert rows[1:] == [n_val] * k  # only the validation queries under the prompt
    if feature_set in ("table", "table_labelled"):
        assert rows[1:] == ([n_val] * k if reward == "marginal" else [0] * (k - 1) + [n_val])


def test_a_second_episode_reads_the_table():
    env = toy_env(feature_set="table", reward="terminal", k=2, n_candidates=6, n_examples=6, n_val=4)
    env.reset(seed=0)
    scorer_rows = env.featurizer.table.lm_rows
    env.reset(seed=1)  # same 6 rows: nothing new to fill
    assert env.featurizer.table.lm_rows == scorer_rows == 6  # the 6 pool rows (terminal reward: no val rows)


def test_terminal_reward_of_the_table_set_is_the_prompt_accuracy():
    env = toy_env(feature_set="table", reward="terminal", k=2, n_candidates=6)
    ref = toy_env(feature_set="active", reward="terminal", k=2, n_candidates=6)
    for e in (env, ref):
        e.reset(seed=3)
    r = [None, None]
    for i, e in enumerate((env, ref)):
        for a in (0, 1):
            _, r[i], done, _, info = e.step(a)
        assert done
    assert r[0] == pytest.approx(r[1])


# --- the table: reuse and rebuild ---------------------------------------------------------------


def test_table_is_reused_from_its_file_and_rebuilt_for_another_model_or_task(tmp_path):
    spec = toy_task(2)
    rows = toy_examples(spec, 12, seed=0)
    first = RowTable.in_folder(CachedToyScorer(spec), tmp_path)
    assert first.ensure(rows) == 12 and first.path.exists()
    lp, emb, length = first.lookup(rows[:3])
    assert lp.shape == (3, 2) and emb.shape[0] == 3 and ((0 <= length) & (length <= 1)).all()

    again_scorer = CachedToyScorer(spec)
    again = RowTable.in_folder(again_scorer, tmp_path)
    assert len(again) == 12 and again.rebuilt is None
    lp2, _, _ = again.lookup(rows[:3])
    assert again_scorer.stats.queries == 0 and again.lm_rows == 0  # read, not recomputed
    np.testing.assert_array_equal(lp, lp2)

    other = OtherModel(spec)
    assert table_key(other, again.embedder) != again.key
    stale = RowTable(other, path=first.path)  # a file built for another model: rebuilt, never reused
    assert len(stale) == 0 and "scorer" in stale.rebuilt
    stale.ensure(rows[:2])
    assert other.stats.queries == 2

    spec3 = toy_task(3)
    other_task = RowTable(CachedToyScorer(spec3), path=first.path)
    assert len(other_task) == 0 and "task" in other_task.rebuilt


def test_featurizer_of_a_table_set_uses_the_given_table(tmp_path):
    spec = toy_task(2)
    data = toy_examples(spec, 20, seed=0)
    scorer = CachedToyScorer(spec)
    table = RowTable.in_folder(scorer, tmp_path)
    feat = Featurizer("zeroshot", scorer, val=data[14:], table=table)
    res = feat.compute(tuple(data[:6]), [], 2)
    assert len(table) == 12 and res.candidates.shape == (6, 9)
    np.testing.assert_allclose(res.pool_logprobs, scorer.logprobs(demos=[], queries=data[:6]))


# --- the store header --------------------------------------------------------------------------------


@pytest.fixture
def cfg(tmp_path, data_root) -> RunConfig:
    return RunConfig.from_dict(dict(task="sst2", data=str(data_root / "sst2"), k=2, n_pool=6, n_val=8,
                                    seeds=[0], train_pool=40, episodes=3, cache=str(tmp_path / "c.sqlite"),
                                    out=str(tmp_path / "runs"), n_candidates=6, feature_set="table",
                                    reward="terminal", store=str(tmp_path / "store.jsonl")))


def _collect(cfg):
    envs = build_task_envs(cfg, lambda spec: CachedToyScorer(spec))
    return collect_rollouts(cfg, LocalExecutor(EpisodeWorker(envs)))


def test_store_records_its_settings_and_refuses_others(cfg, tmp_path):
    assert _collect(cfg)[0]["episodes"] == 3
    store = RolloutStore(store_path(cfg, "sst2"))
    meta = json.loads(store.meta_path.read_text())
    assert meta["feature_set"] == "table" and meta["reward"] == "terminal" and meta["n_candidates"] == 6
    assert list((tmp_path / "tables").glob("rows-*.npz"))  # the one-off table sits beside the cache
    assert _collect(cfg.updated(episodes=4))[0]["written"] == 1  # same settings: resumed
    for change, word in ((dict(feature_set="zeroshot"), "feature_set"), (dict(reward="marginal"), "reward"),
                         (dict(n_candidates=5), "n_candidates"), (dict(k=3), "k"), (dict(calibrate=True), "calibrate"),
                         (dict(model="other"), "model")):
        with pytest.raises(DataError, match=f"collected with {word}=") as err:
            _collect(cfg.updated(episodes=6, **change))
        assert "\n" not in str(err.value)


# --- the scorer's batching ---------------------------------------------------------------------------


def test_padded_batches_cover_every_row_once_and_cut_where_lengths_jump():
    from rl_select.lm.hf import padded_batches

    lengths = [8, 9, 9, 10, 40, 41, 42, 90]
    order = list(range(len(lengths)))
    batches = padded_batches(order, lengths, 4, 8)
    assert [i for b in batches for i in b] == order and max(map(len, batches)) <= 4
    assert batches == [[0, 1, 2, 3], [4, 5, 6], [7]]  # fixed chunks of 4 would pad 10 -> 42 tokens
    assert padded_batches([], [], 4, 8) == []
    assert padded_batches(order, lengths, 1, 0) == [[i] for i in order]


def test_offline_agent_trains_from_a_table_store_and_its_policy_selects(cfg):
    from rl_select.experiments.training import train_agent

    envs = build_task_envs(cfg, lambda spec: CachedToyScorer(spec))
    collect_rollouts(cfg.updated(episodes=6), LocalExecutor(EpisodeWorker(envs)))
    res = train_agent(cfg.updated(train_steps=40, hidden=[8]), envs)
    assert res.policy is not None and res.policy.feature_spec.kind == "table"
    env = envs[0].env
    demos = res.policy.select(list(env.pool[:6]), scorer=envs[0].scorer, val=list(env.val), force=True)
    assert len(demos) == cfg.k


def test_table_labelled_features_read_the_candidates_labels_and_the_table():
    env = toy_env(feature_set="table_labelled", reward="terminal", k=3, n_candidates=6, n_labels=3)
    obs, _ = env.reset(seed=0)
    spec = env.feature_spec
    assert (spec.state_dim, spec.cand_dim) == (7, 14)
    names = spec.cand_names
    cands = obs["candidates"]
    assert np.all(cands[:, names.index("under_represented")] == 1.0)  # nothing chosen yet
    pool = env.candidates
    first = int(np.flatnonzero(env.action_masks())[0])
    obs, *_ = env.step(first)
    cands = obs["candidates"]
    same = np.array([p.label == pool[first].label for p in pool], dtype=np.float32)
    np.testing.assert_array_equal(cands[:, names.index("same_as_last")], same)
    np.testing.assert_array_equal(cands[:, names.index("same_label_share")], same)
    np.testing.assert_array_equal(cands[:, names.index("under_represented")], 1.0 - same)
    gold_p = cands[:, names.index("zs_gold_prob")]
    assert np.all((gold_p >= 0) & (gold_p <= 1))
    state = obs["state"]
    assert state[spec.state_names.index("label_balance")] == 0.0  # one demo: one label
    assert state[spec.state_names.index("chosen_zs_gold_prob")] == pytest.approx(gold_p[first])
