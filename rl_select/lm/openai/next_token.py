"""The next-token path: every label of a query read from one request's top log-probs after its context.

:class:`NextTokenPath` is one part of :class:`~rl_select.lm.openai.scorer.OpenAICompletionsScorer` (a mixin):
how ``"auto"`` settles on next token (or leaves it for echo), the retry with more top log-probs, and the echo
fallback for a label that is not among them (see the scorer's module docstring for the rules).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from rl_select.errors import ModelError
from rl_select.lm.openai import wire
from rl_select.lm.openai.batching import Prompt, Scored, Take
from rl_select.lm.openai.echo import EchoPath
from rl_select.lm.openai.transport import ContextOverflow, Rejected
from rl_select.prompts import label_continuations
from rl_select.tasks import TaskSpec


class NextTokenPath(EchoPath):
    """Next-token scoring (a part of the scorer; see the module docstring)."""

    spec: TaskSpec
    model: str
    logprob_style: str
    next_token_top_logprobs: int
    echo_fallbacks: int
    _next_said: str
    _retry_refused: bool
    _warned_fallback: bool

    def _continuations(self) -> list[str]:
        return label_continuations(self.spec)

    def _settle_next(self, contexts: list[Prompt], take: Take) -> None:
        """Decide whether next token scores this task: send queries alone until one answers.

        Sets ``self._next`` to True (every label is one top token) or False (the echo path; with
        ``"next_token"`` named explicitly, a one-line error instead). A query for which the server
        generated no token leaves it undecided; that row's labels are scored with echo.
        """
        for p in contexts:
            if self._next is not None:
                return
            try:
                scored = self._settle_on(p)
            except ContextOverflow as exc:  # this query is over the window: it says nothing about the style
                take([p], [exc.overflow])
                continue
            if scored is not None:
                take([p], [scored])

    def _settle_on(self, p: Prompt) -> Scored | None:
        """One query's scores while settling the style (``None``: the echo path was chosen)."""
        explicit = self.logprob_style == "next_token"
        conts = self._continuations()
        try:
            top = self._next_top(p, self.next_token_top_logprobs)
        except ContextOverflow:
            raise
        except (Rejected, wire.NoNextLogprobs) as exc:
            said = wire.clip(f"HTTP {exc}", 70) if isinstance(exc, Rejected) else "no top_logprobs"
            if explicit:
                raise self.transport.error(f"{wire.NO_NEXT_TOKEN_LOGPROBS} ({said})") from None
            with self._lock:
                self._next, self._next_said = False, said
            return None
        if not top:  # no token generated: no distribution to read; this row goes to echo
            return self._echo_for(p, list(range(len(conts))), "the server generated no token for a query")
        found, top, n = self._with_retry(p, top)
        missing = [j for j, v in enumerate(found) if v is None]
        if missing:
            why = self._missing_why(top, [conts[j] for j in missing], n)
            if explicit:
                raise self.transport.error(f"{why}; use logprob_style='auto' or 'echo'")
            with self._lock:
                self._next, self._next_said = False, why
            warnings.warn(f"{self.base_url}: {why}; scoring this task with echo (one request per label)",
                          RuntimeWarning, stacklevel=5)
            return None
        with self._lock:
            self._next = True
        return [(j, (float(v), 1)) for j, v in enumerate(found)]  # type: ignore[arg-type]

    def _next_top(self, p: Prompt, top: int) -> dict[str, float]:
        """The next-token top log-probs after ``p`` asked alone (raises ``Rejected``, ``NoNextLogprobs``)."""
        response = self.transport.post(wire.next_token_body(self.model, [p.text], top=top))
        choice = self._choices(response, 1)[0]
        self._count_usage(response)
        return wire.next_token_logprobs(choice)

    def _with_retry(self, p: Prompt, top: dict[str, float]) -> tuple[list[float | None], dict[str, float], int]:
        """Labels' log-probs in ``top``; when one is absent, ``p`` asked again alone for
        :data:`~rl_select.lm.openai.wire.NEXT_TOKEN_TOP_LOGPROBS_RETRY`. Returns ``(found, top, n asked)``."""
        conts = self._continuations()
        found = wire.label_logprobs(top, conts)
        n = self.next_token_top_logprobs
        if all(v is not None for v in found) or n >= wire.NEXT_TOKEN_TOP_LOGPROBS_RETRY or self._retry_refused:
            return found, top, n
        try:
            more = self._next_top(p, wire.NEXT_TOKEN_TOP_LOGPROBS_RETRY)
        except ContextOverflow:
            raise
        except Rejected as exc:  # e.g. vLLM's --max-logprobs (20 by default), OpenAI's 5
            with self._lock:
                self._retry_refused = True
            warnings.warn(f"{self.base_url} refused logprobs={wire.NEXT_TOKEN_TOP_LOGPROBS_RETRY} "
                          f"({wire.clip(f'HTTP {exc}', 60)}); a label outside the top {n} next tokens is scored "
                          f"with echo", RuntimeWarning, stacklevel=2)
            return found, top, n
        except wire.NoNextLogprobs:
            raise self.transport.error(wire.NO_NEXT_TOKEN_LOGPROBS) from None
        if not more:
            return found, top, n
        return wire.label_logprobs(more, conts), more, wire.NEXT_TOKEN_TOP_LOGPROBS_RETRY

    @staticmethod
    def _missing_why(top: Mapping[str, float], missing: list[str], n: int) -> str:
        """One short line on labels absent from a next-token distribution: the first label (and how many more),
        and a top token that is a proper prefix of it (evidence that it is several tokens)."""
        first = wire.clip(repr(missing[0]), 24)
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        said = f"label {first}{more} not among the top {n} next tokens"
        prefix = wire.prefix_token(top, missing[0])
        if prefix is not None:
            said += f" ({wire.clip(repr(prefix), 20)} is a proper prefix: several tokens here)"
        return said

    def _score_next_batch(self, batch: list[Prompt], probe: bool = False) -> list[Scored]:
        """Every label's score for each context in ``batch`` from one next-token request.

        A query with a label outside the top ``next_token_top_logprobs`` is asked again alone for more; a
        label still absent is scored with echo (:meth:`_echo_for`).
        """
        body = wire.next_token_body(self.model, [p.text for p in batch], top=self.next_token_top_logprobs)
        try:
            response = self._post(body, probe=probe)
        except ContextOverflow:
            raise
        except Rejected as exc:
            raise self.transport.error(f"HTTP {exc}") from None
        choices = self._choices(response, len(batch), probe=probe)
        self._count_usage(response)
        out: list[Scored] = []
        conts = self._continuations()
        for p, choice in zip(batch, choices):
            try:
                top = wire.next_token_logprobs(choice)
            except wire.NoNextLogprobs:
                raise self.transport.error(wire.NO_NEXT_TOKEN_LOGPROBS) from None
            if not top:
                out.append(self._echo_for(p, list(range(len(conts))), "the server generated no token for a query"))
                continue
            found, top, n = self._with_retry(p, top)
            pairs: Scored = [(j, (float(v), 1)) for j, v in enumerate(found) if v is not None]
            missing = [j for j, v in enumerate(found) if v is None]
            if missing:
                pairs += self._echo_for(p, missing, self._missing_why(top, [conts[j] for j in missing], n))
            out.append(pairs)
        return out

    def _echo_for(self, p: Prompt, cols: list[int], why: str) -> Scored:
        """Labels ``cols`` of next-token prompt ``p`` scored with echo (``"auto"``); with ``"next_token"``
        named explicitly, a one-line error saying ``why``."""
        if self.logprob_style == "next_token":
            raise self.transport.error(f"{why}; logprob_style='auto' scores it with echo")
        with self._lock:
            self.echo_fallbacks += 1
            first, self._warned_fallback = not self._warned_fallback, True
        if first:
            warnings.warn(f"{self.base_url}: {why}; scoring its missing labels with echo (warned once)",
                          RuntimeWarning, stacklevel=2)
        conts = self._continuations()
        prompts = [Prompt(p.row, j, p.text + conts[j], len(p.text)) for j in cols]
        batches = [prompts] if self._lists_ok else [[q] for q in prompts]
        try:
            return [pair for b in batches for scored in self._score_echo_batch(b) for pair in scored]
        except ModelError as exc:
            if wire.NO_PROMPT_LOGPROBS not in str(exc):
                raise
            raise self.transport.error(f"{why}; no prompt log-probs for echo either") from None

