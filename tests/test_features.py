"""State / candidate features: fixed sizes, label-freedom of the active set, ranges, cache sharing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from rl_select.embeddings import HashingEmbedder
from rl_select.errors import ConfigError, SelectionError
from rl_select.lm.cache import ScoreCache
from rl_select.mdp.features import FEATURE_SETS, FeatureSpec, Featurizer
from rl_select.metrics import accuracy
from rl_select.tasks import TaskSpec
from rl_select.testing import CachedToyScorer, ToyScorer, toy_examples, toy_task
from rl_select.types import Example


def _setup(n_labels: int = 2, n_pool: int = 8, n_val: int = 12, seed: int = 0):
    spec = toy_task(n_labels)
    data = toy_examples(spec, n_pool + n_val, seed=seed)
    return spec, tuple(data[:n_pool]), tuple(data[n_pool:])


def _relabel(spec: TaskSpec, ex: Example) -> Example:
    """The same text with the next label."""
    labels = spec.labels
    return replace(ex, label=labels[(labels.index(ex.label) + 1) % len(labels)])


def test_spec_dims_and_names():
    active, labelled = FeatureSpec("active"), FeatureSpec("labelled")
    assert (active.state_dim, active.cand_dim) == (6, 6)
    assert (labelled.state_dim, labelled.cand_dim) == (7, 11)
    assert labelled.state_names[: active.state_dim] == active.state_names  # labelled extends active
    assert labelled.cand_names[: active.cand_dim] == active.cand_names
    assert active.cand_names.index("chosen") == 5 and labelled.state_names[6] == "label_balance"


@pytest.mark.parametrize("kind", FEATURE_SETS)
def test_spec_round_trip(kind):
    spec = FeatureSpec(kind)
    d = spec.to_dict()
    assert FeatureSpec.from_dict(d) == spec
    assert FeatureSpec.from_dict({"kind": kind}) == spec


def test_spec_errors():
    with pytest.raises(ConfigError, match="'bogus'"):
        FeatureSpec("bogus")
    with pytest.raises(ConfigError, match="version"):
        FeatureSpec("active", version=99)
    with pytest.raises(ConfigError, match="state_dim"):
        FeatureSpec.from_dict({"kind": "active", "state_dim": 7})
    with pytest.raises(ConfigError, match="unknown keys"):
        FeatureSpec.from_dict({"kind": "active", "extra": 1})
    with pytest.raises(ConfigError, match="kind"):
        FeatureSpec.from_dict({"version": 1})


@pytest.mark.parametrize("kind", FEATURE_SETS)
def test_shapes_fixed_across_label_counts_and_pool_sizes(kind):
    spec = FeatureSpec(kind)
    for n_labels in (2, 4):
        for n_pool in (5, 9):
            task, pool, val = _setup(n_labels, n_pool)
            feat = Featurizer(spec, ToyScorer(task), val=val)
            for chosen in ([], [1], [3, 0, 2]):
                state, cands = feat.features(pool, chosen, k=4)
                assert state.shape == (spec.state_dim,) and state.dtype == np.float32
                assert cands.shape == (n_pool, spec.cand_dim) and cands.dtype == np.float32
                assert np.isfinite(state).all() and np.isfinite(cands).all()


def test_active_features_are_label_free():
    task, pool, val = _setup(4, 9)
    relabelled_val = tuple(_relabel(task, e) for e in val)
    for kind, should_change in (("active", False), ("labelled", True)):
        for chosen in ([], [2, 5]):
            # relabel every candidate that is not in the prompt (chosen demos show their labels)
            relabelled = tuple(e if i in chosen else _relabel(task, e) for i, e in enumerate(pool))
            a = Featurizer(kind, ToyScorer(task), val=val).features(pool, chosen, k=3)
            b = Featurizer(kind, ToyScorer(task), val=relabelled_val).features(relabelled, chosen, k=3)
            same = all(np.array_equal(x, y) for x, y in zip(a, b))
            assert same != should_change, (kind, chosen)


def test_labelled_features_follow_labels():
    task, pool, val = _setup(2, 6)
    feat = Featurizer("labelled", ToyScorer(task), val=val)
    names = feat.spec.cand_names
    state, cands = feat.features(pool, [0, 1], k=4)  # toy labels are round robin: l0, l1, l0, l1, ...
    assert state[feat.spec.state_names.index("label_balance")] == pytest.approx(1.0)  # one of each
    np.testing.assert_allclose(cands[:, names.index("same_label_share")], 0.5)
    np.testing.assert_array_equal(cands[:, names.index("under_represented")], 0.0)
    state, cands = feat.features(pool, [0, 2], k=4)  # two l0 demos
    assert state[feat.spec.state_names.index("label_balance")] == pytest.approx(0.0)
    np.testing.assert_allclose(cands[:, names.index("same_label_share")], [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(cands[:, names.index("under_represented")], [0, 1, 0, 1, 0, 1])
    # a chosen demo is its own nearest neighbour; nothing chosen -> similarity features are 0
    assert cands[0, names.index("max_cos")] == pytest.approx(1.0)
    _, empty = feat.features(pool, [], k=4)
    np.testing.assert_array_equal(empty[:, names.index("max_cos") : names.index("mean_cos") + 1], 0.0)
    np.testing.assert_array_equal(empty[:, names.index("same_label_share")], 0.0)
    # lm_wrong matches the LM's own arg-max against the gold label
    res = feat.compute(pool, [], k=4)
    gold = np.array([task.labels.index(e.label) for e in pool])
    np.testing.assert_array_equal(res.candidates[:, names.index("lm_wrong")], res.pool_logprobs.argmax(1) != gold)


@pytest.mark.parametrize("kind", FEATURE_SETS)
def test_normalisation_ranges(kind):
    bounds = {
        "step_frac": (0, 1), "val_mean_entropy": (0, 1), "val_mean_max": (0, 1), "val_query_entropy": (0, 1),
        "val_query_max": (0, 1), "val_log_mass": (-1, 0), "label_balance": (0, 1),
        "entropy": (0, 1), "max_prob": (0, 1), "min_prob": (0, 1), "std_prob": (0, 0.5), "log_mass": (-1, 0),
        "chosen": (0, 1), "same_label_share": (0, 1), "under_represented": (0, 1), "max_cos": (-1, 1),
        "mean_cos": (-1, 1), "lm_wrong": (0, 1),
        "zs_entropy": (0, 1), "zs_max_prob": (0, 1), "zs_min_prob": (0, 1), "zs_std_prob": (0, 0.5),
        "zs_log_mass": (-1, 0), "length": (0, 1), "chosen_zs_entropy": (0, 1), "chosen_zs_max": (0, 1),
        "chosen_length": (0, 1), "chosen_mean_cos": (-1, 1),
        "zs_gold_prob": (0, 1), "zs_wrong": (0, 1), "same_as_last": (0, 1), "chosen_zs_gold_prob": (0, 1),
    }
    for n_labels in (2, 4):
        task, pool, val = _setup(n_labels, 9)
        feat = Featurizer(kind, ToyScorer(task, demo_weight=3.0), val=val)
        for chosen in ([], [0], [4, 1, 7], [0, 1, 2, 3, 4]):
            state, cands = feat.features(pool, chosen, k=5)
            assert state[0] == pytest.approx(len(chosen) / 5)
            np.testing.assert_array_equal(cands[:, feat.spec.cand_names.index("chosen")], np.isin(range(9), chosen))
            for name, col in [*zip(feat.spec.state_names, state[:, None]), *zip(feat.spec.cand_names, cands.T)]:
                lo, hi = bounds[name]
                assert lo - 1e-6 <= col.min() and col.max() <= hi + 1e-6, (name, col)


def test_log_mass_reads_unnormalised_scores():
    task, pool, val = _setup(2, 4)

    class Shifted(ToyScorer):
        def logprobs(self, *, demos, queries):
            return super().logprobs(demos=demos, queries=queries) - 3.0  # label mass e^-3

    state, cands = Featurizer("active", Shifted(task), val=val).features(pool, [], k=2)
    assert state[5] == pytest.approx(-0.3, abs=1e-6)
    np.testing.assert_allclose(cands[:, 4], -0.3, atol=1e-6)


def test_val_call_makes_the_reward_a_cache_hit(tmp_path):
    task, pool, val = _setup(2, 8)
    cache = ScoreCache(tmp_path / "scores.sqlite")
    try:
        scorer = CachedToyScorer(task, cache=cache)
        feat = Featurizer("labelled", scorer, val=val)
        chosen = [3, 1]
        res = feat.compute(pool, chosen, k=3)
        before = scorer.stats.copy()
        acc = accuracy(scorer, demos=[pool[i] for i in chosen], examples=list(val))
        delta = scorer.stats - before
        assert delta.cache_misses == 0 and delta.cache_hits == len(val)
        assert acc == res.val_acc
        # the numbers equal the plain scorer's, and a repeat of the features is all hits too
        np.testing.assert_array_equal(res.val_logprobs, ToyScorer(task).logprobs(demos=[pool[3], pool[1]], queries=val))
        before = scorer.stats.copy()
        feat.features(pool, chosen, k=3)
        assert (scorer.stats - before).cache_misses == 0
    finally:
        cache.close()


def test_hashing_embedder_is_deterministic_and_unit():
    emb = HashingEmbedder(dim=64)
    texts = ["the cat sat", "The CAT sat!", "dogs run far", ""]
    vecs = emb.encode(texts)
    assert vecs.shape == (4, 64) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs[:3], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(vecs[3], 0.0)
    np.testing.assert_array_equal(vecs[0], vecs[1])
    np.testing.assert_array_equal(vecs, HashingEmbedder(dim=64).encode(texts))
    assert vecs[0] @ vecs[2] < 0.9


def test_custom_embedder_is_used_and_cached():
    task, pool, val = _setup(2, 4)

    class AxisEmbedder:
        """Candidate i (by its trailing '#i') -> unit vector on axis i % 2."""

        def __init__(self) -> None:
            self.seen: list[str] = []

        def encode(self, texts: list[str]) -> np.ndarray:
            self.seen += texts
            out = np.zeros((len(texts), 2), dtype=np.float32)
            for r, t in enumerate(texts):
                out[r, int(t.rsplit("#", 1)[1]) % 2] = 1.0
            return out

    embedder = AxisEmbedder()
    feat = Featurizer("labelled", ToyScorer(task), val=val, embedder=embedder)
    max_cos = feat.spec.cand_names.index("max_cos")
    _, cands = feat.features(pool, [0], k=2)
    np.testing.assert_array_equal(cands[:, max_cos], [1, 0, 1, 0])
    _, cands = feat.features(list(pool), [0, 1], k=2)  # a new sequence object: embeddings come from memory
    np.testing.assert_array_equal(cands[:, max_cos], 1.0)
    np.testing.assert_array_equal(cands[:, max_cos + 1], 0.5)
    assert sorted(embedder.seen) == sorted(e.text for e in pool)


def test_bad_inputs():
    task, pool, val = _setup(2, 4)
    with pytest.raises(SelectionError, match="empty"):
        Featurizer("active", ToyScorer(task), val=[])
    with pytest.raises(ConfigError, match="'nope'"):
        Featurizer("nope", ToyScorer(task), val=val)
    feat = Featurizer("active", ToyScorer(task), val=val)
    with pytest.raises(SelectionError, match="outside"):
        feat.features(pool, [4], k=2)
    with pytest.raises(SelectionError, match="repeat"):
        feat.features(pool, [1, 1], k=2)
    with pytest.raises(SelectionError, match="label 'x'"):
        Featurizer("active", ToyScorer(task), val=[Example(text="a", label="x")])


def test_real_sst2_slice(data_root):
    from rl_select.data import load_task
    from rl_select.tasks import get_task

    spec = get_task("sst2")
    train, _ = load_task(spec, shared_root=data_root)
    pool, val = train[:10], train[10:30]
    for kind in FEATURE_SETS:
        feat = Featurizer(kind, ToyScorer(spec), val=val)
        state, cands = feat.features(pool, [2, 7], k=4)
        assert state.shape == (FeatureSpec(kind).state_dim,) and cands.shape == (10, FeatureSpec(kind).cand_dim)
        assert np.isfinite(cands).all()
