"""Requests in batches: lists of prompts, concurrency, and the probe for servers that refuse lists.

:class:`Batching` is one part of :class:`~rl_select.lm.openai.scorer.OpenAICompletionsScorer` (a mixin): it
sends batches of :class:`Prompt` on up to ``max_concurrency`` threads, hands each batch's scores back in the
calling thread, and learns on the first request whether the server takes a JSON list of prompts.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from rl_select.errors import ModelError
from rl_select.lm.base import ScorerStats
from rl_select.lm.openai import wire
from rl_select.lm.openai.transport import StatusError, Transport

#: ``(summed log-prob of a continuation, its token count)``.
Score = tuple[float, int]
#: What one prompt yields: ``(label column, score)`` pairs (one pair for an echo prompt, one per label
#: for a next-token prompt).
Scored = list[tuple[int, Score]]
#: HTTP statuses with which servers without list support answer a list of prompts.
LIST_REFUSAL_STATUSES = (500, 501)


class ListRefused(ModelError):
    """A first request with a list of prompts failed the way servers without list support fail.

    Attributes:
        reason: What failed, without the server's name (for the warning that follows).
    """

    reason = ""


@dataclass(frozen=True)
class Prompt:
    """One echo prompt (``text = context + continuation``, label column ``col``) or one next-token
    prompt (``text`` = the context, ``col = -1``: every label)."""

    row: int
    col: int
    text: str
    n_context: int


Take = Callable[[list[Prompt], list[Any]], None]
"""Receives a batch and its scores (a :data:`Scored` per prompt, or what the window rule puts instead)."""
ScoreFn = Callable[[list[Prompt], bool], list[Any]]
"""Scores a batch; the flag: the first request with a list of prompts (a refusal is :class:`ListRefused`)."""


class Batching:
    """Batches of prompts to the server, concurrently (a part of the scorer; see the module docstring)."""

    transport: Transport
    stats: ScorerStats
    base_url: str
    batch_size: int
    max_concurrency: int
    _lists_ok: bool | None
    _next: bool | None
    _style: str | None
    _lock: threading.Lock

    def _run(self, batches: list[list[Prompt]], take: Take, score: ScoreFn) -> None:
        """Score every batch with ``score`` (concurrently), handing each result to ``take`` in this thread."""
        if not batches:
            return
        self.transport.resume()
        todo = list(batches)
        if self._lists_ok is None or (not self._next and self._style is None):
            todo = self._settle(todo, take, score)  # settle style and list support before fanning out
        if not todo:
            return
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(todo)), thread_name_prefix="rl-openai")
        try:
            futures: dict[Future, list[Prompt]] = {pool.submit(score, b, False): b for b in todo}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in finished:
                    if fut.exception() is None:
                        take(futures[fut], fut.result())
                for fut in finished:
                    if fut.exception() is not None:
                        self.transport.halt()
                        # keep what the other in-flight requests bring back before raising
                        for other in pending:
                            other.cancel()
                        for other in wait(pending).done:
                            if not other.cancelled() and other.exception() is None:
                                take(futures[other], other.result())
                        raise fut.exception()  # type: ignore[misc]
        finally:
            self.transport.halt()
            pool.shutdown(wait=True, cancel_futures=True)

    def _settle(self, todo: list[list[Prompt]], take: Take, score: ScoreFn) -> list[list[Prompt]]:
        """Score the first batch alone, learning the response style and whether lists of prompts work.

        A server that refuses a list of prompts (llama-cpp-python's server answers HTTP 500; others 400,
        or one choice for the list) is asked again with the first prompt alone, then with the rest of the
        batch as a list: when the one prompt works and the list fails again, every later request carries
        one prompt (``batch_size`` becomes 1, with a warning); a list that works the second time was a
        transient failure. Returns the batches still to score.
        """
        first = todo.pop(0)
        if len(first) == 1 or self._lists_ok is not None:
            take(first, score(first, False))
            if len(first) > 1:
                self._lists_ok = True
            return todo
        try:
            scores = score(first, True)
        except ListRefused as list_error:
            try:
                take(first[:1], score(first[:1], False))
            except ModelError:
                raise list_error from None
            if len(first) > 2:
                try:
                    scores = score(first[1:], True)
                except ListRefused:
                    pass
                else:  # the first refusal was transient
                    self._lists_ok = True
                    take(first[1:], scores)
                    return todo
            self._lists_ok = False
            self.batch_size = 1
            warnings.warn(
                f"{self.base_url} refused a list of {len(first)} prompts ({list_error.reason}); sending one prompt "
                f"per request from now on (batch_size=1 skips this probe)",
                RuntimeWarning, stacklevel=4,
            )
            rest = first[1:] + [p for b in todo for p in b]
            return [[p] for p in rest]
        self._lists_ok = True
        take(first, scores)
        return todo


    def _post(self, body: dict[str, Any], *, probe: bool = False) -> Any:
        """The decoded answer to ``body``; with ``probe``, an HTTP 500/501 is raised as :class:`ListRefused`."""
        try:
            return self.transport.post(body, fail_fast=LIST_REFUSAL_STATUSES if probe else ())
        except StatusError as exc:
            raise self._list_refused(f"HTTP {exc.status} to a list of {len(body['prompt'])} prompts") from None

    def _choices(self, response: Any, n: int, *, probe: bool = False) -> list[Mapping[str, Any]]:
        """The response's choices in prompt order (length ``n``); a wrong count on a probe is :class:`ListRefused`."""
        try:
            return wire.ordered_choices(response, n)
        except wire.ChoiceCountError as exc:
            raise (self._list_refused(str(exc)) if probe else self.transport.error(str(exc))) from None
        except ModelError as exc:
            raise self.transport.error(str(exc)) from None

    def _count_usage(self, response: Any) -> None:
        """Add the response's ``usage.prompt_tokens`` (when given) to the spend counters."""
        usage = response.get("usage") if isinstance(response, Mapping) else None
        n = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            with self._lock:
                self.stats.forward_tokens += n

    def _list_refused(self, reason: str) -> ListRefused:
        error = self.transport.error(reason, ListRefused)
        error.reason = reason  # type: ignore[attr-defined]
        return error  # type: ignore[return-value]
