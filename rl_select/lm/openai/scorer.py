"""The OpenAI-compatible scorer: label log-probs from a ``/v1/completions`` endpoint.

:class:`OpenAICompletionsScorer` holds the settings and turns one prompt into requests; each other job is a
part of its own module (:mod:`~rl_select.lm.openai.next_token`, :mod:`~rl_select.lm.openai.echo`,
:mod:`~rl_select.lm.openai.batching`, and :mod:`~rl_select.lm.openai.server_window` for rows over the
server's context window). It reads label log-probs in one of two ways (wire formats:
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
then sent one prompt per request. A row longer than the server's context window follows the rule of
:mod:`rl_select.lm.window` (demonstrations dropped leftmost first; the query alone too long: a failed row);
:mod:`~rl_select.lm.openai.server_window` says how the scorer learns the window and the rows' lengths.

Query rows are written to the score cache as soon as all their labels are in, so a run that fails half
way keeps what it got, and the rerun asks the server only for the rest.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Literal

import numpy as np

from rl_select.errors import ModelError
from rl_select.lm.base import CachedScorer
from rl_select.lm.cache import ScoreCache, prefix_digest, query_key
from rl_select.lm.openai import wire
from rl_select.lm.openai.batching import Prompt, Scored, ScoreFn
from rl_select.lm.openai.server_window import ServerWindow
from rl_select.lm.openai.transport import Transport
from rl_select.prompts import Mode, scoring_texts
from rl_select.tasks import TaskSpec
from rl_select.types import Example

LogprobStyle = Literal["auto", "next_token", "echo", "echo_shifted", "vllm"]
LOGPROB_STYLES: tuple[str, ...] = ("auto", "next_token", "echo", "echo_shifted", "vllm")

#: Environment variable read for the base URL when none is passed.
BASE_URL_ENV = "RL_SELECT_BASE_URL"
#: Environment variable read for the model name when none is passed.
MODEL_ENV = "RL_SELECT_MODEL"


class OpenAICompletionsScorer(ServerWindow, CachedScorer):
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
        self._window: int | None = None  # the server's context window in tokens (None: not known)
        self._window_asked = False  # GET /props, /v1/models sent?
        self._tokenize: str | None = None  # the /tokenize body the server takes ("" none; None: not asked yet)
        self._token_counts: dict[str, int] = {}

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
        """Label log-probs of ``queries`` after ``demos``, ``(len(queries), n_labels)``; NaN in a row whose
        prompt the server refused as longer than its context window (:meth:`_score_rows`)."""
        result, over = self._score_rows(demos, queries)
        result[list(over)] = np.nan
        return result

    def _score_rows(self, demos: Sequence[Example], queries: Sequence[Example]
                    ) -> tuple[np.ndarray, dict[int, wire.Overflow]]:
        """Label log-probs of ``queries`` after ``demos``, and the rows the server refused as over its window.

        Rows are stored in the score cache (when there is one) as soon as all their labels are in, so a
        failure half way keeps them; the base class then stores the whole result again on success.

        Returns:
            ``(result, over)``: ``result`` of shape ``(len(queries), n_labels)``; ``over`` maps each row one of
            whose prompts did not fit the server's context window to what the server said (its labels in
            ``result`` are then meaningless).
        """
        n_labels = len(self.spec.labels)
        texts = scoring_texts(self.spec, demos, queries, mode=self.mode)
        for per_label in texts:
            if not all(cont for _, cont in per_label):
                raise ModelError("a label continuation or channel target rendered to zero characters; "
                                 "check the template and verbalisers")
        result = np.zeros((len(queries), n_labels))
        left = np.full(len(queries), n_labels)
        over: dict[int, wire.Overflow] = {}
        keys: list[str] | None = None
        if self.cache is not None:
            prefix = prefix_digest(self.fingerprint, self.spec.digest_fields(), demos)
            keys = [query_key(prefix, q) for q in queries]

        def take(batch: list[Prompt], scored: list[Scored | wire.Overflow]) -> None:
            done: list[int] = []
            for p, pairs in zip(batch, scored):
                if isinstance(pairs, wire.Overflow):
                    over.setdefault(p.row, pairs)
                    self._learn_window(pairs)
                    continue
                for col, (total, n_tok) in pairs:
                    result[p.row, col] = total / n_tok if self.length_norm else total
                left[p.row] -= len(pairs)
                if left[p.row] == 0:
                    done.append(p.row)
            if keys is not None and done and self.cache is not None:
                self.cache.put_many((keys[r], result[r].copy()) for r in done)

        contexts = [Prompt(i, -1, per_label[0][0], len(per_label[0][0])) for i, per_label in enumerate(texts)]
        if self._next is None and contexts:
            self.transport.resume()
            self._settle_next(contexts, take)
        todo = [i for i in range(len(queries)) if left[i] > 0 and i not in over]
        if self._next:
            prompts = [contexts[i] for i in todo]
            score: ScoreFn = self._score_next_batch
        else:  # every (row, label) prompt, query-major so rows finish early
            prompts = [Prompt(i, j, ctx + cont, len(ctx)) for i in todo for j, (ctx, cont) in enumerate(texts[i])]
            score = self._score_echo_batch
        batches = [prompts[s : s + self.batch_size] for s in range(0, len(prompts), self.batch_size)]
        self._run(batches, take, self._splitting(score))
        return result, over
