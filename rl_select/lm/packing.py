"""Many prompts in few forwards: a token trie packed into sequences with tree attention masks.

Every scored row is a token path (demonstrations + query, then a label's first tokens) and every read is
"the log-probability of token ``t`` after this path". Paths that start alike (the demonstrations two kNN
prompts share, the one prefix of a fixed prompt, the query before each label continuation) share trie nodes,
so the LM runs each shared token once. The trie's segments (runs of tokens without a branch) are packed
into sequences of at most ``budget`` tokens, parents before children; a branch that has to start a new
sequence takes its ancestors' tokens along (they are run again there). Inside a sequence each token attends
to its own ancestors only (a tree attention mask) and sits at its depth in the trie (its position id), so the
LM sees, for every path, exactly the ids of that path and nothing else.

Pure index work, no model: :class:`TokenTrie` builds, :func:`pack` cuts, :func:`sequence_arrays` gives a
packed sequence's ids, positions and ancestor mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Read:
    """Add ``log P(target | path)`` to ``out[row, col]``."""

    row: int
    col: int
    target: int


@dataclass
class TokenTrie:
    """A trie of token paths, nodes numbered from 0 in insertion order (a parent before its children).

    Attributes:
        token: Each node's token id.
        parent: Each node's parent node (``-1`` for a first token).
        depth: Each node's depth, which is its position id (``0`` for a first token).
        reads: For a node that ends a read path, the reads made from it.
    """

    token: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    reads: dict[int, list[Read]] = field(default_factory=dict)
    _children: list[dict[int, int]] = field(default_factory=list)
    _roots: dict[int, int] = field(default_factory=dict)

    def add(self, path: Sequence[int], reads: Sequence[Read]) -> int:
        """Insert ``path`` (at least one token) and attach ``reads`` to its last node; returns that node."""
        if not path:
            raise ValueError("an empty token path has no position to read from")
        level = self._roots
        node, parent = -1, -1
        for d, tok in enumerate(path):
            node = level.get(tok, -1)
            if node < 0:
                node = len(self.token)
                self.token.append(int(tok))
                self.parent.append(parent)
                self.depth.append(d)
                self._children.append({})
                level[tok] = node
            parent, level = node, self._children[node]
        self.reads.setdefault(node, []).extend(reads)
        return node

    def __len__(self) -> int:
        return len(self.token)

    def segments(self) -> tuple[list[list[int]], list[int]]:
        """The trie cut into segments: maximal chains of nodes in which every node but the last has one child.

        Returns:
            ``(segments, seg_parent)``: each segment's nodes in order (parents first) and the segment holding
            its first node's parent (``-1`` at the top). Segments are listed parents first (depth-first order).
        """
        segments: list[list[int]] = []
        seg_parent: list[int] = []
        stack = [(node, -1) for node in reversed(list(self._roots.values()))]
        while stack:
            node, ps = stack.pop()
            seg = [node]
            while len(self._children[seg[-1]]) == 1:
                seg.append(next(iter(self._children[seg[-1]].values())))
            idx = len(segments)
            segments.append(seg)
            seg_parent.append(ps)
            stack.extend((child, idx) for child in reversed(list(self._children[seg[-1]].values())))
        return segments, seg_parent


def pack(segments: Sequence[Sequence[int]], seg_parent: Sequence[int], budget: int) -> list[list[int]]:
    """Cut the segment tree into sequences of segment indices, each at most ``budget`` tokens where possible.

    A subtree goes whole into the current sequence if it fits, else whole into a new one (with its ancestor
    segments repeated at the front) if it fits there, else its top segment is placed and its children are
    placed one by one. A single path longer than ``budget`` still gets a sequence (the budget is a target, the
    context window is checked elsewhere). Within a sequence every segment's ancestors come before it.

    Args:
        segments: Each segment's trie nodes (only lengths are used).
        seg_parent: Each segment's parent segment, ``-1`` at the top; parents listed before children.
        budget: Target tokens per sequence.

    Returns:
        Sequences of segment indices.
    """
    n = len(segments)
    children: list[list[int]] = [[] for _ in range(n)]
    size = [len(s) for s in segments]
    for s in range(n - 1, -1, -1):  # children after parents: accumulate bottom-up
        p = seg_parent[s]
        if p >= 0:
            children[p].append(s)
            size[p] += size[s]
    for c in children:
        c.reverse()
    ancestors_len = [0] * n
    for s in range(n):
        p = seg_parent[s]
        ancestors_len[s] = 0 if p < 0 else ancestors_len[p] + len(segments[p])

    def chain(s: int) -> list[int]:
        out = []
        p = seg_parent[s]
        while p >= 0:
            out.append(p)
            p = seg_parent[p]
        return out[::-1]

    def subtree(s: int) -> list[int]:
        out, stack = [], [s]
        while stack:
            t = stack.pop()
            out.append(t)
            stack.extend(reversed(children[t]))
        return out

    seqs: list[list[int]] = []
    cur: list[int] = []
    cur_len = 0
    in_cur: set[int] = set()

    def add(items: list[int]) -> None:
        nonlocal cur_len
        cur.extend(items)
        in_cur.update(items)
        cur_len += sum(len(segments[t]) for t in items)

    def flush_to(prefix: list[int]) -> None:
        nonlocal cur, cur_len, in_cur
        if cur:
            seqs.append(cur)
        cur, cur_len, in_cur = [], 0, set()
        add(prefix)

    todo = [s for s in range(n) if seg_parent[s] < 0][::-1]
    while todo:
        s = todo.pop()
        p = seg_parent[s]
        need_chain = p >= 0 and p not in in_cur
        extra = ancestors_len[s] if need_chain else 0
        if cur_len + extra + size[s] <= budget:  # the whole subtree fits here
            if need_chain:
                add(chain(s))
            add(subtree(s))
        elif ancestors_len[s] + size[s] <= budget:  # it fits whole in a fresh sequence
            flush_to(chain(s))
            add(subtree(s))
        else:  # too big for any one sequence: its top segment here (or fresh), then its children one by one
            if cur_len + extra + len(segments[s]) > budget:
                flush_to(chain(s))
            elif need_chain:
                add(chain(s))
            add([s])
            todo.extend(reversed(children[s]))
    if cur:
        seqs.append(cur)
    return seqs


def sequence_arrays(
    trie: TokenTrie, segments: Sequence[Sequence[int]], seg_parent: Sequence[int], seq: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """The packed sequence's token ids ``(T,)``, position ids ``(T,)``, ancestor mask ``(T, T)`` bool (``[i, j]``:
    token ``i`` may attend to token ``j``) and the trie node at each slot."""
    nodes = [node for s in seq for node in segments[s]]
    seg_of = np.concatenate([np.full(len(segments[s]), i) for i, s in enumerate(seq)])
    local = {s: i for i, s in enumerate(seq)}
    m = len(seq)
    anc = np.eye(m, dtype=bool)
    for i, s in enumerate(seq):
        p = seg_parent[s]
        if p >= 0:
            anc[i] |= anc[local[p]]  # parents come first, so their rows are complete
    t = len(nodes)
    mask = anc[seg_of][:, seg_of] & np.tri(t, dtype=bool)
    ids = np.fromiter((trie.token[x] for x in nodes), dtype=np.int64, count=t)
    pos = np.fromiter((trie.depth[x] for x in nodes), dtype=np.int64, count=t)
    return ids, pos, mask, nodes
