"""Rollout store: exact round trips, torn tails, a SIGKILLed writer, and resumable identical collection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from agents.rollouts import Episode, RolloutStore, collect_random, episode_seeds, stack_episodes
from rl_select.errors import DataError

TESTS = Path(__file__).resolve().parent


class TinyEnv(gym.Env):
    """A contract-shaped fake (Dict obs ``state`` / ``candidates`` / ``action_mask``, STOP = N) that
    draws its pool from a split with ``self.np_random``; deterministic reward table; raises on a masked
    action; ``step_delay`` seconds per step (to kill a writer mid-collection)."""

    def __init__(self, n: int = 4, k: int = 3, *, split: int = 9, step_delay: float = 0.0) -> None:
        rng = np.random.default_rng(0)
        self.n, self.k, self.step_delay = n, k, step_delay
        self.table = rng.uniform(-0.1, 0.1, (split, split))  # reward of item b after item a (row split-1 = start)
        self.feats = rng.normal(size=(split, 3)).astype(np.float32)
        self.action_space = spaces.Discrete(n + 1)
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "candidates": spaces.Box(-np.inf, np.inf, (n, 3), np.float32),
            "action_mask": spaces.MultiBinary(n + 1),
        })

    def _mask(self) -> np.ndarray:
        m = np.zeros(self.n + 1, bool)
        if not self.done:
            m[: self.n] = True
            m[self.chosen] = False
            m[self.n] = len(self.chosen) >= 1
        return m

    def action_masks(self) -> np.ndarray:
        return self._mask()

    def _obs(self):
        state = np.array([len(self.chosen) / self.k, self.np_random.uniform()], np.float32)  # uses the env rng
        cands = self.feats[self.pool].copy()
        cands[self.chosen, 0] = 1.0
        return {"state": state, "candidates": cands, "action_mask": self._mask().astype(np.int8)}

    def _info(self):
        return {"action_mask": self._mask().astype(np.int8), "chosen": list(self.chosen),
                "lm_queries": 7 * len(self.chosen), "val_acc": 0.5}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pool = self.np_random.choice(len(self.feats), self.n, replace=False)
        self.chosen, self.done = [], False
        return self._obs(), self._info()

    def step(self, action):
        a = int(action)
        if not self._mask()[a]:
            raise AssertionError(f"masked action {a}")
        time.sleep(self.step_delay)
        if a == self.n:
            self.done = True
            return self._obs(), 0.0, True, False, self._info()
        prev = self.pool[self.chosen[-1]] if self.chosen else -1
        r = float(self.table[prev, self.pool[a]])
        self.chosen.append(a)
        self.done = len(self.chosen) >= self.k
        return self._obs(), r, self.done, False, self._info()


def test_episode_json_round_trip_is_exact(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "s.jsonl")
    collect_random(TinyEnv(), store, 3, seed=1)
    eps = store.load()
    assert [ep.episode for ep in eps] == [0, 1, 2] and [ep.seed for ep in eps] == [[1, 0], [1, 1], [1, 2]]
    for ep in eps:
        again = Episode.from_json(ep.to_json())
        assert again.to_json() == ep.to_json()
        assert again.states.dtype == np.float32 and np.array_equal(again.states, ep.states)
        assert again.masks.shape == (len(ep.actions) + 1, 5) and not again.masks[-1].any()  # terminal mask
        assert ep.ret == pytest.approx(sum(ep.rewards)) and ep.lm_queries == 7 * len(ep.chosen)
    # Same env seed + same action generator -> the same episode, on a fresh env.
    env_seed, _ = episode_seeds(1, 2)
    assert eps[2].env_seed == env_seed


def test_torn_tail_is_skipped_then_cut_and_corruption_raises(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    store = RolloutStore(path)
    collect_random(TinyEnv(), store, 2, seed=0)
    good = path.read_bytes()
    path.write_bytes(good + b'{"actions": [1, 2')  # a writer killed inside write()
    with pytest.warns(RuntimeWarning, match="truncated last line"):
        assert len(store.load()) == 2
    assert len(store) == 2
    with pytest.warns(RuntimeWarning, match="truncated last line"):
        assert store.resume() == 2
    assert path.read_bytes() == good
    path.write_bytes(good + b"not json\n" + good.splitlines(keepends=True)[0])
    with pytest.raises(DataError, match="line 3 is not valid JSON"):
        store.load()


def test_collect_refuses_another_seed(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "s.jsonl")
    collect_random(TinyEnv(), store, 2, seed=0)
    with pytest.raises(DataError, match="seed 0"):
        collect_random(TinyEnv(), store, 4, seed=1)


WRITER = """
import sys
sys.path.insert(0, {tests!r})
from test_rollouts import TinyEnv
from agents.rollouts import RolloutStore, collect_random
collect_random(TinyEnv(step_delay=0.03), RolloutStore({path!r}), {n}, seed=42)
"""


def test_sigkilled_writer_loses_nothing_and_resume_is_identical(tmp_path: Path) -> None:
    n_total = 14
    reference = RolloutStore(tmp_path / "reference.jsonl")
    collect_random(TinyEnv(), reference, n_total, seed=42)

    path = tmp_path / "killed.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = textwrap.dedent(WRITER.format(tests=str(TESTS), path=str(path), n=n_total))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"writer ended before the kill: {proc.stderr.read().decode() if proc.stderr else ''}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    written = path.read_bytes()
    finished = written.count(b"\n")
    assert 3 <= finished < n_total
    ref_lines = reference.path.read_bytes().splitlines(keepends=True)
    assert written[: written.rfind(b"\n") + 1] == b"".join(ref_lines[:finished])  # nothing finished was lost
    # A kill can also land inside write(): simulate the torn line it leaves behind.
    with open(path, "ab") as f:
        f.write(ref_lines[finished][: len(ref_lines[finished]) // 2])

    store = RolloutStore(path)
    with pytest.warns(RuntimeWarning, match="truncated last line"):
        assert len(store.load()) == finished
    with pytest.warns(RuntimeWarning, match="truncated last line"):
        wrote = collect_random(TinyEnv(), store, n_total, seed=42)
    assert wrote == n_total - finished
    assert path.read_bytes() == reference.path.read_bytes()
    assert [json.loads(x)["episode"] for x in path.read_bytes().splitlines()] == list(range(n_total))
    assert collect_random(TinyEnv(), store, n_total, seed=42) == 0  # complete: nothing more to do


def test_stack_episodes_pads_pools_and_remaps_stop(tmp_path: Path) -> None:
    small, big = RolloutStore(tmp_path / "a.jsonl"), RolloutStore(tmp_path / "b.jsonl")
    collect_random(TinyEnv(n=3, k=2), small, 5, seed=0)
    collect_random(TinyEnv(n=5, k=2), big, 5, seed=0)
    eps = small.load() + big.load()
    t = stack_episodes(eps)
    m = sum(len(ep.actions) for ep in eps)
    assert t["cands"].shape == (m, 5, 3) and t["mask"].shape == (m, 6) and t["next_mask"].shape == (m, 6)
    first = eps[0]
    rows_small = t["episode"] < 5
    logged_small = np.concatenate([ep.actions for ep in eps[:5]])
    assert (logged_small == 3).any()  # the 3-pool episodes do STOP sometimes
    np.testing.assert_array_equal(t["action"][rows_small], np.where(logged_small == 3, 5, logged_small))
    assert not t["mask"][rows_small][:, 3:5].any()  # padded candidates are masked
    assert (t["mask"][np.arange(m), t["action"]]).all()  # every logged action is valid in its own row
    assert (t["done"][t["next_mask"].sum(axis=1) == 0] == 1).all()
    np.testing.assert_allclose(t["rtg"][0], sum(first.rewards), rtol=1e-6)
