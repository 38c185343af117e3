"""DemoSelectionEnv: API checkers, masks, episode ends, rewards, determinism, registration."""

from __future__ import annotations

import copy
import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.demo_selection import DemoSelectionEnv, MaskedDiscrete
from rl_select.errors import ConfigError, SelectionError
from rl_select.lm.cache import ScoreCache
from rl_select.mdp.features import FEATURE_SETS, FeatureSpec
from rl_select.metrics import accuracy
from rl_select.testing import CachedToyScorer, ToyScorer, toy_env, toy_examples, toy_task
from rl_select.types import Example

# Expected by design: the contract's Box(-inf, inf) bounds, the 2-D candidate matrix, a bare env's spec.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*infinity.*"),
    pytest.mark.filterwarnings("ignore:.*unconventional shape.*"),
    pytest.mark.filterwarnings("ignore:.*alternative render modes.*"),
]

CONFIGS = [
    (fs, rw, stop) for fs in FEATURE_SETS for rw in ("marginal", "terminal") for stop in (False, True)
]




def _masks_agree(env: DemoSelectionEnv, obs: dict, info: dict) -> np.ndarray:
    mask = env.action_masks()
    assert mask.dtype == bool and mask.shape == (env.n_candidates + 1,)
    assert obs["action_mask"].dtype == np.int8 and info["action_mask"].dtype == np.int8
    np.testing.assert_array_equal(obs["action_mask"], mask)
    np.testing.assert_array_equal(info["action_mask"], mask)
    return mask


# --- API checkers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("feature_set,reward,allow_stop", CONFIGS)
def test_gymnasium_check_env(feature_set, reward, allow_stop):
    gym_check_env(toy_env(feature_set=feature_set, reward=reward, allow_stop=allow_stop))


@pytest.mark.parametrize("feature_set,reward,allow_stop", CONFIGS)
def test_sb3_check_env(feature_set, reward, allow_stop):
    sb3_check_env(toy_env(feature_set=feature_set, reward=reward, allow_stop=allow_stop, k=2))


def test_gymnasium_make_toy_and_real():
    assert envs.DEMO_SELECTION_ID in gym.registry
    env = gym.make(envs.TOY_DEMO_SELECTION_ID)
    obs, info = env.reset(seed=0)
    assert isinstance(env.unwrapped, DemoSelectionEnv)
    assert obs["candidates"].shape == (8, 6) and info["chosen"] == []
    gym_check_env(env.unwrapped)  # with a spec: also re-makes it and renders "ansi"
    env.close()

    spec = toy_task(3)
    data = toy_examples(spec, 30)
    env = gym.make(
        "rl_select/DemoSelection-v0", scorer=ToyScorer(spec), pool=data[:20], val=data[20:], k=2,
        n_candidates=5, feature_set="labelled", allow_stop=True,
    )
    obs, _ = env.reset(seed=1)
    assert obs["candidates"].shape == (5, 11) and obs["action_mask"].shape == (6,)
    assert env.unwrapped.scorer.spec is spec
    np.testing.assert_array_equal(env.get_wrapper_attr("action_masks")(), obs["action_mask"])

    toy = gym.make(envs.TOY_DEMO_SELECTION_ID, n_labels=4, k=2, n_candidates=6, render_mode="ansi")
    toy.reset(seed=0)
    toy.step(3)
    assert "step 1/2" in toy.render()


def test_real_sst2_slice(data_root):
    from rl_select.data import load_task
    from rl_select.tasks import get_task

    spec = get_task("sst2")
    train, _ = load_task(spec, shared_root=data_root)
    env = DemoSelectionEnv(
        scorer=ToyScorer(spec), pool=train[:100], val=train[100:132], k=3, n_candidates=12,
        feature_set="labelled",
    )
    gym_check_env(env)
    sb3_check_env(env)


# --- masks and episode ends -----------------------------------------------------------------------


def test_chosen_candidates_are_masked_and_episode_ends_after_k():
    env = toy_env(k=3, n_candidates=6)
    assert not env.action_masks().any()  # before reset
    obs, info = env.reset(seed=0)
    mask = _masks_agree(env, obs, info)
    assert mask[:6].all() and not mask[6]  # STOP is off without allow_stop
    for t, a in enumerate([4, 0, 2]):
        obs, _, terminated, truncated, info = env.step(a)
        mask = _masks_agree(env, obs, info)
        assert truncated is False
        assert terminated is (t == 2)
        assert info["chosen"] == [4, 0, 2][: t + 1] == env.chosen
        if not terminated:
            assert not mask[[4, 0, 2][: t + 1]].any() and mask[:6].sum() == 6 - (t + 1)
    assert not mask.any()  # all masked at the end
    assert env.prompt_demos == [env.candidates[4], env.candidates[0], env.candidates[2]]
    np.testing.assert_array_equal(obs["candidates"][:, FeatureSpec("active").cand_names.index("chosen")],
                                  [1, 0, 1, 0, 1, 0])
    with pytest.raises(SelectionError, match="episode ended"):
        env.step(1)


def test_stop_masked_before_min_len_and_ends_early():
    env = toy_env(k=4, n_candidates=6, allow_stop=True, min_len=2)
    obs, info = env.reset(seed=3)
    assert not _masks_agree(env, obs, info)[6]
    with pytest.raises(SelectionError, match=r"action 6 \(STOP\) is masked: only 0 demos .* min_len=2"):
        env.step(6)
    obs, _, terminated, _, info = env.step(1)
    assert not terminated and not _masks_agree(env, obs, info)[6]
    obs, _, terminated, _, info = env.step(5)
    assert not terminated and _masks_agree(env, obs, info)[6]
    acc = info["val_acc"]
    obs, reward, terminated, truncated, info = env.step(env.stop_action)
    assert terminated and not truncated and reward == 0.0  # marginal: STOP adds nothing
    assert info["chosen"] == [1, 5] and info["val_acc"] == acc
    assert not _masks_agree(env, obs, info).any()


def test_terminal_reward_on_stop():
    env = toy_env(k=4, allow_stop=True, reward="terminal")
    env.reset(seed=0)
    _, r1, _, _, _ = env.step(2)
    _, r2, terminated, _, info = env.step(env.stop_action)
    assert r1 == 0.0 and terminated and r2 == info["val_acc"]


def test_masked_and_bad_actions_raise_clearly():
    env = toy_env(k=3, n_candidates=5)
    with pytest.raises(SelectionError, match="before reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(SelectionError, match=r"STOP\) is masked: allow_stop=False"):
        env.step(5)
    env.step(np.int64(2))
    with pytest.raises(SelectionError, match="action 2 is masked: candidate 2 is already chosen"):
        env.step(2)
    with pytest.raises(SelectionError, match="out of range"):
        env.step(6)
    with pytest.raises(SelectionError, match="out of range"):
        env.step(-1)
    with pytest.raises(SelectionError, match="not an integer"):
        env.step(1.5)
    assert env.chosen == [2]  # failed steps change nothing
    env.step(np.array([3]))  # a VecEnv-style length-1 array is fine
    assert env.chosen == [2, 3]


def test_action_space_samples_only_legal_actions():
    env = toy_env(k=5, n_candidates=6)
    assert isinstance(env.action_space, gym.spaces.Discrete) and env.action_space.n == 7
    env.action_space.seed(0)
    for seed in range(5):
        env.reset(seed=seed)
        terminated = False
        while not terminated:
            a = env.action_space.sample()
            assert env.action_masks()[a]
            _, _, terminated, _, _ = env.step(a)
    # an explicit mask still wins; copies and pickles drop the env callback
    assert env.action_space.sample(mask=np.eye(7, dtype=np.int8)[6]) == 6
    for clone in (copy.deepcopy(env.action_space), pickle.loads(pickle.dumps(env.action_space))):
        assert isinstance(clone, MaskedDiscrete) and clone == env.action_space and 0 <= clone.sample() < 7


# --- determinism and pools ------------------------------------------------------------------------


def _rollout(env: DemoSelectionEnv, seed: int, actions: list[int]) -> list:
    obs, info = env.reset(seed=seed)
    out = [(env.candidates, obs, info)]
    for a in actions:
        out.append(env.step(a))
    return out


def test_same_seed_same_pools_and_observations():
    a, b = toy_env(feature_set="labelled"), toy_env(feature_set="labelled")
    ra, rb = _rollout(a, 7, [1, 4, 0]), _rollout(b, 7, [1, 4, 0])
    assert ra[0][0] == rb[0][0]
    for x, y in zip(ra, rb):
        for u, v in zip(x, y):
            if isinstance(u, dict):
                assert u.keys() == v.keys() and all(np.array_equal(u[k], v[k]) for k in u)
            else:
                assert u == v
    pools = {_rollout(a, s, [])[0][0] for s in range(6)}
    assert len(pools) > 1  # different seeds draw different pools
    assert all(len(set(p)) == a.n_candidates for p in pools)  # without replacement


def test_fixed_pool_ignores_the_seed():
    env = toy_env(fixed_pool=True, n_candidates=5)
    for seed in (0, 1, 2):
        env.reset(seed=seed)
        assert env.candidates == env.pool[:5]


# --- rewards --------------------------------------------------------------------------------------


@pytest.mark.parametrize("feature_set", FEATURE_SETS)
def test_marginal_return_telescopes(feature_set):
    env = toy_env(feature_set=feature_set, k=4, n_candidates=8)
    for seed in range(4):
        _, info = env.reset(seed=seed)
        acc0 = info["val_acc"]
        assert acc0 == accuracy(env.scorer, demos=[], examples=env.val)
        total, terminated = 0.0, False
        while not terminated:
            _, r, terminated, _, info = env.step(env.action_space.sample())
            total += r
        final = accuracy(env.scorer, demos=env.prompt_demos, examples=env.val)
        assert info["val_acc"] == final
        assert total == pytest.approx(final - acc0, abs=1e-12)


def test_terminal_reward_only_at_the_end():
    env = toy_env(reward="terminal", k=4)
    env.reset(seed=5)
    rewards, terminated = [], False
    while not terminated:
        _, r, terminated, _, info = env.step(env.action_space.sample())
        rewards.append(r)
    assert rewards[:-1] == [0.0, 0.0, 0.0]
    assert rewards[-1] == info["val_acc"] == accuracy(env.scorer, demos=env.prompt_demos, examples=env.val)


def test_lm_queries_and_cache_hits(tmp_path):
    spec = toy_task(2)
    data = toy_examples(spec, 40)
    cache = ScoreCache(tmp_path / "scores.sqlite")
    try:
        scorer = CachedToyScorer(spec, cache=cache)
        env = DemoSelectionEnv(scorer=scorer, pool=data[:30], val=data[30:], k=2, n_candidates=6)
        per_call = 6 + 10
        _, info = env.reset(seed=0)
        assert info["lm_queries"] == per_call
        _, _, _, _, info = env.step(0)
        _, _, _, _, info = env.step(1)
        assert info["lm_queries"] == 3 * per_call
        misses = scorer.stats.cache_misses
        assert accuracy(scorer, demos=env.prompt_demos, examples=env.val) == info["val_acc"]
        env.reset(seed=0)
        env.step(0)
        env.step(1)
        assert scorer.stats.cache_misses == misses  # the replayed episode and the reward call were all hits
    finally:
        cache.close()


# --- construction errors --------------------------------------------------------------------------


def test_constructor_validation():
    spec = toy_task(2)
    data = toy_examples(spec, 20)
    base = dict(scorer=ToyScorer(spec), pool=data[:10], val=data[10:], k=2, n_candidates=5)
    cases = [
        (dict(k=6), SelectionError, "k=6"),
        (dict(k=0), SelectionError, "k=0"),
        (dict(n_candidates=11, k=2), SelectionError, "n_candidates=11"),
        (dict(val=[]), SelectionError, "validation split is empty"),
        (dict(feature_set="fancy"), ConfigError, "'fancy'"),
        (dict(reward="dense"), ConfigError, "'dense'"),
        (dict(min_len=3), ConfigError, "min_len=3"),
        (dict(pool=[*data[:9], Example(text="x", label="zzz")]), SelectionError, "'zzz'"),
    ]
    for override, exc, pattern in cases:
        with pytest.raises(exc, match=pattern) as info:
            DemoSelectionEnv(**{**base, **override})
        assert "\n" not in str(info.value)


def test_env_step_timing_replays_from_cache():
    from rl_select.experiments.bench_env import time_env_steps

    env = toy_env(k=3, n_candidates=8)
    res = time_env_steps(env, episodes=2, seed=0)
    assert res["steps"] == 6 and res["warm_step_ms_mean"] > 0
