"""Token ids and forward shapes shared by the transformers scorers: :class:`Tokens` (prefix / query splitting),
:func:`shape_bucket` (the few widths forwards are padded to), :func:`padded_batches` (length-sorted rows cut where
padding is least) and the out-of-memory test a batch is halved on."""

from __future__ import annotations

from collections.abc import Sequence


class Tokens:
    """Batched encoding without special tokens, plus the BOS id when the tokenizer would add one."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        probe = tokenizer("a").input_ids
        bos = tokenizer.bos_token_id
        self.bos: list[int] = [bos] if bos is not None and probe and probe[0] == bos else []
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad: int = int(pad if pad is not None else 0)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def prefix(self, text: str) -> list[int]:
        return self.bos + (self.encode([text])[0] if text else [])

    def split_shared(self, prefix: str, contexts: Sequence[str]) -> tuple[list[int], list[list[int]]]:
        """Token ids of ``prefix + context`` for each context, cut into one shared prefix and the rest.

        Each full string is tokenised as one, because BPE tokenisers merge across the boundary
        (``"\\n\\n"`` ends a string as one token but is two before ``"Review"``); the shared part is
        the longest token prefix common to all of them (the demonstrations plus any template text that
        every query starts with, such as ``"Review:"``), keeping at least one token per context. The LM
        then sees exactly the ids of the joined text, and encodes the shared part once.

        Returns:
            ``(shared_ids, [rest_ids per context])``; ``shared_ids`` starts with BOS if the model uses one.
        """
        joint = self.encode([prefix + c for c in contexts])
        if not joint:
            return list(self.bos), []
        first = joint[0]
        n = min(len(ids) for ids in joint) - 1
        for ids in joint[1:]:
            while n > 0 and ids[:n] != first[:n]:
                n -= 1
        return self.bos + first[:n], [ids[n:] for ids in joint]


def shape_bucket(n: int) -> int:
    """``n`` rounded up to a multiple of 32 (to 256 tokens), 64 (to 1,024) or 256: the widths forwards are padded to.

    The CPU kernels keep buffers per tensor shape; with every prompt's own width a long run grows by megabytes per
    distinct shape (gigabytes over a long-input evaluation), with a few dozen widths it levels off."""
    step = 32 if n <= 256 else 64 if n <= 1024 else 256
    return -(-n // step) * step


def _out_of_memory(exc: BaseException) -> bool:
    """Whether a torch error is an allocation failure (CPU or CUDA), which a smaller batch can avoid."""
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower() or "can't allocate" in str(exc).lower()


BATCH_OVERHEAD_SLOTS = 64
"""Fixed cost of one forward, in token slots, for :func:`padded_batches` (measured on a 2-core CPU)."""

def padded_batches(
    order: Sequence[int], lengths: Sequence[int], max_rows: int, overhead: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Cut rows sorted by length into batches of at most ``max_rows`` that minimise the padded slots.

    A batch of ``B`` rows whose longest has ``w`` tokens costs ``B * w + overhead`` slots (padding
    included); an exact dynamic programme over the sorted rows picks the cuts (fixed-size chunks of
    sorted rows pad a short row up to the longest of its chunk; this cuts where the lengths jump).

    Args:
        order: Row indices sorted by ascending length.
        lengths: Each row's token count (indexed by row).
        max_rows: Most rows per batch.
        overhead: Fixed cost of a forward in slots.
        max_tokens: Most padded slots (rows x longest row) per batch; a single row longer than that still
            gets a batch of its own.

    Returns:
        The batches, each a list of row indices, in order.
    """
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = lengths[order[end - 1]]  # sorted: the last row is the longest
        for size in range(1, min(max_rows, end) + 1):
            if max_tokens is not None and size > 1 and size * width > max_tokens:
                break
            cost = best[end - size] + size * width + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, end - size
    out, end = [], n
    while end > 0:
        out.append(list(order[cut[end] : end]))
        end = cut[end]
    return out[::-1]

