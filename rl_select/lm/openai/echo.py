"""The echo path: a continuation's log-prob read from the log-probs the server gives the prompt's own tokens.

:class:`EchoPath` is one part of :class:`~rl_select.lm.openai.scorer.OpenAICompletionsScorer` (a mixin): one
prompt per (query, label), the ``"auto"`` choice between echo and vLLM's ``prompt_logprobs``, and the
detection of a server that echoes one token late (see the scorer's module docstring for the rules).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from rl_select.errors import ModelError
from rl_select.lm.openai import wire
from rl_select.lm.openai.batching import Batching, Prompt, Score, Scored
from rl_select.lm.openai.transport import ContextOverflow, Rejected


class EchoPath(Batching):
    """Echo scoring (a part of the scorer; see the module docstring)."""

    model: str
    shifted_top_logprobs: int
    _shift_checked: bool
    _next_said: str

    def _score_echo_batch(self, batch: list[Prompt], probe: bool = False) -> list[Scored]:
        """:meth:`_score_batch` as ``(column, score)`` pairs per prompt."""
        return [[(p.col, sc)] for p, sc in zip(batch, self._score_batch(batch, probe))]

    def _score_batch(self, batch: list[Prompt], probe: bool = False) -> list[Score]:
        """``(summed log-prob, token count)`` of each prompt's continuation, in batch order.

        ``probe``: the first request with a list of prompts; an HTTP 500/501 is not retried but raised as
        :class:`ListRefused` (the caller then tries one prompt alone).
        """
        style = self._style
        if style is not None:
            try:
                return self._score_as(style, batch, probe)
            except wire.NoPromptLogprobs:
                raise self.transport.error(wire.NO_PROMPT_LOGPROBS) from None
            except ContextOverflow:
                raise
            except Rejected as exc:
                raise self.transport.error(f"HTTP {exc}") from None
        reasons: list[str] = []
        for candidate in wire.AUTO_STYLES:
            try:
                scores = self._score_as(candidate, batch, probe)
            except wire.NoPromptLogprobs:
                continue
            except ContextOverflow:
                raise
            except Rejected as exc:
                reasons.append(f"{candidate}: HTTP {exc}")
                continue
            with self._lock:
                if self._style is None:  # (echo may have switched to echo_shifted already)
                    self._style = candidate
            return scores
        if self._next_said:
            reasons.insert(0, f"next_token: {self._next_said}")
        said = f" (server said: {wire.clip('; '.join(reasons), 70)})" if reasons else ""
        raise self.transport.error(wire.NO_PROMPT_LOGPROBS + said)

    def _score_as(self, style: wire.Style, batch: list[Prompt], probe: bool = False, top: int | None = None
                  ) -> list[Score]:
        """One request for ``batch`` in ``style``; ``top``: top log-probs asked in ``"echo_shifted"``."""
        top = top or self.shifted_top_logprobs
        body = wire.request_body(style, self.model, [p.text for p in batch], top=top)
        choices = self._choices(self._post(body, probe=probe), len(batch), probe=probe)
        if style == "echo" and not self._shift_checked and self._echo_is_late(batch, choices):
            return self._score_as("echo_shifted", batch, probe)
        out: list[Score] = []
        n_tokens = 0
        for p, choice in zip(batch, choices):
            try:
                total, n_cont, n_prompt = wire.continuation(style, choice, p.text, p.n_context)
            except wire.NotInTop as exc:
                if top >= wire.SHIFTED_TOP_LOGPROBS_RETRY:
                    raise self.transport.error(str(exc)) from None
                (total, n_cont), = self._score_as(style, [p], probe, top=wire.SHIFTED_TOP_LOGPROBS_RETRY)
                n_prompt = 0  # counted by that call
            except ModelError as exc:
                raise self.transport.error(str(exc)) from None
            out.append((total, n_cont))
            n_tokens += n_prompt
        with self._lock:
            self.stats.forward_tokens += n_tokens
        return out

    def _echo_is_late(self, batch: list[Prompt], choices: list[Mapping[str, Any]]) -> bool:
        """Whether this server echoes log-probs one position late; switches to ``"echo_shifted"`` if so.

        Suspicion (:func:`~rl_select.lm.openai.wire.looks_late`) on this batch is confirmed by one probe
        request (:func:`~rl_select.lm.openai.wire.confirms_late`).
        """
        late = False
        if wire.looks_late(choices, [p.text for p in batch]):
            try:
                probe = self._choices(self._post(wire.probe_body(self.model)), 1)[0]
            except ModelError:
                probe = {}
            late = wire.confirms_late(probe)
        with self._lock:
            self._shift_checked = True
            if late:
                self._style = "echo_shifted"
        if late:
            warnings.warn(
                f"{self.base_url} echoes prompt log-probs one token late (llama-cpp-python, "
                f"abetlen/llama-cpp-python#1983); reading them from its top-{self.shifted_top_logprobs} log-probs "
                f"instead", RuntimeWarning, stacklevel=2,
            )
        return late

