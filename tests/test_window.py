"""The context-window rule (rl_select.lm.window) on the model-free CachedToyScorer: one rule, its counts, its cache."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from rl_select.lm.cache import ScoreCache
from rl_select.lm.calibration import calibrate
from rl_select.lm.window import ContextWindowWarning, failure_row, fit_row
from rl_select.tasks import get_task
from rl_select.testing import CachedToyScorer
from rl_select.types import Example

SPEC = get_task("sst2")
DEMOS = [Example(text=" ".join([f"d{i}"] * (4 + i)), label=("positive", "negative")[i % 2], uid=f"d:{i}")
         for i in range(4)]
SHORT = Example(text="a quiet gem", label="positive", uid="q:short")
HUGE = Example(text=" ".join(["word"] * 20_000), label="negative", uid="q:huge")


def test_fit_row_drops_the_fewest_leftmost_demonstrations():
    lengths = [50, 41, 30, 22, 9]  # tokens without the first j demonstrations
    asked = []

    def length(j: int) -> int:
        asked.append(j)
        return lengths[j]

    assert fit_row(4, length, 60) == (0, 0)
    assert fit_row(4, length, 30) == (2, 9)
    assert fit_row(4, length, 10) == (4, 9)  # the query alone fits: every demonstration goes
    assert fit_row(4, length, 8) == (None, 9)
    asked.clear()
    assert fit_row(4, length, 60, full=50) == (0, 0) and asked == []  # a row that fits is not measured again


def test_failure_row_is_never_the_gold_label_even_calibrated():
    for label in SPEC.labels:
        row = failure_row(SPEC, Example(text="x", label=label))
        assert SPEC.labels[int(row.argmax())] != label and np.isfinite(row).all()
        cf = np.log(np.array([[0.999, 0.001], [0.99, 0.01]]))  # a prompt biased towards either label
        for bias in (cf, cf[:, ::-1]):
            assert SPEC.labels[int(calibrate(row[None], bias)[0].argmax())] != label


def test_a_huge_query_is_one_failed_row_the_others_are_scored(tmp_path):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    scorer = CachedToyScorer(SPEC, window=100, cache=cache)
    free = CachedToyScorer(SPEC)
    with pytest.warns(ContextWindowWarning, match=r"^row 'q:huge': the query alone is 20,00\d tokens .* 100-token "):
        got = scorer.logprobs(demos=DEMOS, queries=[SHORT, HUGE, SHORT])
    np.testing.assert_array_equal(got[[0, 2]], free.logprobs(demos=DEMOS, queries=[SHORT, SHORT]))
    np.testing.assert_array_equal(got[1], failure_row(SPEC, HUGE))
    assert (scorer.stats.rows_failed, scorer.stats.rows_dropped_demos) == (1, 0)
    assert len(cache) == 1  # SHORT once; the failed row is never stored
    scorer.logprobs(demos=DEMOS, queries=[HUGE])
    assert (scorer.stats.cache_misses, scorer.stats.rows_failed) == (3, 2)


def test_demonstrations_dropped_leftmost_first_counted_on_cache_hits(tmp_path):
    free = CachedToyScorer(SPEC)
    window = free.words(DEMOS[2:], SHORT)
    assert free.words(DEMOS[1:], SHORT) > window
    cache = ScoreCache(tmp_path / "scores.sqlite")
    scorer = CachedToyScorer(SPEC, window=window, cache=cache)
    with pytest.warns(ContextWindowWarning, match=r"^row 'q:short': dropped 2 of 4 demonstrations"):
        got = scorer.logprobs(demos=DEMOS, queries=[SHORT])
    np.testing.assert_array_equal(got, free.logprobs(demos=DEMOS[2:], queries=[SHORT]))
    assert not np.allclose(got, free.logprobs(demos=DEMOS[:2], queries=[SHORT]))
    again = CachedToyScorer(SPEC, window=window, cache=cache)
    np.testing.assert_array_equal(again.logprobs(demos=DEMOS, queries=[SHORT]), got)
    assert (again.stats.cache_hits, again.stats.rows_dropped_demos) == (1, 1)


def test_each_row_is_named_once_and_the_console_gets_a_few():
    scorer = CachedToyScorer(SPEC, window=100)
    many = [Example(text=HUGE.text, label="positive", uid=f"q:{i}") for i in range(30)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer.logprobs(demos=[], queries=many)
        scorer.logprobs(demos=[], queries=many)
    lines = [str(w.message) for w in caught if w.category is ContextWindowWarning]
    assert len(lines) == 20 and lines[-1].endswith("further rows over the window are counted, not named")
    assert all(len(line) < 200 and "\n" not in line for line in lines)
    assert scorer.stats.rows_failed == 60


def test_without_a_cache_only_the_rows_over_the_window_are_counted():
    free = CachedToyScorer(SPEC)
    scorer = CachedToyScorer(SPEC, window=free.words(DEMOS[1:], SHORT))
    with pytest.warns(ContextWindowWarning):
        scorer.logprobs(demos=DEMOS, queries=[SHORT, HUGE, Example(text="ok", label="negative", uid="q:ok")])
    assert (scorer.stats.rows_dropped_demos, scorer.stats.rows_failed) == (2, 1)
    scorer.logprobs(demos=DEMOS[2:], queries=[SHORT])
    assert (scorer.stats.rows_dropped_demos, scorer.stats.rows_failed) == (2, 1)
