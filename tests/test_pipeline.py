"""collect -> train -> export -> select, end to end with the model-free ToyScorer on real task rows."""

from __future__ import annotations

import numpy as np
import pytest

from rl_select.errors import ConfigError, PolicyError
from rl_select.experiments.config import RunConfig
from rl_select.experiments.executors import LocalExecutor
from rl_select.experiments.harness import EvalWorker, TaskData, run_grid, summarise
from rl_select.experiments.training import (
    EpisodeWorker,
    RoundRobinEnv,
    build_task_envs,
    collect_rollouts,
    load_rollouts,
    plot_curve,
    store_path,
    train_agent,
)
from rl_select.mdp.policy import PolicyWarning, SelectorPolicy
from rl_select.testing import ToyScorer


@pytest.fixture
def cfg(tmp_path, data_root) -> RunConfig:
    return RunConfig.from_dict(dict(task="sst2", data=str(data_root / "sst2"), k=2, n_pool=6, n_val=8, n_test=20,
                                    seeds=[0], train_pool=40, episodes=6, train_steps=60, hidden=[16],
                                    out=str(tmp_path / "runs"), selectors=["random"]))


def toy_envs(cfg, **kw):
    return build_task_envs(cfg, lambda spec: ToyScorer(spec), **kw)


def test_collect_is_resumable_and_offline_training_exports_a_policy(cfg, tmp_path):
    envs = toy_envs(cfg)
    first = collect_rollouts(cfg, LocalExecutor(EpisodeWorker(envs)))
    assert first[0]["written"] == 6 and first[0]["episodes"] == 6
    again = collect_rollouts(cfg, LocalExecutor(EpisodeWorker(envs)))
    assert again[0]["written"] == 0 and again[0]["lm_queries"] == 0  # nothing repeated
    assert len(load_rollouts(cfg, envs)) == 6
    res = train_agent(cfg, envs)
    assert res.curve and res.policy is not None
    path = res.policy.save(tmp_path / "policy.safetensors")
    pol = SelectorPolicy.load(path)
    pool = list(TaskData.load(cfg).splits(cfg, 0).pool)
    val = list(TaskData.load(cfg).splits(cfg, 0).val)
    a = pol.select(pool, scorer=envs[0].scorer, val=val)
    b = res.policy.select(pool, scorer=envs[0].scorer, val=val)
    assert [d.content() for d in a] == [d.content() for d in b] and len(a) == cfg.k
    png = plot_curve(res.curve, tmp_path / "curve.png", title="t", ylabel=res.curve_label)
    assert png.stat().st_size > 1000


def test_offline_without_rollouts_is_refused(cfg):
    with pytest.raises(ConfigError, match="rl-select collect"):
        train_agent(cfg, toy_envs(cfg))


def test_store_path_depends_on_settings(cfg):
    assert store_path(cfg, "sst2") != store_path(cfg.updated(k=3), "sst2")
    assert store_path(cfg, "sst2") == store_path(cfg.updated(train_steps=5), "sst2")


def test_tabular_on_a_fixed_pool(cfg):
    envs = toy_envs(cfg, fixed_pool=True)
    res = train_agent(cfg.updated(**{"agent": "tabular", "episodes": 30}), envs)
    assert res.policy is None and len(res.curve) == 30


def test_dqn_trains_on_two_tasks_and_transfers_to_a_third(cfg, tmp_path, data_root):
    multi = cfg.updated(**{"agent": "dqn", "train_tasks": ["sst2", "agnews"], "train_steps": 80,
                         "data": None})
    envs = toy_envs(multi)
    assert [te.task for te in envs] == ["sst2", "agnews"]
    res = train_agent(multi, envs)
    assert res.summary["timesteps"] == 80
    path = res.policy.save(tmp_path / "p.safetensors")
    unseen = cfg.updated(**{"task": "subj", "data": str(data_root / "subj")})
    data = TaskData.load(unseen)
    splits = data.splits(unseen, 0)
    policy = SelectorPolicy.load(path)
    with pytest.raises(PolicyError, match="another scorer"):  # ToyScorer's fingerprint names its task
        policy.select(list(splits.pool), scorer=ToyScorer(data.spec), val=list(splits.val))
    with pytest.warns(PolicyWarning, match="another scorer"):
        demos = policy.select(list(splits.pool), scorer=ToyScorer(data.spec), val=list(splits.val), force=True)
    assert len(demos) == cfg.k and all(d.label in data.spec.labels for d in demos)


def test_round_robin_refuses_mismatched_spaces(cfg):
    a = toy_envs(cfg)[0].env
    b = toy_envs(cfg.updated(n_candidates=5))[0].env
    with pytest.raises(ConfigError, match="same n_candidates"):
        RoundRobinEnv([a, b])


def test_policy_selector_sits_in_the_baselines_table(cfg, tmp_path):
    envs = toy_envs(cfg)
    collect_rollouts(cfg, LocalExecutor(EpisodeWorker(envs)))
    res = train_agent(cfg, envs)
    path = res.policy.save(tmp_path / "policy.safetensors")
    grid = cfg.updated(**{"selectors": ["random", "policy"],
                        "selector_args": {"policy": {"path": str(path)}}, "seeds": [0, 1]})
    data = TaskData.load(grid)
    rows = run_grid(grid, LocalExecutor(EvalWorker(grid, data, envs[0].scorer))).rows
    summary = {s["selector"]: s for s in summarise(rows)}
    assert set(summary) == {"random", "policy"}
    assert 0.0 <= summary["policy"]["test_acc_mean"] <= 1.0
    assert summary["policy"]["select_lm_queries"] > 0
    assert np.isfinite(summary["policy"]["test_acc_std"])
