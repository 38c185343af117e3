"""The transformers backend: fast label scoring (loading lives in :mod:`~rl_select.lm.hf_load`, token ids and
batch shapes in :mod:`~rl_select.lm.hf_batches`).

Direct mode scores every call, one prompt or many, through one token trie (:mod:`rl_select.lm.packing`): the
demonstrations two prompts share, the template text every query starts with and label prefixes run once; the
trie is cut into sequences of about ``pack_tokens`` tokens with tree attention masks, label tokens are read in
the same forward (the LM head only at the positions read), and a one-prompt call's demonstrations are encoded
once and broadcast as a KV cache under its packed queries. Channel mode keeps one prompt per call: the prefix
KV cache, then the label lines as a left-padded batch, then the query inputs as the scored continuations.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from rl_select.errors import ModelError
from rl_select.lm.base import CachedScorer
from rl_select.lm.bundled import BUNDLED_ID
from rl_select.lm.cache import ScoreCache
from rl_select.lm.hf_batches import (  # noqa: F401 (re-exported: the scorer's public names stay importable here)
    BATCH_OVERHEAD_SLOTS,
    Tokens,
    _out_of_memory,
    padded_batches,
    shape_bucket,
)
from rl_select.lm.hf_load import (  # noqa: F401 (re-exported)
    context_window,
    cpu_has_fast_bf16,
    dtype_name,
    load_causal_lm,
    model_fingerprint,
    resolve_device,
    resolve_dtype,
)
from rl_select.lm.packing import Read, TokenTrie, pack, sequence_arrays
from rl_select.prompts import (
    Mode,
    channel_contexts,
    channel_target,
    label_continuations,
    render_prefix,
    render_query,
)
from rl_select.tasks import TaskSpec
from rl_select.types import Example

KV = list[tuple[torch.Tensor, torch.Tensor]]


# --- the fast scorer ------------------------------------------------------------------------------

CACHED_PREFIX_TOKENS = 32
"""A run of at least this many tokens shared by every path of a trie is encoded once and cached (one prompt)."""

TRIE_TOKENS = 65_536
"""Most prompt tokens in one token trie of the many-prompt path (its Python nodes cost ~0.3 kB each)."""


class HFScorer(CachedScorer):
    """Label log-probs from a transformers causal LM with a shared prefix KV cache.

    Args:
        model: A causal LM in eval mode.
        tokenizer: Its tokenizer.
        spec: Task specification.
        model_id: Name used in messages and run records.
        mode: ``"direct"`` (P(label | input)) or ``"channel"`` (P(input | label)).
        length_norm: Divide each summed log-prob by its token count.
        batch_size: Rows per forward pass (prefixes of distinct prompts; their query rows take up to 4x as many).
        max_batch_tokens: Most padded token slots in one forward of the many-prompt path (bounds its memory).
        cache: Optional on-disk :class:`ScoreCache`.
        calibrate: Apply contextual calibration.
        fingerprint: Precomputed :func:`model_fingerprint` (else computed here).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        spec: TaskSpec,
        *,
        model_id: str = "model",
        mode: Mode = "direct",
        length_norm: bool = False,
        batch_size: int = 16,
        max_batch_tokens: int = 4096,
        pack_tokens: int = 512,
        cache: ScoreCache | None = None,
        calibrate: bool = False,
        fingerprint: str | None = None,
    ) -> None:
        super().__init__(spec, cache=cache, calibrate=calibrate)
        if mode not in ("direct", "channel"):
            raise ModelError(f"unknown scoring mode {mode!r}; expected 'direct' or 'channel'")
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.mode = mode
        self.length_norm = length_norm
        self.batch_size = int(batch_size)
        self.max_batch_tokens = int(max_batch_tokens)
        self.pack_tokens = int(pack_tokens)
        self.tokens = Tokens(tokenizer)
        self.max_length = context_window(model, tokenizer)
        self.device = next(model.parameters()).device
        self.model_fingerprint = fingerprint or model_fingerprint(model)
        self._body = model.base_model
        self._head = model.get_output_embeddings()
        # transformers 5.x renamed the forward argument and output field `past_key_values` to `cache`
        params = inspect.signature(self._body.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def from_pretrained(
        cls, model_id: str = BUNDLED_ID, *, spec: TaskSpec, dtype: str = "auto", device: str = "auto", **kwargs
    ) -> HFScorer:
        """Load the model (bundled SmolLM2 by default) and wrap it."""
        model, tokenizer = load_causal_lm(model_id, dtype=dtype, device=device)
        return cls(model, tokenizer, spec, model_id=model_id, **kwargs)

    @property
    def fingerprint(self) -> str:
        return f"hf:{self.model_fingerprint}:{self.mode}:{int(self.length_norm)}"

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- public extras ------------------------------------------------------------------------------

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled last hidden states, L2-normalised. Shape ``(len(texts), hidden)``, float32."""
        ids = self.tokens.encode(texts)
        out = np.zeros((len(ids), self.model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = [ids[i][: self.max_length] or [self.tokens.pad] for i in rows]
            width = max(len(b) for b in batch)
            x = torch.full((len(batch), width), self.tokens.pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for r, b in enumerate(batch):
                x[r, : len(b)] = torch.tensor(b)
                mask[r, : len(b)] = 1
            h = self._body(input_ids=x.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            m = mask.to(self.device).unsqueeze(-1).to(h.dtype)
            pooled = ((h * m).sum(1) / m.sum(1)).float()
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out

    # -- scoring ------------------------------------------------------------------------------------

    def _compute(self, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        """One prompt through :meth:`_compute_many` (the window rule's extra column included)."""
        return self._compute_many([(demos, queries)])[0]

    def _compute_many(self, groups: Sequence[tuple[Sequence[Example], Sequence[Example]]]) -> list[np.ndarray]:
        """Raw label log-probs of many prompts under the context-window rule (:meth:`_within_window`, so each array
        has one more column: demonstrations dropped). Direct mode scores every prompt at once
        (:meth:`_score_packed`), channel mode one prompt at a time (:meth:`_score`); a row that fits is tokenised
        once."""
        if self.mode == "channel":
            enc = [self._channel_ids(demos, queries) for demos, queries in groups]
            full = [[len(p) + max(map(len, ctx)) + len(c) for c in conts] for p, ctx, conts in enc]

            def channel(todo: Sequence[tuple[Sequence[Example], Sequence[Example]]]) -> list[np.ndarray]:
                ids = enc if todo is groups else [self._channel_ids(d, q) for d, q in todo]
                return [self._score(*e).T for e in ids]

            return self._within_window(groups, full, self._channel_length, channel, limit=self.max_length)
        conts = self.tokens.encode(label_continuations(self.spec))
        n_cont = max(map(len, conts))
        prompts = [self._direct_ids(demos, queries) for demos, queries in groups]
        full = [[len(prefix) + len(c) + n_cont for c in contexts] for prefix, contexts in prompts]

        def direct(todo: Sequence[tuple[Sequence[Example], Sequence[Example]]]) -> list[np.ndarray]:
            return self._score_prompts(prompts if todo is groups else [self._direct_ids(d, q) for d, q in todo], conts)

        def length(demos: Sequence[Example], query: Example) -> int:
            text = render_prefix(self.spec, demos) + render_query(self.spec, query)
            return len(self.tokens.bos) + len(self.tokens.encode([text])[0]) + n_cont

        return self._within_window(groups, full, length, direct, limit=self.max_length)

    def _direct_ids(self, demos: Sequence[Example], queries: Sequence[Example]) -> tuple[list[int], list[list[int]]]:
        """Direct mode's ``(shared prefix ids, [rest of each query's ids])``."""
        return self.tokens.split_shared(render_prefix(self.spec, demos), [render_query(self.spec, q) for q in queries])

    def _channel_ids(self, demos: Sequence[Example], queries: Sequence[Example]
                     ) -> tuple[list[int], list[list[int]], list[list[int]]]:
        """Channel mode's ``(shared prefix ids, [label line ids], [query input ids])``."""
        prefix, contexts = self.tokens.split_shared(render_prefix(self.spec, demos, channel=True),
                                                    channel_contexts(self.spec))
        return prefix, contexts, self.tokens.encode([channel_target(self.spec, q) for q in queries])

    def _channel_length(self, demos: Sequence[Example], query: Example) -> int:
        """Tokens of one channel-mode row: its longest label line's context plus the query input."""
        prefix, contexts, conts = self._channel_ids(demos, [query])
        return len(prefix) + max(map(len, contexts)) + len(conts[0])

    def _cached_root(self, trie: TokenTrie, segments: list[list[int]], seg_parent: list[int]):
        """When every path starts with one long shared run (one prompt's demonstrations), encode it once as a KV
        cache and return the segment tree without it (its children become tops): ``(kv, mask (1, P'), segments,
        seg_parent)``; else an empty cache and the tree unchanged."""
        tops = [i for i, p in enumerate(seg_parent) if p < 0]
        none = ([], torch.ones((1, 0), dtype=torch.long), segments, seg_parent)
        if len(tops) != 1 or len(segments[tops[0]]) < CACHED_PREFIX_TOKENS:
            return none
        root = tops[0]
        if any(node in trie.reads for node in segments[root]) or len(segments) == 1:
            return none
        kv, mask = self._encode_prefix([trie.token[n] for n in segments[root]])
        keep = [i for i in range(len(segments)) if i != root]
        index = {old: new for new, old in enumerate(keep)}
        return kv, mask, [segments[i] for i in keep], [index.get(seg_parent[i], -1) for i in keep]

    def _packed_forward(self, seqs: list, reads: dict[int, list[Read]], done: set[int], flat: np.ndarray,
                        prefix_kv: KV, prefix_mask: torch.Tensor) -> None:
        """One forward over packed sequences (right-padded) on top of a shared prefix cache (maybe empty), adding
        every read not ``done`` yet into ``flat`` ``(n_rows, n_cont)``. A batch that does not fit in memory is
        halved until it does."""
        try:
            self._packed_forward_once(seqs, reads, done, flat, prefix_kv, prefix_mask)
        except (RuntimeError, MemoryError) as exc:
            if len(seqs) == 1 or not _out_of_memory(exc):
                raise
            half = len(seqs) // 2
            self._packed_forward(seqs[:half], reads, done, flat, prefix_kv, prefix_mask)
            self._packed_forward(seqs[half:], reads, done, flat, prefix_kv, prefix_mask)

    @torch.inference_mode()
    def _packed_forward_once(self, seqs: list, reads: dict[int, list[Read]], done: set[int], flat: np.ndarray,
                             prefix_kv: KV, prefix_mask: torch.Tensor) -> None:
        width = shape_bucket(max(len(sq[0]) for sq in seqs))
        n_prefix = prefix_mask.shape[1]
        ids = torch.full((len(seqs), width), self.tokens.pad, dtype=torch.long)
        pos = torch.zeros((len(seqs), width), dtype=torch.long)
        # (B, T, P' + T): every slot sees the cached prefix's real slots; a padding slot sees itself too
        mask = torch.zeros((len(seqs), width, n_prefix + width), dtype=torch.bool)
        mask[:, :, :n_prefix] = prefix_mask.bool()[:, None, :]
        mask[:, :, n_prefix:] = torch.eye(width, dtype=torch.bool)
        slots: list[tuple[int, int]] = []
        nodes_read: list[int] = []
        seen: set[int] = set()
        for b, (sid, spos, smask, nodes) in enumerate(seqs):
            n = len(sid)
            ids[b, :n] = torch.from_numpy(sid)
            pos[b, :n] = torch.from_numpy(spos)
            mask[b, :n, n_prefix:n_prefix + n] = torch.from_numpy(smask)
            for t, node in enumerate(nodes):
                if node in reads and node not in done and node not in seen:
                    slots.append((b, t))
                    nodes_read.append(node)
                    seen.add(node)
        if not slots:
            return
        kw = {}
        if prefix_kv:
            shared = [(k.expand(len(seqs), -1, -1, -1), v.expand(len(seqs), -1, -1, -1)) for k, v in prefix_kv]
            kw = {self._cache_kw: DynamicCache(ddp_cache_data=shared), "use_cache": True}
        h = self._body(input_ids=ids.to(self.device), attention_mask=self._attention_mask(mask),
                       position_ids=pos.to(self.device), **kw).last_hidden_state  # (B, T, H)
        self.stats.forward_tokens += sum(len(sq[0]) for sq in seqs)
        bi, ti = zip(*slots)
        logp = torch.log_softmax(self._head(h[list(bi), list(ti)]).float(), dim=-1).double().cpu().numpy()
        for k, node in enumerate(nodes_read):
            for rd in reads[node]:
                flat[rd.row, rd.col] += logp[k, rd.target]
        done.update(nodes_read)

    def _attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The model's attention mask for a packed forward's bool ``mask`` ``(B, T, P' + T)``: ``(B, 1, T, P' + T)``."""
        return mask[:, None].to(self.device)

    def _score_prompts(self, prompts: list[tuple[list[int], list[list[int]]]],
                       conts: list[list[int]]) -> list[np.ndarray]:
        """Label log-probs of many tokenised direct-mode prompts (:meth:`_score_packed`, in bounded tries)."""
        norm = np.array([len(c) for c in conts], dtype=np.float64)[None, :] if self.length_norm else 1.0
        out: list[np.ndarray] = [np.zeros(0)] * len(prompts)
        # prompts that start alike go to the same trie; a trie holds at most TRIE_TOKENS tokens (bounded memory)
        order = sorted(range(len(prompts)), key=lambda g: prompts[g][0])
        chunk: list[int] = []
        size = 0
        for pos, g in enumerate(order):
            chunk.append(g)
            size += len(prompts[g][0]) + sum(map(len, prompts[g][1]))
            if size >= TRIE_TOKENS or pos == len(order) - 1:
                for h, res in zip(chunk, self._score_packed([prompts[h] for h in chunk], conts)):
                    out[h] = res / norm
                chunk, size = [], 0
        return out

    @torch.inference_mode()
    def _score_packed(self, prompts: list[tuple[list[int], list[list[int]]]],
                      conts: list[list[int]]) -> list[np.ndarray]:
        """Summed label log-probs for many ``(prefix_ids, [context_ids])`` prompts, ``(n_ctx, n_cont)`` each, from
        packed sequences (:mod:`rl_select.lm.packing`): every shared token run once, label tokens in the same
        forward, at most ``batch_size`` sequences and ``max_batch_tokens`` slots per forward."""
        if any(len(c) == 0 for c in conts) or any(len(c) == 0 for _, ctx in prompts for c in ctx):
            raise ModelError("a label continuation or query rendered to zero tokens; check the template")
        trie = TokenTrie()
        row_of: list[tuple[int, int]] = []
        for g, (prefix, contexts) in enumerate(prompts):
            for j, ctx in enumerate(contexts):
                r = len(row_of)
                row_of.append((g, j))
                path = prefix + ctx
                trie.add(path, [Read(r, c, cont[0]) for c, cont in enumerate(conts)])
                for c, cont in enumerate(conts):
                    for m in range(1, len(cont)):
                        trie.add(path + cont[:m], [Read(r, c, cont[m])])
        segments, seg_parent = trie.segments()
        longest = max(len(p) + len(c) for p, ctx in prompts for c in ctx) + max(map(len, conts))
        prefix_kv, prefix_mask, segments, seg_parent = self._cached_root(trie, segments, seg_parent)
        longest -= int(prefix_mask.sum())
        packed = pack(segments, seg_parent, max(self.pack_tokens, longest))  # every path fits one sequence
        lengths = [sum(len(segments[x]) for x in seq) for seq in packed]
        order = sorted(range(len(packed)), key=lambda i: lengths[i])
        flat = np.zeros((len(row_of), len(conts)))
        done: set[int] = set()
        for batch in padded_batches(order, lengths, self.batch_size, BATCH_OVERHEAD_SLOTS, self.max_batch_tokens):
            seqs = [sequence_arrays(trie, segments, seg_parent, packed[i]) for i in batch]
            self._packed_forward(seqs, trie.reads, done, flat, prefix_kv, prefix_mask)
        self.stats.prefix_forwards += len(prompts)
        out = [np.zeros((len(ctx), len(conts))) for _, ctx in prompts]
        for r, (g, j) in enumerate(row_of):
            out[g][j] = flat[r]
        return out

    @torch.inference_mode()
    def _score(self, prefix: list[int], contexts: list[list[int]], conts: list[list[int]]) -> np.ndarray:
        """Summed log P(cont | prefix + context) for every (context, cont) pair. Shape ``(n_ctx, n_cont)``."""
        if any(len(c) == 0 for c in conts) or any(len(c) == 0 for c in contexts):
            raise ModelError("a label continuation or query rendered to zero tokens; check the template")
        prefix_kv, prefix_mask = self._encode_prefix(prefix)
        self.stats.prefix_forwards += 1
        first = torch.tensor([c[0] for c in conts], device=self.device)
        result = np.zeros((len(contexts), len(conts)))
        order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
        for rows in padded_batches(order, [len(c) for c in contexts], self.batch_size, BATCH_OVERHEAD_SLOTS):
            ids, mask, pos = self._left_pad([contexts[i] for i in rows], prefix_mask.expand(len(rows), -1))
            # broadcast (not copy) the prefix cache to every row of the batch
            n = len(rows)
            shared = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix_kv]
            cache = DynamicCache(ddp_cache_data=shared)
            out = self._body(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                             **{self._cache_kw: cache})
            self.stats.forward_tokens += int(mask[:, prefix_mask.shape[1]:].sum())
            logp = torch.log_softmax(self._head(out.last_hidden_state[:, -1]).float(), dim=-1)  # (B, V)
            scores = logp[:, first]  # (B, n_cont)
            if any(len(c) > 1 for c in conts):
                kv = [(layer.keys, layer.values) for layer in self._cache_of(out).layers]
                scores = scores + self._continue(kv, mask, pos[:, -1], conts)
            result[rows] = scores.double().cpu().numpy()
        if self.length_norm:
            result /= np.array([len(c) for c in conts], dtype=np.float64)[None, :]
        return result

    def _cache_of(self, out) -> DynamicCache:
        return getattr(out, self._cache_kw)

    def _encode_prefix(self, prefix: list[int]) -> tuple[KV, torch.Tensor]:
        """KV cache of the prefix right-padded to its :func:`shape_bucket`, one tensor pair per layer, each
        ``(1, kv_heads, P', head_dim)``, and the mask of its real slots ``(1, P')`` (``P' = 0`` for no prefix).

        The padding comes after every real token, so causal attention keeps it out of the real slots' cache."""
        if not prefix:
            return [], torch.ones((1, 0), dtype=torch.long)
        width = shape_bucket(len(prefix))
        ids = torch.full((1, width), self.tokens.pad, dtype=torch.long)
        ids[0, : len(prefix)] = torch.tensor(prefix)
        out = self._body(input_ids=ids.to(self.device), use_cache=True)
        self.stats.forward_tokens += len(prefix)
        mask = torch.zeros((1, width), dtype=torch.long)
        mask[0, : len(prefix)] = 1
        return [(layer.keys, layer.values) for layer in self._cache_of(out).layers], mask

    def _left_pad(self, seqs: list[list[int]], prefix_mask: torch.Tensor):
        """Ids left-padded to a :func:`shape_bucket` width ``(B, L)``, mask over prefix + ids ``(B, P + L)``, and
        positions ``(B, L)``; ``prefix_mask`` ``(B, P)`` marks the real prefix slots, and positions count real
        tokens only, so every row continues where the prefix ends."""
        lengths = torch.tensor([len(s) for s in seqs])
        width = shape_bucket(int(lengths.max()))
        ids = torch.full((len(seqs), width), self.tokens.pad, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, width - len(s):] = torch.tensor(s)
        real = torch.arange(width)[None, :] >= (width - lengths)[:, None]  # (B, L) True on real tokens
        mask = torch.cat([prefix_mask.cpu().long(), real.long()], dim=1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, prefix_mask.shape[1]:]
        return ids.to(self.device), mask.to(self.device), pos.to(self.device)

    def _continue(self, kv: KV, mask: torch.Tensor, last_pos: torch.Tensor, conts: list[list[int]]) -> torch.Tensor:
        """Log-probs of every continuation's tokens after the first. Shape ``(B, n_cont)``."""
        B = mask.shape[0]
        extra = torch.zeros((B, len(conts)), device=self.device)
        pairs = [(b, j) for b in range(B) for j, c in enumerate(conts) if len(c) > 1]
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            pad = torch.nn.utils.rnn.pad_sequence
            inp = pad([torch.tensor(conts[j][:-1]) for _, j in chunk], batch_first=True, padding_value=self.tokens.pad)
            tgt = pad([torch.tensor(conts[j][1:]) for _, j in chunk], batch_first=True, padding_value=-1)
            width = inp.shape[1]
            inp, tgt = inp.to(self.device), tgt.to(self.device)
            bidx = torch.tensor([b for b, _ in chunk], device=self.device)
            cache = DynamicCache(ddp_cache_data=[(k[bidx], v[bidx]) for k, v in kv])
            mask2 = torch.cat([mask[bidx], torch.ones((len(chunk), width), dtype=mask.dtype, device=self.device)], 1)
            pos2 = last_pos[bidx][:, None] + 1 + torch.arange(width, device=self.device)[None, :]
            kw = {self._cache_kw: cache}
            h = self._body(input_ids=inp, attention_mask=mask2, position_ids=pos2, **kw).last_hidden_state
            valid = tgt >= 0
            self.stats.forward_tokens += int(valid.sum())
            logp = torch.log_softmax(self._head(h[valid]).float(), dim=-1)  # (n_valid, V)
            picked = logp.gather(1, tgt[valid][:, None]).squeeze(1)
            row_of = torch.arange(len(chunk), device=self.device)[:, None].expand_as(tgt)[valid]
            sums = torch.zeros(len(chunk), device=self.device).index_add_(0, row_of, picked)
            jidx = torch.tensor([j for _, j in chunk], device=self.device)
            extra[bidx, jidx] += sums
        return extra
