"""The token trie and its packing into sequences with tree attention masks (no model)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rl_select.lm.packing import Read, TokenTrie, pack, sequence_arrays

PATHS = [
    [1, 2, 3, 4, 5],
    [1, 2, 3, 6],
    [1, 2, 7, 8, 9, 10],
    [11, 12],
    [1, 2, 3, 4, 5, 13],  # extends a read path: a read in the middle of a segment
    [11, 14, 15, 16, 17, 18, 19, 20],
]


def _trie(paths=PATHS) -> TokenTrie:
    trie = TokenTrie()
    for i, p in enumerate(paths):
        trie.add(p, [Read(i, 0, 99)])
    return trie


def test_trie_shares_common_prefixes_and_records_depths():
    trie = _trie()
    assert len(trie) == len({tuple(p[: i + 1]) for p in PATHS for i in range(len(p))})
    for p in PATHS:
        node = trie.add(p, [])  # already there: no new node
        assert trie.depth[node] == len(p) - 1
    with pytest.raises(ValueError, match="empty token path"):
        trie.add([], [])


def test_segments_cover_every_node_once_parents_first():
    trie = _trie()
    segments, parent = trie.segments()
    flat = [n for s in segments for n in s]
    assert sorted(flat) == list(range(len(trie)))
    for i, seg in enumerate(segments):
        for a, b in itertools.pairwise(seg):
            assert trie.parent[b] == a
        first_parent = trie.parent[seg[0]]
        assert (parent[i] < 0) == (first_parent < 0)
        if parent[i] >= 0:
            assert parent[i] < i and segments[parent[i]][-1] == first_parent


@pytest.mark.parametrize("budget", [1, 3, 6, 9, 100])
def test_every_path_is_whole_in_some_sequence_with_exact_ancestor_attention(budget):
    trie = _trie()
    segments, parent = trie.segments()
    seqs = pack(segments, parent, budget)
    placed = set()
    for seq in seqs:
        ids, pos, mask, nodes = sequence_arrays(trie, segments, parent, seq)
        assert len(nodes) == len(set(nodes))  # a node at most once per sequence
        slot = {n: t for t, n in enumerate(nodes)}
        for t, node in enumerate(nodes):
            assert ids[t] == trie.token[node] and pos[t] == trie.depth[node]
            # the slots a token sees are exactly its ancestors and itself
            anc, a = set(), node
            while a >= 0:
                anc.add(a)
                a = trie.parent[a]
            assert anc <= set(slot), "an ancestor is missing from the sequence"
            assert {nodes[j] for j in np.flatnonzero(mask[t])} == anc
        placed |= set(nodes)
        longest = max(trie.depth[n] + 1 for n in nodes)
        assert len(nodes) <= max(budget, longest + max(len(s) for s in segments))
    assert placed == set(range(len(trie)))
    if budget >= len(trie):
        assert len(seqs) == 1  # room for all: one sequence, every token once
