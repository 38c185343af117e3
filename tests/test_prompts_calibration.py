"""Prompt rendering (direct and channel, single and pair tasks) and contextual calibration."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rl_select.lm.calibration import calibrate, normalise
from rl_select.prompts import (
    CONTENT_FREE_INPUTS,
    channel_contexts,
    channel_target,
    content_free_queries,
    label_continuations,
    render_demo,
    render_prefix,
    render_prompt,
    render_query,
    template_parts,
)
from rl_select.tasks import get_task
from rl_select.types import Example

SST2 = get_task("sst2")
RTE = get_task("rte")
GOOD = Example(text="great fun", label="positive", uid="train:1")
BAD = Example(text="dull and slow", label="negative", uid="train:2")
QUERY = Example(text="a quiet gem", label="positive", uid="test:1")
PAIR = Example(text="A man sleeps.", text2="A person rests.", label="entailment", uid="train:3")
PAIR_Q = Example(text="It rains.", text2="The sun shines.", label="not_entailment", uid="test:2")


# --- direct rendering -----------------------------------------------------------------------------


def test_sst2_demo_query_and_prefix():
    assert render_demo(SST2, GOOD) == "Review: great fun\nSentiment: positive"
    assert render_query(SST2, QUERY) == "Review: a quiet gem\nSentiment:"
    assert render_prefix(SST2, []) == ""
    assert render_prefix(SST2, [GOOD, BAD]) == (
        "Review: great fun\nSentiment: positive\n\nReview: dull and slow\nSentiment: negative\n\n"
    )


def test_demo_order_is_kept():
    assert render_prefix(SST2, [GOOD, BAD]) != render_prefix(SST2, [BAD, GOOD])
    assert render_prefix(SST2, [BAD, GOOD]).startswith("Review: dull and slow")


def test_label_continuations_keep_the_space_in_label_order():
    assert label_continuations(SST2) == [" negative", " positive"]  # spec.labels order
    assert label_continuations(RTE) == [" yes", " no"]


def test_prompt_plus_continuation_equals_rendered_demo():
    """The query + the gold continuation is exactly the text a demonstration would show."""
    for spec, ex in ((SST2, QUERY), (RTE, PAIR_Q)):
        gold = label_continuations(spec)[spec.labels.index(ex.label)]
        assert render_query(spec, ex) + gold == render_demo(spec, ex)


def test_render_prompt_is_prefix_then_query():
    assert render_prompt(SST2, [GOOD], QUERY) == (
        "Review: great fun\nSentiment: positive\n\nReview: a quiet gem\nSentiment:"
    )


def test_instruction_comes_first_with_separator():
    spec = replace(SST2, instruction="Classify the sentiment.")
    assert render_prefix(spec, []) == "Classify the sentiment.\n\n"
    assert render_prefix(spec, [GOOD]).startswith("Classify the sentiment.\n\nReview: great fun")


def test_pair_task_renders_both_fields():
    assert render_demo(RTE, PAIR) == "Premise: A man sleeps.\nHypothesis: A person rests.\nAnswer: yes"
    assert render_query(RTE, PAIR_Q) == "Premise: It rains.\nHypothesis: The sun shines.\nAnswer:"
    assert render_prompt(RTE, [PAIR], PAIR_Q).count("Premise:") == 2


def test_template_parts_split_at_label():
    parts = template_parts(SST2)
    assert parts.head == "Review: {text}\nSentiment:"
    assert parts.gap == " "
    assert parts.tail == ""
    assert parts.input_part == "Review: {text}"
    assert parts.label_line == "Sentiment: "


# --- channel rendering ----------------------------------------------------------------------------


def test_channel_rendering_sst2():
    assert render_demo(SST2, GOOD, channel=True) == "Sentiment: positive\nReview: great fun"
    assert channel_contexts(SST2) == ["Sentiment: negative\n", "Sentiment: positive\n"]
    assert channel_target(SST2, QUERY) == "Review: a quiet gem"
    assert render_prefix(SST2, [GOOD], channel=True) == "Sentiment: positive\nReview: great fun\n\n"


def test_channel_rendering_pair():
    assert render_demo(RTE, PAIR, channel=True) == "Answer: yes\nPremise: A man sleeps.\nHypothesis: A person rests."
    assert channel_contexts(RTE) == ["Answer: yes\n", "Answer: no\n"]
    assert channel_target(RTE, PAIR_Q) == "Premise: It rains.\nHypothesis: The sun shines."


def test_channel_context_plus_target_is_the_channel_demo():
    for spec, ex in ((SST2, QUERY), (RTE, PAIR_Q)):
        ctx = channel_contexts(spec)[spec.labels.index(ex.label)]
        assert ctx + channel_target(spec, ex) == render_demo(spec, ex, channel=True)


# --- content-free queries -------------------------------------------------------------------------


def test_content_free_queries_single_task():
    cf = content_free_queries(SST2)
    assert [q.text for q in cf] == list(CONTENT_FREE_INPUTS)
    assert all(q.text2 is None for q in cf)
    assert all(q.label in SST2.labels for q in cf)
    assert len({q.uid for q in cf}) == len(cf)


def test_content_free_queries_pair_task_fill_both_fields():
    cf = content_free_queries(RTE)
    assert [(q.text, q.text2) for q in cf] == [(s, s) for s in CONTENT_FREE_INPUTS]
    assert render_query(RTE, cf[0]) == "Premise: N/A\nHypothesis: N/A\nAnswer:"


# --- calibration ----------------------------------------------------------------------------------


def _log(p) -> np.ndarray:
    return np.log(np.asarray(p, dtype=np.float64))


def test_normalise_rows_sum_to_one():
    x = np.array([[0.0, 1.0, -2.0], [-5.0, -6.0, -7.0]])
    out = normalise(x)
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0)
    np.testing.assert_allclose(out[:, 0] - out[:, 1], x[:, 0] - x[:, 1])  # ratios kept


def test_calibrate_removes_constant_label_bias():
    cf = _log([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    queries = _log([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9]])
    out = calibrate(queries, cf)
    # A query with exactly the content-free distribution becomes uniform.
    np.testing.assert_allclose(np.exp(out[0]), [0.5, 0.5], atol=1e-12)
    # A uniform query is pushed towards the label the bias suppressed.
    assert np.exp(out[1, 1]) == pytest.approx(0.9)
    assert np.exp(out[2, 1]) > np.exp(queries[2, 1])
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0)


def test_calibrate_uses_the_mean_content_free_distribution():
    cf = _log([[0.8, 0.2], [0.6, 0.4]])  # mean (0.7, 0.3)
    out = calibrate(_log([[0.7, 0.3]]), cf)
    np.testing.assert_allclose(np.exp(out), [[0.5, 0.5]], atol=1e-12)


def test_calibrate_normalises_unnormalised_inputs_and_many_labels():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(5, 4)) - 3.0  # not normalised (e.g. summed multi-token log-probs)
    cf = rng.normal(size=(3, 4)) - 3.0
    out = calibrate(raw, cf)
    assert out.shape == (5, 4)
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0)
    # A constant shift of the raw rows changes nothing.
    np.testing.assert_allclose(calibrate(raw + 7.0, cf - 2.0), out, atol=1e-12)


def test_calibrate_with_uniform_content_free_is_plain_normalisation():
    raw = _log([[0.2, 0.3], [0.6, 0.1]])
    out = calibrate(raw, _log([[0.5, 0.5]]))
    np.testing.assert_allclose(out, normalise(raw), atol=1e-12)


def test_calibrate_survives_a_zero_probability_label():
    cf = np.array([[0.0, -np.inf]])  # content-free puts all mass on label 0
    out = calibrate(_log([[0.5, 0.5]]), cf)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0)
