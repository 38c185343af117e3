"""The offline agent's settings the reference experiment varies: the regression target, the CQL weight and
the checkpoint check (model-free: ToyScorer episodes)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from agents.offline import OfflineCQLAgent, cql_dqn_loss
from agents.rollouts import random_valid_action, run_logged_episode, stack_episodes, standardize_returns
from rl_select.errors import ConfigError
from rl_select.experiments.config import RunConfig
from rl_select.mdp.qnet import CandidateQNet
from rl_select.testing import toy_env


@pytest.fixture(scope="module")
def episodes():
    env = toy_env(feature_set="table_labelled", reward="terminal", k=3, n_candidates=6)
    return [run_logged_episode(env, index=i, seed=0, choose=random_valid_action, policy="random") for i in range(12)]


def test_mc_target_regresses_on_the_logged_return(episodes):
    b = {k: torch.as_tensor(v) for k, v in stack_episodes(episodes).items()}
    torch.manual_seed(0)
    net = CandidateQNet(b["state"].shape[1], b["cands"].shape[2], (8,))
    _, td, cql = cql_dqn_loss(net, net, b, gamma=1.0, cql_alpha=0.0, target="mc")
    q = net(b["state"], b["cands"]).gather(1, b["action"][:, None]).squeeze(1)
    assert td.item() == pytest.approx((q - b["rtg"]).abs().mean().item(), rel=1e-6)
    _, td_boot, _ = cql_dqn_loss(net, net, b, gamma=1.0, cql_alpha=0.0, target="td")
    assert td_boot.item() != pytest.approx(td.item())  # the bootstrap is another target
    # terminal reward: every step's return-to-go is its episode's final reward
    for e, start in zip(episodes, range(0, 3 * len(episodes), 3)):
        assert torch.allclose(b["rtg"][start:start + 3], torch.tensor(float(sum(e.rewards))))


def test_the_agent_learns_with_either_target_and_records_it(episodes):
    for target in ("td", "mc"):
        agent = OfflineCQLAgent(hidden=(8,), gradient_steps=20, eval_interval=5, target=target, cql_alpha=0.1)
        agent.learn(episodes)
        assert agent.config()["target"] == target and agent.summary["val_metric"] == "heldout_loss"
    with pytest.raises(ValueError, match="target='boot'"):
        OfflineCQLAgent(target="boot")


@pytest.mark.parametrize("key,value,needle", [("q_target", "boot", "agent.q_target='boot'"),
                                              ("cql_alpha", -1.0, "agent.cql_alpha=-1.0"),
                                              ("val_episodes", -1, "agent.val_episodes=-1"),
                                              ("rollout_seed", -2, "agent.rollout_seed=-2"),
                                              ("return_norm", "zscore", "agent.return_norm='zscore'")])
def test_bad_agent_settings_are_refused_in_one_line(key, value, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        RunConfig().updated(**{key: value})


def test_rollout_seed_pins_the_store_and_defaults_to_the_first_seed():
    from rl_select.experiments.training import store_path

    a, b = RunConfig().updated(seeds=[1]), RunConfig().updated(seeds=[2])
    assert a.rollout_seed == 1 and store_path(a, "sst2") != store_path(b, "sst2")
    a, b = a.updated(rollout_seed=0), b.updated(rollout_seed=0)
    assert a.rollout_seed == 0 and store_path(a, "sst2") == store_path(b, "sst2")


def test_standardized_returns_are_z_scores_with_the_same_ranking():
    env = toy_env(feature_set="table_labelled", reward="marginal", k=3, n_candidates=6)
    eps = [run_logged_episode(env, index=i, seed=1, choose=random_valid_action, policy="random") for i in range(10)]
    raw = np.array([e.ret for e in eps])
    assert raw.std() > 0
    z = np.array([e.ret for e in standardize_returns(eps)])
    np.testing.assert_allclose(z, (raw - raw.mean()) / raw.std(), atol=1e-9)
    assert (np.argsort(z) == np.argsort(raw)).all()
    # per-step gains are rescaled, all but the last step unshifted; features are untouched
    for e, n in zip(eps, standardize_returns(eps)):
        np.testing.assert_allclose(n.rewards[:-1], np.array(e.rewards[:-1]) / raw.std())
        assert n.states is e.states and n.actions == e.actions
    assert standardize_returns([]) == []


def test_return_norm_task_standardizes_each_training_task_on_its_own(tmp_path):
    from agents.rollouts import RolloutStore
    from rl_select.experiments.training import load_rollouts, store_path

    cfg = RunConfig().updated(out=str(tmp_path), episodes=6, train_tasks=["sst2", "trec"])
    envs = []
    for i, task in enumerate(("sst2", "trec")):
        env = toy_env(feature_set="table_labelled", reward="terminal", k=3, n_candidates=6)
        store = RolloutStore(store_path(cfg, task))
        for j in range(6):
            ep = run_logged_episode(env, index=j, seed=i, choose=random_valid_action, policy="random")
            store.append(dataclasses.replace(ep, rewards=[r + 0.4 * i for r in ep.rewards]))  # trec: +0.4
        envs.append(SimpleNamespace(task=task))
    raw = load_rollouts(cfg, envs)
    assert np.mean([e.ret for e in raw[6:]]) > np.mean([e.ret for e in raw[:6]]) + 0.3
    normed = load_rollouts(cfg.updated(return_norm="task"), envs)
    for part in (normed[:6], normed[6:]):
        r = np.array([e.ret for e in part])
        assert abs(r.mean()) < 1e-9 and r.std() == pytest.approx(1.0)
