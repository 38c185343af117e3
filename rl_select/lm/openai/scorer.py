"""The OpenAI-compatible scorer: label log-probs from a ``/v1/completions`` endpoint.

:class:`OpenAICompletionsScorer` reads label log-probs in one of two ways (wire formats:
:mod:`rl_select.lm.openai.wire`; HTTP and retries: :mod:`rl_select.lm.openai.transport`):

* **next token** (``logprob_style="next_token"``): one request per QUERY with the context alone
  (demonstrations + query, no label), ``max_tokens=1``, ``logprobs=N``, temperature 0; each label's
  log-prob is read from the first generated token's top-``N`` log-probs. Only for direct mode and
  labels whose continuation (``" positive"``) is ONE token of the server's tokenizer. The prompts of
  one demonstration list share their whole prefix and ask no prompt log-probs, so servers with prefix
  caching (vLLM's automatic prefix caching, SGLang's radix cache, llama.cpp's ``cache_prompt``,
  llama-cpp-python's reuse of the previous prompt) encode the demonstrations once.
* **echo** (``"echo"``, ``"echo_shifted"``, ``"vllm"``): one request per (query, label) with the full
  text ``context + continuation``, reading the log-probs the server gives the prompt's own tokens.
  Any continuation (several tokens, channel mode), but vLLM skips its prefix cache for prompt
  log-probs and every label costs a request.

``logprob_style="auto"`` (the default) tries next token first, in direct mode: the first query is sent
alone with ``logprobs=``:data:`~rl_select.lm.openai.wire.NEXT_TOKEN_TOP_LOGPROBS`; a label whose text
is not among its top tokens is asked again with
:data:`~rl_select.lm.openai.wire.NEXT_TOKEN_TOP_LOGPROBS_RETRY`; when every label is there (a top
token's text equals the continuation exactly, leading space included) the scorer keeps next token for
its life. When a label is still absent (it is several tokens on this tokenizer: the warning names a top
token that is a proper prefix of it, when there is one; or the server caps ``logprobs`` below the
retry, answering HTTP 400), the scorer warns and keeps the echo path for its life; so does a server
that gives no next-token log-probs, or refuses the request with HTTP 400/422. Later, a query whose
label falls outside the top ``N`` is asked again alone for more, and one whose label is still absent
(or for which the server generated no token: end of text) has its missing labels scored with echo,
with a warning the first time: never a silent zero. With ``"next_token"`` named explicitly each of
those is a one-line error instead.

On the echo path, ``"auto"`` tries echo on the first batch and falls back to the vLLM style when the
response lacks prompt log-probs (or the server rejects ``echo`` with HTTP 400/422); the style that
worked is kept for the scorer's life. ``"auto"`` and ``"echo"`` also detect a server that echoes
log-probs one token late (llama-cpp-python) and switch to ``"echo_shifted"``; there a prompt with a
continuation token outside the top ``shifted_top_logprobs`` is asked again alone for the top
:data:`~rl_select.lm.openai.wire.SHIFTED_TOP_LOGPROBS_RETRY`, and a token outside those is a clear
error (never a silent zero). A server that gives no log-probs at all (a chat-only API, a llama.cpp
build without echo with several-token labels) is refused with one clear error rather than scored as
zeros; a server that is down is a different one-line error ("connection refused; is the server
running at ...?").

**Cache identity.** Every style reads the same quantity, ``log P(continuation | context)`` summed over
the continuation's tokens: next token reads it only for a continuation that is one whole token, which
is exactly what echo reads for it. The styles can differ only by the server's floating-point noise (on
llama-cpp-python with the bundled model, 20 SST-2 queries: the same predictions and bit-identical
log-probs, max |diff| 0.0; ``tests/test_llama_server.py``), so the
:attr:`~OpenAICompletionsScorer.fingerprint` names no style and a cache filled by one serves the others.

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
from rl_select.prompts import Mode, label_continuations, scoring_texts
from rl_select.tasks import TaskSpec
from rl_select.types import Example

LogprobStyle = Literal["auto", "next_token", "echo", "echo_shifted", "vllm"]
LOGPROB_STYLES: tuple[str, ...] = ("auto", "next_token", "echo", "echo_shifted", "vllm")
#: ``(summed log-prob of a continuation, its token count)``.
Score = tuple[float, int]
#: What one prompt yields: ``(label column, score)`` pairs (one pair for an echo prompt, one per label
#: for a next-token prompt).
Scored = list[tuple[int, Score]]

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
    """One echo prompt (``text = context + continuation``, label column ``col``) or one next-token
    prompt (``text`` = the context, ``col = -1``: every label)."""

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
        logprob_style: ``"auto"``, ``"next_token"``, ``"echo"``, ``"echo_shifted"`` or ``"vllm"`` (see the
            module docstring; ``"next_token"`` needs direct mode).
        shifted_top_logprobs: Top log-probs asked per token in the ``"echo_shifted"`` style.
        next_token_top_logprobs: Top log-probs asked for the next token in the ``"next_token"`` style.
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
        next_token_top_logprobs: int = wire.NEXT_TOKEN_TOP_LOGPROBS,
        seed: int = 0,
    ) -> None:
        super().__init__(spec, cache=cache, calibrate=calibrate)
        if mode not in ("direct", "channel"):
            raise ModelError(f"unknown scoring mode {mode!r}; expected 'direct' or 'channel'")
        if logprob_style not in LOGPROB_STYLES:
            raise ModelError(f"unknown logprob_style {logprob_style!r}; expected one of "
                             f"{', '.join(repr(x) for x in LOGPROB_STYLES)}")
        if logprob_style == "next_token" and mode != "direct":
            raise ModelError("logprob_style='next_token' scores direct mode only (channel mode scores the query "
                             "text, several tokens); use 'auto' or an echo style")
        if int(next_token_top_logprobs) < 1 or int(shifted_top_logprobs) < 1:
            raise ModelError(f"bad top log-probs (next_token_top_logprobs={next_token_top_logprobs}, "
                             f"shifted_top_logprobs={shifted_top_logprobs}); expected >= 1")
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
        self.next_token_top_logprobs = int(next_token_top_logprobs)
        #: Query rows whose missing labels were scored with echo on the next-token path.
        self.echo_fallbacks = 0
        self._style: wire.Style | None = None if logprob_style in ("auto", "next_token") else logprob_style
        self._shift_checked = logprob_style in ("echo_shifted", "vllm")
        # next token in use? None: not settled yet (direct mode, "auto" or "next_token"); False: echo path
        self._next: bool | None = None if logprob_style in ("auto", "next_token") and mode == "direct" else False
        self._next_said = ""  # why "auto" left next token (quoted when the echo path then finds no log-probs)
        self._retry_refused = False  # the server refused NEXT_TOKEN_TOP_LOGPROBS_RETRY (HTTP 400/422)
        self._warned_fallback = False
        self._lists_ok: bool | None = None  # does the server take a list of prompts? (None: not asked yet)
        self._lock = threading.Lock()

    @property
    def fingerprint(self) -> str:
        """Server, model, mode and length normalisation; no log-prob style: every style reads the same
        quantity (see "Cache identity" in the module docstring), so their cached rows are shared."""
        return f"openai:{self.base_url}:{self.model}:{self.mode}:{int(self.length_norm)}"

    @property
    def style(self) -> str | None:
        """The style in use: ``"next_token"`` or an echo style (``None`` until ``"auto"`` has seen a response)."""
        return "next_token" if self._next else self._style

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

    def _compute(self, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        """Label log-probs of ``queries`` after ``demos``. Shape ``(len(queries), n_labels)``.

        Rows are stored in the score cache (when there is one) as soon as all their labels are in, so a
        failure half way keeps them; the base class then stores the whole result again on success.
        """
        n_labels = len(self.spec.labels)
        texts = scoring_texts(self.spec, demos, queries, mode=self.mode)
        for per_label in texts:
            if not all(cont for _, cont in per_label):
                raise ModelError("a label continuation or channel target rendered to zero characters; "
                                 "check the template and verbalisers")
        result = np.zeros((len(queries), n_labels))
        left = np.full(len(queries), n_labels)
        keys: list[str] | None = None
        if self.cache is not None:
            prefix = prefix_digest(self.fingerprint, self.spec.digest_fields(), demos)
            keys = [query_key(prefix, q) for q in queries]

        def take(batch: list[_Prompt], scored: list[Scored]) -> None:
            done: list[int] = []
            for p, pairs in zip(batch, scored):
                for col, (total, n_tok) in pairs:
                    result[p.row, col] = total / n_tok if self.length_norm else total
                left[p.row] -= len(pairs)
                if left[p.row] == 0:
                    done.append(p.row)
            if keys is not None and done and self.cache is not None:
                self.cache.put_many((keys[r], result[r].copy()) for r in done)

        contexts = [_Prompt(i, -1, per_label[0][0], len(per_label[0][0])) for i, per_label in enumerate(texts)]
        if self._next is None and contexts:
            self.transport.resume()
            self._settle_next(contexts, take)
        todo = [i for i in range(len(queries)) if left[i] > 0]
        if self._next:
            prompts = [contexts[i] for i in todo]
            score: Callable[[list[_Prompt], bool], list[Scored]] = self._score_next_batch
        else:  # every (row, label) prompt, query-major so rows finish early
            prompts = [_Prompt(i, j, ctx + cont, len(ctx)) for i in todo for j, (ctx, cont) in enumerate(texts[i])]
            score = self._score_echo_batch
        batches = [prompts[s : s + self.batch_size] for s in range(0, len(prompts), self.batch_size)]
        self._run(batches, take, score)
        return result

    def _run(self, batches: list[list[_Prompt]], take: Callable[[list[_Prompt], list[Scored]], None],
             score: Callable[[list[_Prompt], bool], list[Scored]]) -> None:
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
            futures: dict[Future, list[_Prompt]] = {pool.submit(score, b, False): b for b in todo}
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

    def _settle(self, todo: list[list[_Prompt]], take: Callable[[list[_Prompt], list[Scored]], None],
                score: Callable[[list[_Prompt], bool], list[Scored]]) -> list[list[_Prompt]]:
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
                f"{self.base_url} refused a list of {len(first)} prompts ({list_error}); sending one prompt per "
                f"request from now on (set batch_size=1 to skip this probe)",
                RuntimeWarning, stacklevel=4,
            )
            rest = first[1:] + [p for b in todo for p in b]
            return [[p] for p in rest]
        self._lists_ok = True
        take(first, scores)
        return todo

    # -- the next-token path ------------------------------------------------------------------------

    def _continuations(self) -> list[str]:
        return label_continuations(self.spec)

    def _settle_next(self, contexts: list[_Prompt], take: Callable[[list[_Prompt], list[Scored]], None]) -> None:
        """Decide whether next token scores this task: send queries alone until one answers.

        Sets ``self._next`` to True (every label is one top token) or False (the echo path; with
        ``"next_token"`` named explicitly, a one-line error instead). A query for which the server
        generated no token leaves it undecided; that row's labels are scored with echo.
        """
        explicit = self.logprob_style == "next_token"
        conts = self._continuations()
        for p in contexts:
            if self._next is not None:
                return
            try:
                top = self._next_top(p, self.next_token_top_logprobs)
            except (Rejected, wire.NoNextLogprobs) as exc:
                said = f"HTTP {exc}" if isinstance(exc, Rejected) else "no top_logprobs in the answer"
                if explicit:
                    raise self.transport.error(f"{wire.NO_NEXT_TOKEN_LOGPROBS} ({said})") from None
                with self._lock:
                    self._next, self._next_said = False, said
                return
            if not top:  # no token generated: no distribution to read; this row goes to echo
                take([p], [self._echo_for(p, list(range(len(conts))), "the server generated no token for a query")])
                continue
            found, top, n = self._with_retry(p, top)
            missing = [j for j, v in enumerate(found) if v is None]
            if missing:
                why = self._missing_why(top, [conts[j] for j in missing], n)
                if explicit:
                    raise self.transport.error(f"{why}; use logprob_style='auto' or 'echo' for labels of several "
                                               f"tokens")
                with self._lock:
                    self._next, self._next_said = False, why
                warnings.warn(f"{self.base_url}: {why}; scoring this task with echo (one request per label)",
                              RuntimeWarning, stacklevel=4)
                return
            with self._lock:
                self._next = True
            take([p], [[(j, (float(v), 1)) for j, v in enumerate(found)]])  # type: ignore[arg-type]

    def _next_top(self, p: _Prompt, top: int) -> dict[str, float]:
        """The next-token top log-probs after ``p`` asked alone (raises ``Rejected``, ``NoNextLogprobs``)."""
        response = self.transport.post(wire.next_token_body(self.model, [p.text], top=top))
        choice = self._choices(response, 1)[0]
        self._count_usage(response)
        return wire.next_token_logprobs(choice)

    def _with_retry(self, p: _Prompt, top: dict[str, float]) -> tuple[list[float | None], dict[str, float], int]:
        """Labels' log-probs in ``top``; when one is absent, ``p`` asked again alone for
        :data:`~rl_select.lm.openai.wire.NEXT_TOKEN_TOP_LOGPROBS_RETRY`. Returns ``(found, top, n asked)``."""
        conts = self._continuations()
        found = wire.label_logprobs(top, conts)
        n = self.next_token_top_logprobs
        if all(v is not None for v in found) or n >= wire.NEXT_TOKEN_TOP_LOGPROBS_RETRY or self._retry_refused:
            return found, top, n
        try:
            more = self._next_top(p, wire.NEXT_TOKEN_TOP_LOGPROBS_RETRY)
        except Rejected as exc:  # e.g. vLLM's --max-logprobs (20 by default), OpenAI's 5
            with self._lock:
                self._retry_refused = True
            warnings.warn(f"{self.base_url} refused logprobs={wire.NEXT_TOKEN_TOP_LOGPROBS_RETRY} (HTTP {exc}); a "
                          f"label outside the top {n} next tokens is scored with echo", RuntimeWarning, stacklevel=2)
            return found, top, n
        except wire.NoNextLogprobs:
            raise self.transport.error(wire.NO_NEXT_TOKEN_LOGPROBS) from None
        if not more:
            return found, top, n
        return wire.label_logprobs(more, conts), more, wire.NEXT_TOKEN_TOP_LOGPROBS_RETRY

    @staticmethod
    def _missing_why(top: Mapping[str, float], missing: list[str], n: int) -> str:
        """One line on labels absent from a next-token distribution."""
        said = f"label continuation(s) {', '.join(repr(c) for c in missing)} not among the top {n} next tokens"
        prefixes = [(c, wire.prefix_token(top, c)) for c in missing]
        shown = [f"{t!r} is a proper prefix of {c!r}" for c, t in prefixes if t is not None]
        if shown:
            said += f" ({'; '.join(shown)}: several tokens on this server's tokenizer)"
        return said

    def _score_next_batch(self, batch: list[_Prompt], probe: bool = False) -> list[Scored]:
        """Every label's score for each context in ``batch`` from one next-token request.

        A query with a label outside the top ``next_token_top_logprobs`` is asked again alone for more; a
        label still absent is scored with echo (:meth:`_echo_for`).
        """
        body = wire.next_token_body(self.model, [p.text for p in batch], top=self.next_token_top_logprobs)
        try:
            response = self._post(body, probe=probe)
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

    def _echo_for(self, p: _Prompt, cols: list[int], why: str) -> Scored:
        """Labels ``cols`` of next-token prompt ``p`` scored with echo (``"auto"``); with ``"next_token"``
        named explicitly, a one-line error saying ``why``."""
        if self.logprob_style == "next_token":
            raise self.transport.error(f"{why}; logprob_style='auto' scores such labels with echo")
        with self._lock:
            self.echo_fallbacks += 1
            first, self._warned_fallback = not self._warned_fallback, True
        if first:
            warnings.warn(f"{self.base_url}: {why}; scoring its missing labels with echo (warned once)",
                          RuntimeWarning, stacklevel=2)
        conts = self._continuations()
        prompts = [_Prompt(p.row, j, p.text + conts[j], len(p.text)) for j in cols]
        batches = [prompts] if self._lists_ok else [[q] for q in prompts]
        try:
            return [pair for b in batches for scored in self._score_echo_batch(b) for pair in scored]
        except ModelError as exc:
            if wire.NO_PROMPT_LOGPROBS not in str(exc):
                raise
            raise self.transport.error(f"{why}, and the server gives no prompt log-probs to score it with echo "
                                       f"either") from None

    def _count_usage(self, response: Any) -> None:
        """Add the response's ``usage.prompt_tokens`` (when given) to the spend counters."""
        usage = response.get("usage") if isinstance(response, Mapping) else None
        n = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            with self._lock:
                self.stats.forward_tokens += n

    # -- the echo path ------------------------------------------------------------------------------

    def _score_echo_batch(self, batch: list[_Prompt], probe: bool = False) -> list[Scored]:
        """:meth:`_score_batch` as ``(column, score)`` pairs per prompt."""
        return [[(p.col, sc)] for p, sc in zip(batch, self._score_batch(batch, probe))]

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
        if self._next_said:
            reasons.insert(0, f"next_token: {self._next_said}")
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
