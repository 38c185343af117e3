"""The plain, slow reference scorer: one full fp32 forward per (query, label), every logit computed.

Kept for tests (the fast :class:`~rl_select.lm.hf.HFScorer` must agree with it) and for the scorer
benchmark's speed ratio. It tokenises the whole prompt text as one string, so agreement also checks
that the fast scorer's piecewise tokenisation (prefix | query | label) matches. It applies the same
context-window rule (:mod:`rl_select.lm.window`), measuring each row by tokenising it once more.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel

from rl_select.lm.base import CachedScorer
from rl_select.lm.cache import ScoreCache
from rl_select.lm.hf import Tokens, context_window, model_fingerprint
from rl_select.prompts import Mode, scoring_texts
from rl_select.tasks import TaskSpec
from rl_select.types import Example


class ReferenceScorer(CachedScorer):
    """Label log-probs by brute force (see the module docstring). Same arguments as ``HFScorer``."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        spec: TaskSpec,
        *,
        model_id: str = "model",
        mode: Mode = "direct",
        length_norm: bool = False,
        cache: ScoreCache | None = None,
        calibrate: bool = False,
    ) -> None:
        super().__init__(spec, cache=cache, calibrate=calibrate)
        self.model = model
        self.model_id = model_id
        self.mode = mode
        self.length_norm = length_norm
        self.tokens = Tokens(tokenizer)
        self.max_length = context_window(model, tokenizer)
        self.device = next(model.parameters()).device
        self.model_fingerprint = model_fingerprint(model)

    @property
    def fingerprint(self) -> str:
        return f"ref:{self.model_fingerprint}:{self.mode}:{int(self.length_norm)}"

    def _compute_many(self, groups: Sequence[tuple[Sequence[Example], Sequence[Example]]]) -> list[np.ndarray]:
        """Every prompt under the context-window rule (one more column: demonstrations dropped)."""
        full = [[self._row_length(demos, q) for q in queries] for demos, queries in groups]
        return self._within_window(groups, full, self._row_length,
                                   lambda todo: [self._compute(d, q) for d, q in todo], limit=self.max_length)

    def _row_length(self, demos: Sequence[Example], query: Example) -> int:
        """Tokens of the row's longest (context, continuation) sequence."""
        texts = scoring_texts(self.spec, demos, [query], mode=self.mode)[0]
        return max(len(self.tokens.bos) + sum(map(len, self.tokens.encode([ctx, cont]))) for ctx, cont in texts)

    @torch.inference_mode()
    def _compute(self, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        out = np.zeros((len(queries), len(self.spec.labels)))
        for i, per_label in enumerate(scoring_texts(self.spec, demos, queries, mode=self.mode)):
            for j, (context, cont) in enumerate(per_label):
                ctx_ids = self.tokens.bos + self.tokens.encode([context])[0]
                cont_ids = self.tokens.encode([cont])[0]
                ids = torch.tensor([ctx_ids + cont_ids], device=self.device)
                logits = self.model(input_ids=ids).logits[0].float()  # (T, V): every position
                self.stats.forward_tokens += ids.shape[1]
                logp = torch.log_softmax(logits[len(ctx_ids) - 1 : -1], dim=-1)
                total = logp.gather(1, torch.tensor(cont_ids, device=self.device)[:, None]).sum().item()
                out[i, j] = total / len(cont_ids) if self.length_norm else total
        return out
