"""The OpenAI-compatible scorer: label log-probs from a ``/v1/completions`` endpoint.

:class:`OpenAICompletionsScorer` sends every (query, label) prompt, i.e. the full text
``context + continuation``, to a completions endpoint and reads the log-probs the server gives for the
prompt's own tokens (wire formats: :mod:`rl_select.lm.openai.wire`; HTTP and retries:
:mod:`rl_select.lm.openai.transport`).

``logprob_style="auto"`` (the default) tries echo on the first batch and falls back to the vLLM style
when the response lacks prompt log-probs (or the server rejects ``echo`` with HTTP 400/422); the style
that worked is kept for the scorer's life. ``"auto"`` and ``"echo"`` also detect a server that echoes
log-probs one token late (llama-cpp-python) and switch to ``"echo_shifted"``; there a prompt with a
continuation token outside the top ``shifted_top_logprobs`` is asked again alone for the top
:data:`~rl_select.lm.openai.wire.SHIFTED_TOP_LOGPROBS_RETRY`, and a token outside those is a clear
error (never a silent zero). A server that gives no prompt log-probs (a chat-only API, a llama.cpp
build without echo) is refused with one clear error rather than scored as zeros.

Requests carry up to ``batch_size`` prompts (a JSON list) and run on up to ``max_concurrency`` threads.
A server that refuses lists (llama-cpp-python's answers HTTP 500) is detected on the first request and
then sent one prompt per request. Query rows are written to the score cache as soon as all their
labels are in, so a run that fails half way keeps what it got, and the rerun asks the server only for
the rest.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rl_select.errors import ModelError
from rl_select.lm.base import CachedScorer
from rl_select.lm.cache import ScoreCache, prefix_digest, query_key
from rl_select.lm.openai import wire
from rl_select.lm.openai.transport import Rejected, StatusError, Transport
from rl_select.prompts import Mode, scoring_texts
from rl_select.tasks import TaskSpec
from rl_select.types import Example

LogprobStyle = Literal["auto", "echo", "echo_shifted", "vllm"]
#: ``(summed log-prob of a continuation, its token count)``.
Score = tuple[float, int]

#: Environment variable read for the base URL when none is passed.
BASE_URL_ENV = "RL_SELECT_BASE_URL"
#: Environment variable read for the model name when none is passed.
MODEL_ENV = "RL_SELECT_MODEL"
#: HTTP statuses with which servers without list support answer a list of prompts.
LIST_REFUSAL_STATUSES = (500, 501)


class ListRefused(ModelError):
    """A first request with a list of prompts failed the way servers without list support fail."""


@dataclass(frozen=True)
class _Prompt:
    """One (row, label) prompt: ``text = context + continuation``."""

    row: int
    col: int
    text: str
    n_context: int


class OpenAICompletionsScorer(CachedScorer):
    """Label log-probs from an OpenAI-compatible ``/v1/completions`` server (vLLM, llama.cpp, OpenAI).

    See the module docstrings for the wire formats, the token rule and the retry policy.

    Args:
        spec: Task specification.
        base_url: Server root, e.g. ``http://127.0.0.1:8000`` or ``.../v1``; default ``$RL_SELECT_BASE_URL``.
        model: Model name as the server knows it; default ``$RL_SELECT_MODEL``.
        api_key: Bearer token; default ``$RL_SELECT_API_KEY``, then ``$OPENAI_API_KEY``, else none sent.
        mode: ``"direct"`` (P(label | input)) or ``"channel"`` (P(input | label)).
        length_norm: Divide each summed log-prob by its token count.
        cache: Optional on-disk :class:`ScoreCache`.
        calibrate: Apply contextual calibration.
        max_concurrency: Most requests in flight at once.
        timeout: Seconds allowed for connecting and for each read of one response.
        max_retries: Retries of one request after a transient failure (so ``max_retries + 1`` tries).
        backoff: First back-off in seconds; doubles per retry (capped), times a jitter in [0.5, 1).
        batch_size: Prompts per request.
        logprob_style: ``"auto"``, ``"echo"``, ``"echo_shifted"`` or ``"vllm"``.
        shifted_top_logprobs: Top log-probs asked per token in the ``"echo_shifted"`` style.
        seed: Seed of the back-off jitter.

    Attributes:
        transport: The HTTP side (:class:`~rl_select.lm.openai.transport.Transport`).
    """

    def __init__(
        self,
        spec: TaskSpec,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        mode: Mode = "direct",
        length_norm: bool = False,
        cache: ScoreCache | None = None,
        calibrate: bool = False,
        max_concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        batch_size: int = 16,
        logprob_style: LogprobStyle = "auto",
        shifted_top_logprobs: int = wire.SHIFTED_TOP_LOGPROBS,
        seed: int = 0,
    ) -> None:
        super().__init__(spec, cache=cache, calibrate=calibrate)
        if mode not in ("direct", "channel"):
            raise ModelError(f"unknown scoring mode {mode!r}; expected 'direct' or 'channel'")
        if logprob_style not in ("auto", "echo", "echo_shifted", "vllm"):
            raise ModelError(f"unknown logprob_style {logprob_style!r}; expected 'auto', 'echo', 'echo_shifted' or "
                             f"'vllm'")
        if int(max_concurrency) < 1 or int(batch_size) < 1 or int(max_retries) < 0:
            raise ModelError(
                f"bad request limits (max_concurrency={max_concurrency}, batch_size={batch_size}, "
                f"max_retries={max_retries}); expected max_concurrency >= 1, batch_size >= 1, max_retries >= 0"
            )
        if not float(timeout) > 0 or float(backoff) < 0:
            raise ModelError(f"bad timeout {timeout!r} / backoff {backoff!r}; expected timeout > 0 and backoff >= 0")
        base_url = base_url or os.environ.get(BASE_URL_ENV)
        if not base_url:
            raise ModelError(f"no base URL for the OpenAI-compatible server; pass one or set ${BASE_URL_ENV}")
        model = model or os.environ.get(MODEL_ENV)
        if not model:
            raise ModelError(f"no model name for the server at {base_url!r}; pass one or set ${MODEL_ENV}")
        self.model = str(model)
        self.transport = Transport(base_url, model=self.model, api_key=api_key, timeout=timeout,
                                   max_retries=max_retries, backoff=backoff, seed=seed)
        self.mode = mode
        self.length_norm = bool(length_norm)
        self.max_concurrency = int(max_concurrency)
        self.batch_size = int(batch_size)
        self.logprob_style = logprob_style
        self.shifted_top_logprobs = int(shifted_top_logprobs)
        self._style: wire.Style | None = None if logprob_style == "auto" else logprob_style
        self._shift_checked = logprob_style in ("echo_shifted", "vllm")
        self._lists_ok: bool | None = None  # does the server take a list of prompts? (None: not asked yet)
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        return f"openai:{self.base_url}:{self.model}:{self.mode}:{int(self.length_norm)}"

    @property
    def style(self) -> str | None:
        """The response style in use (``None`` until ``"auto"`` has seen a response)."""
        return self._style

    @property
    def base_url(self) -> str:
        """The server root as shown in the fingerprint and messages (no query string)."""
        return self.transport.base_url

    @property
    def endpoint(self) -> str:
        """The completions URL requests go to."""
        return self.transport.endpoint

    @property
    def timeout(self) -> float:
        """Seconds allowed for connecting and for each read of one response."""
        return self.transport.timeout

    @property
    def max_retries(self) -> int:
        """Retries of one request after a transient failure."""
        return self.transport.max_retries

    @property
    def requests(self) -> int:
        """HTTP requests sent (retries included)."""
        return self.transport.requests

    @property
    def retries(self) -> int:
        """Of those, retries after a transient failure."""
        return self.transport.retries

    def __repr__(self) -> str:
        key = "'***'" if self.transport.has_key else "None"
        return (
            f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, mode={self.mode!r}, "
            f"length_norm={self.length_norm}, api_key={key}, max_concurrency={self.max_concurrency}, "
            f"batch_size={self.batch_size}, logprob_style={self.logprob_style!r})"
        )

    # -- scoring ------------------------------------------------------------------------------------

    def _prompts(self, demos: Sequence[Example], queries: Sequence[Example]) -> list[_Prompt]:
        """Every (query, label) prompt, query-major so rows finish early. Length ``n_queries * n_labels``."""
        out: list[_Prompt] = []
        for i, per_label in enumerate(scoring_texts(self.spec, demos, queries, mode=self.mode)):
            for j, (ctx, cont) in enumerate(per_label):
                if not cont:
                    raise ModelError("a label continuation or channel target rendered to zero characters; "
                                     "check the template and verbalisers")
                out.append(_Prompt(i, j, ctx + cont, len(ctx)))
        return out

    def _compute(self, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        """Label log-probs of ``queries`` after ``demos``. Shape ``(len(queries), n_labels)``.

        Rows are stored in the score cache (when there is one) as soon as all their labels are in, so a
        failure half way keeps them; the base class then stores the whole result again on success.
        """
        n_labels = len(self.spec.labels)
        prompts = self._prompts(demos, queries)
        batches = [prompts[s : s + self.batch_size] for s in range(0, len(prompts), self.batch_size)]
        result = np.zeros((len(queries), n_labels))
        left = np.full(len(queries), n_labels)
        keys: list[str] | None = None
        if self.cache is not None:
            prefix = prefix_digest(self.fingerprint, self.spec.digest_fields(), demos)
            keys = [query_key(prefix, q) for q in queries]

        def take(batch: list[_Prompt], scores: list[Score]) -> None:
            done: list[int] = []
            for p, (total, n_tok) in zip(batch, scores):
                result[p.row, p.col] = total / n_tok if self.length_norm else total
                left[p.row] -= 1
                if left[p.row] == 0:
                    done.append(p.row)
            if keys is not None and done and self.cache is not None:
                self.cache.put_many((keys[r], result[r].copy()) for r in done)

        self._run(batches, take)
        return result

    def _run(self, batches: list[list[_Prompt]], take: Callable[[list[_Prompt], list[Score]], None]) -> None:
        """Score every batch (concurrently), handing each result to ``take`` in this thread."""
        if not batches:
            return
        self.transport.resume()
        todo = list(batches)
        if self._style is None or self._lists_ok is None:  # settle style and list support before fanning out
            todo = self._settle(todo, take)
        if not todo:
            return
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(todo)), thread_name_prefix="rl-openai")
        try:
            futures: dict[Future, list[_Prompt]] = {pool.submit(self._score_batch, b): b for b in todo}
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

    def _settle(self, todo: list[list[_Prompt]],
                take: Callable[[list[_Prompt], list[Score]], None]) -> list[list[_Prompt]]:
        """Score the first batch alone, learning the response style and whether lists of prompts work.

        A server that refuses a list of prompts (llama-cpp-python's server answers HTTP 500; others 400,
        or one choice for the list) is asked again with the first prompt alone, then with the rest of the
        batch as a list: when the one prompt works and the list fails again, every later request carries
        one prompt (``batch_size`` becomes 1, with a warning); a list that works the second time was a
        transient failure. Returns the batches still to score.
        """
        first = todo.pop(0)
        if len(first) == 1 or self._lists_ok is not None:
            take(first, self._score_batch(first))
            if len(first) > 1:
                self._lists_ok = True
            return todo
        try:
            scores = self._score_batch(first, probe=True)
        except ListRefused as list_error:
            try:
                take(first[:1], self._score_batch(first[:1]))
            except ModelError:
                raise list_error from None
            if len(first) > 2:
                try:
                    scores = self._score_batch(first[1:], probe=True)
                except ListRefused:
                    pass
                else:  # the first refusal was transient
                    self._lists_ok = True
                    take(first[1:], scores)
                    return todo
            self._lists_ok = False
            self.batch_size = 1
            warnings.warn(
                f"{self.base_url} refused a list of {len(first)} prompts ({list_error}); sending one prompt per "
                f"request from now on (set batch_size=1 to skip this probe)",
                RuntimeWarning, stacklevel=4,
            )
            rest = first[1:] + [p for b in todo for p in b]
            return [[p] for p in rest]
        self._lists_ok = True
        take(first, scores)
        return todo

    def _score_batch(self, batch: list[_Prompt], probe: bool = False) -> list[Score]:
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
            except Rejected as exc:
                raise self.transport.error(f"HTTP {exc}") from None
        reasons: list[str] = []
        for candidate in wire.AUTO_STYLES:
            try:
                scores = self._score_as(candidate, batch, probe)
            except wire.NoPromptLogprobs:
                continue
            except Rejected as exc:
                reasons.append(f"{candidate}: HTTP {exc}")
                continue
            with self._lock:
                if self._style is None:  # (echo may have switched to echo_shifted already)
                    self._style = candidate
            return scores
        said = f" (server said: {'; '.join(reasons)})" if reasons else ""
        raise self.transport.error(wire.NO_PROMPT_LOGPROBS + said)

    def _score_as(self, style: wire.Style, batch: list[_Prompt], probe: bool = False, top: int | None = None
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

    def _echo_is_late(self, batch: list[_Prompt], choices: list[Mapping[str, Any]]) -> bool:
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

    def _post(self, body: dict[str, Any], *, probe: bool = False) -> Any:
        """The decoded answer to ``body``; with ``probe``, an HTTP 500/501 is raised as :class:`ListRefused`."""
        try:
            return self.transport.post(body, fail_fast=LIST_REFUSAL_STATUSES if probe else ())
        except StatusError as exc:
            raise self.transport.error(f"HTTP {exc.status} to a list of {len(body['prompt'])} prompts",
                                       ListRefused) from None

    def _choices(self, response: Any, n: int, *, probe: bool = False) -> list[Mapping[str, Any]]:
        """The response's choices in prompt order (length ``n``); a wrong count on a probe is :class:`ListRefused`."""
        try:
            return wire.ordered_choices(response, n)
        except wire.ChoiceCountError as exc:
            raise self.transport.error(str(exc), ListRefused if probe else ModelError) from None
        except ModelError as exc:
            raise self.transport.error(str(exc)) from None
