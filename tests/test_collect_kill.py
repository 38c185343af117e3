"""Killing `collect` midway loses no finished episode and repeats no LM call (the cached scorer)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from agents.rollouts import RolloutStore, collect_random
from envs.demo_selection import DemoSelectionEnv
from rl_select.lm.base import CachedScorer
from rl_select.lm.cache import ScoreCache
from rl_select.tasks import get_task
from rl_select.testing import ToyScorer
from rl_select.types import Example

SCRIPT = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, {root!r})
    from tests.test_collect_kill import make_env
    from agents.rollouts import RolloutStore, collect
    from agents.rollouts import random_valid_action
    env, scorer = make_env({cache!r}, slow=True)
    collect(env, RolloutStore({store!r}), 40, 0, choose=random_valid_action, policy="random")
''')


class SlowCachedToy(CachedScorer):
    """ToyScorer behind the real on-disk cache; records every (demos, queries) it computes."""

    def __init__(self, cache: ScoreCache, slow: bool = False) -> None:
        super().__init__(get_task("sst2"), cache=cache)
        self.toy = ToyScorer(self.spec)
        self.slow = slow
        self.computed: list[tuple] = []

    @property
    def fingerprint(self) -> str:
        return self.toy.fingerprint

    def _compute(self, demos, queries):
        if self.slow:
            time.sleep(0.02)
        self.computed += [(tuple(d.content() for d in demos), q.content()) for q in queries]
        return self.toy.logprobs(demos=demos, queries=queries)


def make_env(cache_path: str, slow: bool = False):
    rng = np.random.default_rng(0)
    rows = [Example(text=f"row {i} {'positive' if i % 3 else 'negative'} " + " ".join(map(str, rng.integers(0, 99, 4))),
                    label="positive" if i % 2 else "negative") for i in range(80)]
    scorer = SlowCachedToy(ScoreCache(cache_path), slow=slow)
    env = DemoSelectionEnv(scorer=scorer, pool=rows[:60], val=rows[60:], k=3, n_candidates=8)
    return env, scorer


def test_killed_collect_resumes_without_repeating_lm_calls(tmp_path):
    cache, store = tmp_path / "c.sqlite", tmp_path / "r.jsonl"
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(root=root, cache=str(cache), store=str(store))],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while time.time() < deadline and (not store.exists() or len(store.read_text().splitlines()) < 3):
            time.sleep(0.05)
        time.sleep(0.05)  # let it get into the middle of the next episode
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = RolloutStore(store).load()
    assert len(done_before) >= 3
    with sqlite3.connect(cache) as db:
        cached_before = db.execute("SELECT count(*) FROM scores").fetchone()[0]
    assert cached_before > 0

    env, scorer = make_env(str(cache))
    collect_random(env, RolloutStore(store), len(done_before) + 2, 0)
    after = RolloutStore(store).load()
    assert len(after) == len(done_before) + 2
    assert [e.to_json() for e in after[: len(done_before)]] == [e.to_json() for e in done_before]

    # every LM row the killed run had computed is now a cache hit: recomputing them would show up as misses
    fresh_env, fresh = make_env(str(tmp_path / "fresh.sqlite"))
    collect_random(fresh_env, RolloutStore(tmp_path / "fresh.jsonl"), len(done_before) + 2, 0)
    assert [e.to_json() for e in RolloutStore(tmp_path / "fresh.jsonl").load()] == [e.to_json() for e in after]
    assert len(scorer.computed) == len(set(fresh.computed)) - cached_before
