"""Agents: candidate-scoring Q-net, masks in exploration / greedy choice / TD target, tabular oracle,
masked SB3 DQN, offline CQL determinism, and the safetensors artifacts.

Runs against a small self-contained fake env that follows docs/mdp.md exactly (Dict
observation ``state`` / ``candidates`` / ``action_mask``, ``Discrete(N + 1)`` with STOP = N,
``action_masks()``, ``info["action_mask"]`` int8, ``info["chosen"]``, marginal rewards) and RAISES on
a masked action. Its masks, refusals and episode ends come from the one
:class:`~rl_select.mdp.episode.EpisodeRule`; only its accuracy table is fake.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents.base import ArtifactError, evaluate, masked_max, masked_td_target, run_episode
from agents.dqn import DQNAgent, MaskedDQN, sample_valid_actions
from agents.offline import OfflineCQLAgent
from agents.rollouts import RolloutStore, collect_random
from agents.tabular_q import TabularQAgent, exhaustive_best
from rl_select.errors import SelectionError
from rl_select.mdp.episode import EpisodeRule
from rl_select.mdp.qnet import MASKED_Q, CandidateQNet, masked_q

torch.set_num_threads(1)


class MaskedActionError(AssertionError):
    """The fake env received a masked action."""


class FakeSelectionEnv(gym.Env):
    """Contract-shaped demo-selection MDP with a deterministic, order-sensitive accuracy table.

    ``acc(S)`` = 0.5 + position-weighted mean item quality / 4 + a small hash-derived order term; the
    marginal reward telescopes to ``acc(S_k) - acc(())``. Candidate features carry the item quality
    (so a candidate-scoring Q-net can learn), the chosen flag and fixed noise.
    """

    metadata = {"render_modes": []}

    def __init__(
        self, n: int = 5, k: int = 2, *, split_size: int | None = None, fixed_pool: bool = True,
        allow_stop: bool = False, min_len: int = 1, state_dim: int = 3, cand_dim: int = 4, table_seed: int = 0,
    ) -> None:
        self.rule = EpisodeRule(n_candidates=n, k=k, allow_stop=allow_stop, min_len=min_len)
        self.n, self.k, self.fixed_pool = n, k, fixed_pool
        m = split_size or n
        rng = np.random.default_rng(table_seed)
        self.quality = rng.uniform(-1.0, 1.0, m)
        self.noise = rng.normal(size=(m, cand_dim - 2)).astype(np.float32)
        self.state_dim, self.cand_dim = state_dim, cand_dim
        self.action_space = spaces.Discrete(n + 1)
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
            "candidates": spaces.Box(-np.inf, np.inf, (n, cand_dim), np.float32),
            "action_mask": spaces.MultiBinary(n + 1),
        })
        self.candidates = np.arange(n)
        self.chosen: list[int] = []
        self.done = True
        self.lm_queries = 0
        self.steps_taken = 0

    def acc(self, items: tuple[int, ...]) -> float:
        if not items:
            return 0.5
        w = np.arange(1, len(items) + 1) / len(items)
        h = hashlib.blake2b(np.asarray(items, np.int64).tobytes(), digest_size=8).digest()
        order = int.from_bytes(h, "little") / 2**64
        return float(0.5 + 0.25 * np.mean(w * self.quality[list(items)]) + 0.05 * order)

    def action_masks(self) -> np.ndarray:
        return self.rule.mask(self.chosen, self.done)

    def _obs(self) -> dict[str, np.ndarray]:
        items = self.candidates
        cands = np.zeros((self.n, self.cand_dim), np.float32)
        cands[:, 0] = self.quality[items]
        cands[self.chosen, 1] = 1.0
        cands[:, 2:] = self.noise[items]
        state = np.zeros(self.state_dim, np.float32)
        state[0] = len(self.chosen) / self.k
        state[1] = self.acc(tuple(self.candidates[self.chosen]))
        return {"state": state, "candidates": cands, "action_mask": self.action_masks().astype(np.int8)}

    def _info(self) -> dict:
        return {"action_mask": self.action_masks().astype(np.int8), "chosen": list(self.chosen),
                "val_acc": self.acc(tuple(self.candidates[self.chosen])), "lm_queries": self.lm_queries}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.fixed_pool:
            self.candidates = np.arange(self.n)
        else:
            self.candidates = self.np_random.choice(len(self.quality), self.n, replace=False)
        self.chosen, self.done, self.lm_queries = [], False, 0
        return self._obs(), self._info()

    def step(self, action):
        try:
            a, chosen, done = self.rule.apply(action, self.chosen, self.done)
        except SelectionError as e:
            raise MaskedActionError(f"{e}; chosen={self.chosen}, mask={self.action_masks().astype(int)}") from e
        self.steps_taken += 1
        before = self.acc(tuple(self.candidates[self.chosen]))
        self.lm_queries += 10 * (a != self.rule.stop)
        self.chosen, self.done = chosen, done
        reward = self.acc(tuple(self.candidates[self.chosen])) - before
        return self._obs(), float(reward), self.done, False, self._info()


@pytest.mark.filterwarnings("ignore:.*Box observation space m:UserWarning")  # Box(-inf, inf) is the contract's
def test_fake_env_passes_gymnasium_check() -> None:
    from gymnasium.utils.env_checker import check_env

    from envs.demo_selection import MaskedDiscrete

    env = FakeSelectionEnv(fixed_pool=False, split_size=9)
    # check_env steps with action_space.sample(); this fake env raises on masked actions, so sample legal ones
    # (after the episode ends, any candidate: the checker resets before reusing the env)
    env.action_space = MaskedDiscrete(env.action_space.n, mask_fn=lambda: env.action_masks() if not env.done
                                      else env.rule.mask())
    check_env(env, skip_render_check=True)


# ----------------------------------------------------------------------------------------------------- Q-net


def test_candidate_qnet_shapes_and_shared_weights() -> None:
    torch.manual_seed(0)
    net = CandidateQNet(3, 4, hidden=(8,))
    state, cands = torch.randn(2, 3), torch.randn(2, 5, 4)
    q = net(state, cands)
    assert q.shape == (2, 6)
    perm = torch.tensor([3, 1, 4, 0, 2])
    q_perm = net(state, cands[:, perm])
    torch.testing.assert_close(q_perm[:, :5], q[:, perm])  # one set of weights for every candidate
    torch.testing.assert_close(q_perm[:, 5], q[:, 5])  # STOP depends on the state only
    assert net(state, cands[:, :2]).shape == (2, 3)  # another pool size, same weights
    with pytest.raises(ValueError, match="expected"):
        net(state, torch.randn(2, 5, 3))


def test_masked_q_is_finite_and_masks() -> None:
    q = torch.tensor([[1.0, 5.0, 2.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = masked_q(q, mask)
    assert torch.isfinite(out).all()
    assert out[0].tolist() == [1.0, MASKED_Q, 2.0] and (out[1] == MASKED_Q).all()
    assert out[0].argmax().item() == 2


def test_masked_td_target_ignores_masked_actions_and_terminal_rows() -> None:
    # Row 0: the masked actions hold the largest values; the unmasked max is 2.0.
    # Row 1: terminal (done) with an all-False mask -> target = reward exactly, no NaN.
    # Row 2: not done, only STOP valid -> r + (-0.5).
    next_q = torch.tensor([[9.0, 2.0, 7.0, 1.0], [3.0, 4.0, 5.0, 6.0], [8.0, 8.0, 8.0, -0.5]])
    next_mask = torch.tensor([[False, True, False, True], [False] * 4, [False, False, False, True]])
    rewards = torch.tensor([[0.1], [0.2], [0.3]])
    dones = torch.tensor([[0.0], [1.0], [0.0]])
    target = masked_td_target(rewards, dones, next_q, next_mask, 1.0)
    torch.testing.assert_close(target, torch.tensor([[2.1], [0.2], [-0.2]]))
    assert torch.isfinite(masked_max(next_q, next_mask)).all()


# --------------------------------------------------------------------------------------------------- tabular


@pytest.mark.parametrize("allow_stop", [False, True])
def test_tabular_q_reaches_exhaustive_optimum(allow_stop: bool, tmp_path: Path) -> None:
    env = FakeSelectionEnv(n=5, k=2, allow_stop=allow_stop)
    best_ret, best_actions = exhaustive_best(env, seed=0)
    if not allow_stop:
        fn_ret, fn_tuple = exhaustive_best(lambda t: env.acc(t) - env.acc(()), n=5, k=2)
        assert fn_tuple == best_actions and fn_ret == pytest.approx(best_ret)
    agent = TabularQAgent(learning_rate=0.5).learn(env, episodes=1500, seed=1)
    res = run_episode(env, lambda o, m, c: agent.act(o, m, chosen=c), seed=0)
    assert res.ret == pytest.approx(best_ret, abs=1e-12)
    assert tuple(res.actions) == best_actions
    loaded = TabularQAgent.load(agent.save(tmp_path / "tab.safetensors"))
    assert loaded.q.keys() == agent.q.keys()
    assert all(np.array_equal(loaded.q[s], agent.q[s]) for s in agent.q)
    assert evaluate(loaded, env, seed=0) == pytest.approx(best_ret)


def test_tabular_q_refuses_a_sampled_pool() -> None:
    with pytest.raises(SelectionError, match="fixed pool"):
        TabularQAgent().learn(FakeSelectionEnv(fixed_pool=False, split_size=9), episodes=1)


# ------------------------------------------------------------------------------------------------------- DQN


def test_sample_valid_actions_only_samples_valid() -> None:
    rng = np.random.default_rng(0)
    masks = np.array([[0, 1, 0, 1], [1, 0, 0, 0]], dtype=np.int8)
    draws = np.stack([sample_valid_actions(masks, rng) for _ in range(200)])
    assert set(draws[:, 0]) == {1, 3} and set(draws[:, 1]) == {0}
    with pytest.raises(SelectionError, match="all False"):
        sample_valid_actions(np.zeros((1, 4), bool), rng)


def _dqn(env: gym.Env, **kw) -> MaskedDQN:
    args = dict(learning_starts=50, batch_size=16, buffer_size=2000, train_freq=1, target_update_interval=50,
                exploration_initial_eps=1.0, exploration_final_eps=1.0, policy_kwargs={"hidden": (16,)}, seed=3)
    args.update(kw)
    return MaskedDQN(env=env, **args)


@pytest.mark.parametrize("final_eps", [1.0, 0.0])
def test_masked_dqn_never_sends_a_masked_action(final_eps: float) -> None:
    # The fake env raises on a masked action: warm-up, epsilon draws and greedy steps all go through it.
    env = FakeSelectionEnv(n=6, k=3, fixed_pool=False, split_size=12, allow_stop=True, min_len=1)
    model = _dqn(env, exploration_final_eps=final_eps, exploration_fraction=0.3)
    model.learn(600)
    assert env.steps_taken == 600 and model._n_updates > 0
    for p in model.q_net.parameters():
        assert torch.isfinite(p).all()
    # Greedy prediction with one valid action must choose it, whatever the Q-values are.
    obs, _ = env.reset(seed=0)
    obs["action_mask"] = np.zeros(7, np.int8)
    obs["action_mask"][4] = 1
    for det in (True, False):
        assert int(model.predict(obs, deterministic=det)[0]) == 4


def test_masked_dqn_td_target_uses_next_mask_from_the_replay_buffer() -> None:
    model = _dqn(FakeSelectionEnv(n=3, k=2))
    next_q = torch.tensor([[9.0, 2.0, 7.0, 1.0], [3.0, 4.0, 5.0, 6.0]])
    model.policy.q_values = lambda obs, target=False: next_q  # type: ignore[method-assign]
    next_obs = {"state": torch.zeros(2, 3), "candidates": torch.zeros(2, 3, 4),
                "action_mask": torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0]], dtype=torch.int8)}
    target = model.td_target(next_obs, torch.tensor([[0.5], [0.25]]), torch.tensor([[0.0], [1.0]]), 1.0)
    torch.testing.assert_close(target, torch.tensor([[2.5], [0.25]]))


def test_masked_dqn_buffer_holds_next_masks_and_train_is_finite() -> None:
    env = FakeSelectionEnv(n=4, k=2)
    model = _dqn(env, learning_starts=1000)  # collect only
    model.learn(200)
    buf = model.replay_buffer
    n = buf.pos if not buf.full else buf.buffer_size
    next_masks = buf.next_observations["action_mask"][:n, 0]
    dones = buf.dones[:n, 0]
    assert (next_masks[dones == 1] == 0).all()  # terminal rows: all-False next masks are stored
    assert (next_masks[dones == 0].sum(axis=1) > 0).all()
    model.train(gradient_steps=5, batch_size=32)
    assert all(torch.isfinite(p).all() for p in model.q_net.parameters())


def test_dqn_agent_learn_act_save_load(tmp_path: Path) -> None:
    env = FakeSelectionEnv(n=5, k=2, fixed_pool=False, split_size=10)
    agent = DQNAgent(hidden=(16,), learning_starts=50, batch_size=16, target_update_interval=50, seed=0)
    agent.learn(env, 300)
    path = agent.save(tmp_path / "dqn.safetensors")
    loaded = DQNAgent.load(path)
    for s in range(5):
        obs, info = env.reset(seed=s)
        mask = env.action_masks()
        assert loaded.act(obs, mask) == agent.act(obs, mask)
        assert mask[agent.act(obs, mask)]
    with pytest.raises(ArtifactError, match="expected 'offline'"):
        OfflineCQLAgent.load(path)
    bad = tmp_path / "bad.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip a bit of the last tensor
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        DQNAgent.load(bad)
    with pytest.raises(SelectionError, match="all False"):
        agent.act(obs, np.zeros(6, bool))
    # SB3 checkpoint (zip; for resuming training) round-trips and keeps learning with masks.
    resumed = DQNAgent.load_checkpoint(agent.save_checkpoint(tmp_path / "ckpt"), env=env)
    assert resumed.act(obs, mask) == agent.act(obs, mask)
    resumed.learn(env, 100)
    assert resumed.model is not None and resumed.model.num_timesteps == 400


# --------------------------------------------------------------------------------------------------- offline


@pytest.fixture(scope="module")
def random_store(tmp_path_factory: pytest.TempPathFactory) -> RolloutStore:
    store = RolloutStore(tmp_path_factory.mktemp("roll") / "rollouts.jsonl")
    collect_random(FakeSelectionEnv(n=5, k=2, fixed_pool=False, split_size=10, allow_stop=True), store, 120, seed=5)
    return store


def test_offline_cql_is_deterministic(random_store: RolloutStore, tmp_path: Path) -> None:
    kw = dict(hidden=(16, 16), gradient_steps=150, batch_size=32, eval_interval=50, target_update_interval=40)
    a = OfflineCQLAgent(seed=11, **kw).learn(random_store)
    b = OfflineCQLAgent(seed=11, **kw).learn(RolloutStore(random_store.path))
    c = OfflineCQLAgent(seed=12, **kw).learn(random_store)
    sa, sb, sc = a.qnet.state_dict(), b.qnet.state_dict(), c.qnet.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.summary["val_metric"] == "heldout_loss" and a.summary["val_episodes"] == 12
    loaded = OfflineCQLAgent.load(a.save(tmp_path / "cql.safetensors"))
    assert all(torch.equal(loaded.qnet.state_dict()[k], sa[k]) for k in sa)


def test_offline_cql_with_env_validation_beats_random(random_store: RolloutStore) -> None:
    env = FakeSelectionEnv(n=5, k=2, fixed_pool=False, split_size=10, allow_stop=True)
    agent = OfflineCQLAgent(hidden=(32, 32), gradient_steps=600, batch_size=64, eval_interval=100,
                            eval_episodes=20, seed=0, learning_rate=1e-3)
    calls_before = env.steps_taken
    agent.learn(random_store, env=env)
    assert agent.summary["val_metric"] == "env_return"
    # Every env step during learn() belongs to a validation episode (at most k steps each).
    n_evals = len(agent.summary["history"])
    assert env.steps_taken - calls_before <= n_evals * agent.eval_episodes * env.k
    data_mean = float(np.mean([ep.ret for ep in random_store.episodes()]))
    assert evaluate(agent, env, n_episodes=20, seed=10_000) > data_mean


# ------------------------------------------------------------------------------------ the real env (if built)


def _toy_env(**kw):
    from rl_select.testing import toy_env

    return toy_env(**kw)


def test_agents_on_the_toy_demo_selection_env(tmp_path: Path) -> None:
    env = _toy_env(n_candidates=5, k=2, fixed_pool=True)
    best_ret, _ = exhaustive_best(env, seed=0)
    tab = TabularQAgent().learn(env, episodes=800, seed=0)
    assert evaluate(tab, env, seed=0) == pytest.approx(best_ret)

    env = _toy_env(n_candidates=6, k=3)
    DQNAgent(hidden=(16,), learning_starts=50, batch_size=16, seed=0).learn(env, 200)
    store = RolloutStore(tmp_path / "toy.jsonl")
    collect_random(env, store, 20, seed=0)
    agent = OfflineCQLAgent(hidden=(16,), gradient_steps=60, eval_interval=30, eval_episodes=2, seed=0)
    agent.learn(store, env=env)
    assert agent.summary["val_metric"] == "env_return"
