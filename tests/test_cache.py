"""The SQLite score cache, content keys, and CachedScorer's hit/miss bookkeeping and calibration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rl_select.errors import MAX_MESSAGE, CacheError
from rl_select.lm.base import CachedScorer
from rl_select.lm.cache import ScoreCache, check_cache, default_cache_path, open_cache, prefix_digest, query_key
from rl_select.lm.calibration import calibrate
from rl_select.prompts import content_free_queries
from rl_select.tasks import get_task
from rl_select.testing import ToyScorer
from rl_select.types import Example

SPEC = get_task("sst2")
A = Example(text="great fun", label="positive", uid="train:1")
B = Example(text="dull and slow", label="negative", uid="train:2")
Q1 = Example(text="a quiet gem", label="positive", uid="test:1")
Q2 = Example(text="a loud mess", label="negative", uid="test:2")
Q3 = Example(text="fine enough", label="positive", uid="test:3")


class CountingScorer(CachedScorer):
    """ToyScorer's numbers behind the real cache front half; records every ``_compute`` call."""

    def __init__(self, spec=SPEC, **kwargs) -> None:
        super().__init__(spec, **kwargs)
        self.toy = ToyScorer(spec)
        self.calls: list[list[Example]] = []

    @property
    def fingerprint(self) -> str:
        return "counting:v1"

    def _compute(self, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        self.calls.append(list(queries))
        return self.toy.logprobs(demos=demos, queries=queries)


@pytest.fixture
def cache(tmp_path):
    c = ScoreCache(tmp_path / "scores.sqlite")
    yield c
    c.close()


# --- ScoreCache -----------------------------------------------------------------------------------


def test_round_trip(cache):
    vecs = {"k1": np.array([-0.1, -2.5]), "k2": np.array([-3.0, -0.05])}
    cache.put_many(vecs.items())
    got = cache.get_many(["k1", "k2", "missing"], 2)
    assert set(got) == {"k1", "k2"}
    for k, v in vecs.items():
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == np.float64
    assert len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 1)


def test_put_overwrites_and_wrong_length_is_a_miss(cache):
    cache.put_many([("k", np.array([1.0, 2.0]))])
    cache.put_many([("k", np.array([3.0, 4.0]))])
    np.testing.assert_array_equal(cache.get_many(["k"], 2)["k"], [3.0, 4.0])
    assert cache.get_many(["k"], 3) == {}
    assert len(cache) == 1


def test_a_row_that_dropped_demonstrations_keeps_its_count(cache):
    cache.put_many([("cut", np.array([-0.5, -1.0, 2.0])), ("odd", np.array([-0.5, -1.0, 2.0, 1.0]))])
    np.testing.assert_array_equal(cache.get_many(["cut"], 2)["cut"], [-0.5, -1.0, 2.0])
    assert cache.get_many(["odd"], 2) == {}


def test_many_keys_in_chunks(cache):
    items = [(f"k{i}", np.array([float(i), -float(i)])) for i in range(1203)]
    cache.put_many(items)
    got = cache.get_many([k for k, _ in items], 2)
    assert len(got) == 1203
    np.testing.assert_array_equal(got["k1202"], [1202.0, -1202.0])


def test_creates_missing_parent_folder(tmp_path):
    c = ScoreCache(tmp_path / "a" / "b" / "scores.sqlite")
    c.put_many([("k", np.zeros(2))])
    c.close()
    assert (tmp_path / "a" / "b" / "scores.sqlite").is_file()


def test_default_cache_path_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RL_SELECT_CACHE", str(tmp_path / "x.sqlite"))
    assert default_cache_path() == tmp_path / "x.sqlite"


def test_corrupt_file_raises_cache_error_and_is_left_alone(tmp_path):
    path = tmp_path / "scores.sqlite"
    garbage = bytes(range(256)) * 64
    path.write_bytes(garbage)
    with pytest.raises(CacheError) as info:
        ScoreCache(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "\n" not in msg
    assert path.read_bytes() == garbage


def test_committed_data_is_seen_by_a_new_connection_without_close(tmp_path):
    path = tmp_path / "scores.sqlite"
    writer = ScoreCache(path)
    writer.put_many([("k", np.array([-1.0, -2.0]))])
    # No close(): as if the process died right after the commit.
    reader = ScoreCache(path)
    np.testing.assert_array_equal(reader.get_many(["k"], 2)["k"], [-1.0, -2.0])
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys; from rl_select.lm.cache import ScoreCache; "
         "print(ScoreCache(sys.argv[1]).get_many(['k'], 2)['k'].tolist())", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert out.stdout.strip() == "[-1.0, -2.0]"
    reader.close()
    writer.close()


CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from rl_select.lm.cache import ScoreCache
    cache = ScoreCache(sys.argv[1])
    i = 0
    while True:
        cache.put_many([(f"k{i}", np.array([float(i), -float(i)]))])
        print(i, flush=True)
        i += 1
        time.sleep(0.002)
    """
)


def test_entries_committed_before_sigkill_survive(tmp_path):
    path = tmp_path / "scores.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        committed = -1
        deadline = time.monotonic() + 60
        while committed < 20 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed = int(line)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert committed >= 20
    cache = ScoreCache(path)
    keys = [f"k{i}" for i in range(committed + 1)]
    got = cache.get_many(keys, 2)
    assert set(keys) <= set(got)
    np.testing.assert_array_equal(got[f"k{committed}"], [committed, -committed])
    cache.close()


# --- keys -----------------------------------------------------------------------------------------


def _key(demos, query, *, fingerprint="fp", spec=SPEC) -> str:
    return query_key(prefix_digest(fingerprint, spec.digest_fields(), demos), query)


def test_same_content_same_key():
    assert _key([A, B], Q1) == _key([A, B], Q1)
    assert _key([A, B], Q1) == _key([replace(A), replace(B)], replace(Q1))


def test_demo_order_changes_key():
    assert _key([A, B], Q1) != _key([B, A], Q1)


def test_uid_is_not_part_of_key():
    assert _key([A, B], Q1) == _key([replace(A, uid="other:9"), B], replace(Q1, uid="x"))


def test_content_changes_key():
    base = _key([A], Q1)
    assert _key([A], Q2) != base
    assert _key([replace(A, label="negative")], Q1) != base
    assert _key([A], replace(Q1, text2="second")) != base
    assert _key([], Q1) != base
    assert _key([A], Q1, fingerprint="other") != base
    assert _key([A], Q1, spec=replace(SPEC, template="Text: {text}\nSentiment: {label}")) != base
    assert _key([A], Q1, spec=replace(SPEC, separator="\n")) != base


def test_query_label_is_part_of_key():
    """Documented behaviour: the key is the whole content, gold label included."""
    assert _key([A], Q1) != _key([A], replace(Q1, label="negative"))


# --- CachedScorer ---------------------------------------------------------------------------------


def test_misses_computed_in_one_call_then_all_hits(cache):
    scorer = CountingScorer(cache=cache)
    first = scorer.logprobs(demos=[A, B], queries=[Q1, Q2])
    assert len(scorer.calls) == 1
    assert (scorer.stats.queries, scorer.stats.cache_hits, scorer.stats.cache_misses) == (2, 0, 2)
    again = scorer.logprobs(demos=[A, B], queries=[Q1, Q2])
    assert len(scorer.calls) == 1
    assert (scorer.stats.queries, scorer.stats.cache_hits, scorer.stats.cache_misses) == (4, 2, 2)
    np.testing.assert_array_equal(first, again)


def test_only_misses_are_computed(cache):
    scorer = CountingScorer(cache=cache)
    scorer.logprobs(demos=[A], queries=[Q1])
    out = scorer.logprobs(demos=[A], queries=[Q2, Q1, Q3])
    assert scorer.calls[-1] == [Q2, Q3]
    assert len(scorer.calls) == 2
    assert scorer.stats.cache_hits == 1
    assert scorer.stats.cache_misses == 3
    np.testing.assert_allclose(out, scorer.toy.logprobs(demos=[A], queries=[Q2, Q1, Q3]))


def test_duplicate_queries_are_computed_once(cache):
    scorer = CountingScorer(cache=cache)
    out = scorer.logprobs(demos=[A], queries=[Q1, Q2, Q1, replace(Q1, uid="dup")])
    assert scorer.calls == [[Q1, Q2]]
    assert out.shape == (4, 2)
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0], out[3])
    # A miss is a row the LM computes; the repeats of a computed row in the same call are free hits.
    assert scorer.stats.cache_misses == 2
    assert scorer.stats.cache_hits == 2
    assert scorer.stats.cache_hits + scorer.stats.cache_misses == scorer.stats.queries == 4
    assert len(scorer.cache) == 2


def test_demo_order_is_a_different_prompt(cache):
    scorer = CountingScorer(cache=cache)
    ab = scorer.logprobs(demos=[A, B], queries=[Q1])
    ba = scorer.logprobs(demos=[B, A], queries=[Q1])
    assert len(scorer.calls) == 2
    assert not np.allclose(ab, ba)  # ToyScorer weighs later demos more


def test_cache_is_shared_across_scorer_objects(tmp_path):
    path = tmp_path / "scores.sqlite"
    s1 = CountingScorer(cache=ScoreCache(path))
    v1 = s1.logprobs(demos=[A], queries=[Q1, Q2])
    s2 = CountingScorer(cache=ScoreCache(path))
    v2 = s2.logprobs(demos=[replace(A, uid="moved")], queries=[Q2, Q1])
    assert s2.calls == []
    np.testing.assert_array_equal(v1[::-1], v2)


def test_no_cache_computes_every_time():
    scorer = CountingScorer(cache=None)
    scorer.logprobs(demos=[A], queries=[Q1])
    scorer.logprobs(demos=[A], queries=[Q1])
    assert len(scorer.calls) == 2
    assert scorer.stats.cache_misses == 2 and scorer.stats.cache_hits == 0


def test_empty_queries(cache):
    scorer = CountingScorer(cache=cache)
    assert scorer.logprobs(demos=[A], queries=[]).shape == (0, 2)
    assert scorer.calls == []


def test_calibrate_matches_calibrating_by_hand(tmp_path):
    raw_scorer = CountingScorer(cache=None)
    cal_scorer = CountingScorer(cache=ScoreCache(tmp_path / "c.sqlite"), calibrate=True)
    queries = [Q1, Q2, Q3]
    cf = content_free_queries(SPEC)
    raw = raw_scorer.logprobs(demos=[A, B], queries=queries + cf)
    expected = calibrate(raw[:3], raw[3:])
    got = cal_scorer.logprobs(demos=[A, B], queries=queries)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert not np.allclose(got, raw[:3])
    # Content-free queries ride in the same single call, and are cached too.
    assert len(cal_scorer.calls) == 1 and len(cal_scorer.calls[0]) == 3 + len(cf)
    cal_scorer.logprobs(demos=[A, B], queries=queries)
    assert len(cal_scorer.calls) == 1
    # raw_logprobs stays uncalibrated.
    np.testing.assert_allclose(cal_scorer.raw_logprobs(demos=[A, B], queries=queries), raw[:3])


def test_corrupt_cache_file_is_not_overwritten_by_scorer_use(tmp_path: Path):
    path = tmp_path / "scores.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(CacheError, match="scores.sqlite"):
        CountingScorer(cache=ScoreCache(path))
    assert path.read_bytes() == b"not a database" * 100


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write in: a read-only one, or for root (who writes anywhere) /proc/sys."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        folder = Path("/proc/sys")
        if not folder.is_dir() or os.access(folder, os.W_OK):
            pytest.skip("no folder here is read-only to this process")
    return folder


def test_an_unwritable_cache_folder_is_called_that(tmp_path):
    folder = _unwritable_folder(tmp_path)
    for path in (folder / "scores.sqlite", folder / "sub" / "scores.sqlite"):
        with pytest.raises(CacheError) as info:
            open_cache(str(path))
        msg = str(info.value)
        assert f"the cache folder {str(folder)!r} is not writable" in msg and "--cache none" in msg, msg
        assert "SQLite" not in msg and "\n" not in msg and len(msg.replace(str(tmp_path), "")) < MAX_MESSAGE
        assert not path.exists()
        with pytest.raises(CacheError, match="is not writable"):
            check_cache(str(path))  # the same answer, before anything is opened
    check_cache("none")


def test_a_cache_path_under_a_file_or_at_a_folder_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CacheError, match=r"notes.txt' is a file, not a folder"):
        open_cache(str(tmp_path / "notes.txt" / "scores.sqlite"))
    with pytest.raises(CacheError, match=r"is a folder; expected a file path"):
        open_cache(str(tmp_path))
