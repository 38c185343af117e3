"""The on-disk embedding cache: a large input is embedded once, content-keyed by embedder and text."""

from __future__ import annotations

import numpy as np
import pytest

import rl_select.embeddings as emb_mod
from rl_select.embeddings import (
    EmbeddingCache,
    HashingEmbedder,
    MiniLMEmbedder,
    default_embedding_cache_path,
    embed_examples,
    embedder_cache_key,
)
from rl_select.errors import SelectionError
from rl_select.types import Example


class CountingEmbedder(HashingEmbedder):
    """A hashing embedder with a disk-cache identity that counts the texts it embeds."""

    def __init__(self, key: str = "counting-v1") -> None:
        super().__init__(16)
        self.cache_key = key
        self.embedded: list[str] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.embedded.extend(texts)
        return super().encode(texts)


EXAMPLES = [Example(text=f"row {i} about {'cats' if i % 2 else 'dogs'}", label="a", uid=str(i)) for i in range(30)]


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    path = tmp_path / "emb" / "embeddings.sqlite"
    monkeypatch.setenv(emb_mod.EMBED_CACHE_ENV, str(path))
    monkeypatch.setattr(emb_mod, "DISK_CACHE_MIN_TEXTS", 10)
    return path


def test_a_large_input_is_embedded_once_then_read_back(cache_file):
    e = CountingEmbedder()
    first = embed_examples(e, EXAMPLES)
    assert len(e.embedded) == 30 and cache_file.is_file()
    again = embed_examples(CountingEmbedder(), EXAMPLES)  # a fresh embedder object, same identity
    assert np.array_equal(first, again) and first.dtype == np.float32
    e2 = CountingEmbedder()
    embed_examples(e2, EXAMPLES)
    assert e2.embedded == []
    # only new texts are embedded; duplicates once
    more = EXAMPLES[:20] + [Example(text="a new row", label="a")] * 12
    e3 = CountingEmbedder()
    out = embed_examples(e3, more)
    assert e3.embedded == ["a new row"] and np.array_equal(out[:20], first[:20])
    # another identity is another key
    e4 = CountingEmbedder("counting-v2")
    embed_examples(e4, EXAMPLES)
    assert len(e4.embedded) == 30


def test_small_inputs_uncacheable_embedders_and_none_skip_the_disk(cache_file, monkeypatch):
    e = CountingEmbedder()
    embed_examples(e, EXAMPLES[:5])  # below DISK_CACHE_MIN_TEXTS
    embed_examples(e, EXAMPLES[:5])
    assert len(e.embedded) == 10 and not cache_file.exists()
    assert embedder_cache_key(HashingEmbedder(8)) is None  # cheaper to recompute than to read
    embed_examples(HashingEmbedder(8), EXAMPLES)
    assert not cache_file.exists()
    monkeypatch.setenv(emb_mod.EMBED_CACHE_ENV, "none")
    assert default_embedding_cache_path() is None
    embed_examples(e, EXAMPLES)
    embed_examples(e, EXAMPLES)
    assert len(e.embedded) == 70 and not cache_file.exists()


def test_default_path_lives_under_rl_select_home(monkeypatch, tmp_path):
    monkeypatch.delenv(emb_mod.EMBED_CACHE_ENV, raising=False)
    monkeypatch.setenv("RL_SELECT_HOME", str(tmp_path))
    assert default_embedding_cache_path() == tmp_path / "embeddings.sqlite"


def test_an_unusable_cache_warns_and_embeds_anyway(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(emb_mod.EMBED_CACHE_ENV, str(blocker / "embeddings.sqlite"))
    monkeypatch.setattr(emb_mod, "DISK_CACHE_MIN_TEXTS", 10)
    e = CountingEmbedder()
    with pytest.warns(UserWarning, match="embedding cache .* cannot be used"):
        out = embed_examples(e, EXAMPLES)
    assert out.shape == (30, 16) and len(e.embedded) == 30


def test_cache_counts_hits_and_refuses_mixed_widths(tmp_path):
    cache = EmbeddingCache(tmp_path / "e.sqlite")
    texts = [ex.text for ex in EXAMPLES]
    cache.embed(CountingEmbedder(), texts)
    assert (cache.hits, cache.misses, len(cache)) == (0, 30, 30)
    cache.embed(CountingEmbedder(), texts)
    assert cache.hits == 30
    wide = HashingEmbedder(32)
    wide.cache_key = "counting-v1"  # the same identity, another width: a corrupted cache for it
    with pytest.raises(SelectionError, match="widths \\[16, 32\\]"):
        cache.embed(wide, texts + ["unseen text"])
    cache.close()


def test_minilm_cache_key_names_the_model_without_loading_it(monkeypatch, tmp_path):
    monkeypatch.setattr(emb_mod, "bundled_minilm_path", lambda: tmp_path)
    monkeypatch.setattr(MiniLMEmbedder, "_load", lambda self: pytest.fail("the model was loaded"))
    key = MiniLMEmbedder().cache_key
    assert key.startswith("sentence-transformers:") and key.endswith(":normalised")
    assert MiniLMEmbedder(str(tmp_path)).cache_key == f"sentence-transformers:{tmp_path.resolve()}:normalised"
