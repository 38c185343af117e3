"""An OpenAI-compatible HTTP backend: label log-probs from a ``/v1/completions`` endpoint.

:class:`OpenAICompletionsScorer` sends every (query, label) prompt, i.e. the full text
``context + continuation``, to a completions endpoint and reads the log-probs the server gives for the
prompt's own tokens. Two response styles are understood:

* ``"echo"`` (OpenAI legacy completions, vLLM, llama.cpp builds that support it): the request asks
  for ``echo: true, logprobs: 1, max_tokens: 1`` and each choice's ``logprobs`` holds
  ``token_logprobs`` and ``text_offset`` (the character offset of every token in the echoed text),
  prompt tokens first, then the one generated token (ignored: it starts at or after the prompt's end).
* ``"vllm"``: vLLM's ``prompt_logprobs: 0`` extension; each choice holds ``prompt_logprobs``, a list
  with ``None`` for the first prompt token and then ``{token_id: {"logprob", "decoded_token"}}`` per
  token. Token spans are recovered from the decoded token texts, counted back from the prompt's end.

* ``"echo_shifted"``: llama-cpp-python's server (0.3.x) echoes each prompt token with the log-prob the
  model gives it one position LATE, i.e. from the distribution that predicts the NEXT token
  (abetlen/llama-cpp-python#1983). Its ``top_logprobs[i]`` is therefore the distribution over token
  ``i + 1``, and the true log-prob of a continuation token is read there; the request asks for the top
  ``shifted_top_logprobs`` entries; a prompt with a continuation token outside them is asked again
  alone for the top ``SHIFTED_TOP_LOGPROBS_RETRY``, and a token outside those is a clear error (never a
  silent zero). ``"auto"`` and ``"echo"`` detect this server (the top-1 token at the prompt's last
  position equals the greedy continuation, confirmed by one tiny probe) and switch to this style.

``"auto"`` (the default) tries echo on the first batch and falls back to the vLLM style when the
response lacks prompt log-probs (or the server rejects ``echo`` with HTTP 400/422); the style that
worked is kept for the scorer's life. A server that gives neither (a chat-only API, a llama.cpp build
without echo) is refused with one clear error rather than scored as zeros.

**Which tokens are the continuation's.** A token belongs to the continuation when it ends after the
context does (``end > len(context)``) and starts before the prompt's end. So a token that straddles
the context/continuation boundary (BPE merged the context's last characters with the continuation's
first ones) is counted, with its whole log-prob: that is the only choice that scores every character
of the continuation, and it is what a token-level scorer would see; the count for length
normalisation includes it too. With the templates of :mod:`rl_select.prompts` the boundary falls before
a space or after a newline, where BPE tokenisers split anyway, so a straddle is rare.

Requests carry up to ``batch_size`` prompts (a JSON list) and run on up to ``max_concurrency`` threads.
A server that refuses lists (llama-cpp-python's answers HTTP 500) is detected on the first request and
then sent one prompt per request.
Each request is retried with exponential back-off and jitter (from a seeded :class:`random.Random`) on
HTTP 429 and 5xx, time-outs and dropped connections, honouring a ``Retry-After`` header (capped).
Query rows are written to the score cache as soon as all their labels are in, so a run that fails half
way keeps what it got, and the rerun asks the server only for the rest.

The API key (argument, else ``$RL_SELECT_API_KEY``, else ``$OPENAI_API_KEY``) goes into the
``Authorization`` header only: never into the fingerprint, the cache, an error message or ``repr``.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rl_select.errors import ModelError
from rl_select.lm.base import CachedScorer
from rl_select.lm.cache import ScoreCache, prefix_digest, query_key
from rl_select.prompts import Mode, scoring_texts
from rl_select.tasks import TaskSpec
from rl_select.types import Example

LogprobStyle = Literal["auto", "echo", "echo_shifted", "vllm"]
#: ``(summed log-prob of a continuation, its token count)``.
Score = tuple[float, int]

#: Environment variables read for the API key, in order.
API_KEY_ENVS: tuple[str, ...] = ("RL_SELECT_API_KEY", "OPENAI_API_KEY")
#: Environment variable read for the base URL when none is passed.
BASE_URL_ENV = "RL_SELECT_BASE_URL"
#: Environment variable read for the model name when none is passed.
MODEL_ENV = "RL_SELECT_MODEL"

NO_PROMPT_LOGPROBS = (
    "this endpoint returned no prompt log-probs; rl-select needs /v1/completions with echo+logprobs or "
    "vLLM's prompt_logprobs (vLLM, llama-cpp-python's server, OpenAI completions models; llama.cpp's own "
    "llama-server does not echo yet); chat-only APIs cannot score labels"
)

#: Tokens generated per request: 1 is accepted everywhere (vLLM refuses 0); the token is ignored.
MAX_TOKENS = 1
#: ``logprobs`` asked for in echo style: llama.cpp reads 0 as "none", so 1.
ECHO_TOP_LOGPROBS = 1
#: Top log-probs asked for per token in the ``"echo_shifted"`` style (where continuation log-probs are read).
SHIFTED_TOP_LOGPROBS = 50
#: A prompt whose continuation is not among those is asked again, alone, with this many.
SHIFTED_TOP_LOGPROBS_RETRY = 1000
#: A prompt whose greedy continuation differs from the token that ends it (" 9" after ","): it tells a
#: server that echoes log-probs one position late from one that does not.
SHIFT_PROBE = "1, 2, 3, 4, 5, 6, 7, 8,"
#: Longest wait taken from a ``Retry-After`` header, and longest back-off, in seconds.
MAX_RETRY_AFTER = 60.0
MAX_BACKOFF = 30.0
#: Characters of a server's error text quoted in a message.
QUOTE_CHARS = 200


class _Secret:
    """A string that never shows itself in ``repr``/``str`` (the API key)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


class _NoPromptLogprobs(Exception):
    """A response without prompt log-probs (internal: triggers the style fallback)."""


class _Retryable(Exception):
    """A transient failure of one HTTP attempt (429/5xx, time-out, dropped connection)."""

    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


class _ListRefused(ModelError):
    """A first request with a list of prompts failed the way servers without list support fail."""


class _NotInTop(ModelError):
    """A continuation token outside the top log-probs a late-echo server gave (``"echo_shifted"``)."""


class _RejectedStyle(Exception):
    """HTTP 400/422: the server refused the request's parameters (e.g. llama.cpp's "no echo")."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would forward the Authorization header to the new host."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


@dataclass(frozen=True)
class _Prompt:
    """One (row, label) prompt: ``text = context + continuation``."""

    row: int
    col: int
    text: str
    n_context: int


def split_base_url(base_url: str) -> tuple[str, str]:
    """The completions endpoint and a display form of a base URL.

    ``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/v1`` all give the endpoint
    ``http://host:8000/v1/completions``. The display form drops the query string (which may hold a key)
    and any trailing ``/``; it is what the fingerprint and messages show.

    Raises:
        ModelError: on a URL that is not http(s), has no host, or carries credentials.
    """
    parts = urllib.parse.urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ModelError(f"bad base URL {_display(parts)!r}; expected http(s)://host[:port][/v1]")
    if parts.username is not None or parts.password is not None:
        raise ModelError(
            "the base URL must not carry credentials; put the API key in $RL_SELECT_API_KEY (or pass api_key)"
        )
    path = parts.path.rstrip("/")
    endpoint_path = path + ("/completions" if path.endswith("/v1") else "/v1/completions")
    endpoint = urllib.parse.urlunsplit((parts.scheme, parts.netloc, endpoint_path, parts.query, ""))
    return endpoint, urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _display(parts: urllib.parse.SplitResult) -> str:
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "") if parts.hostname else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# --- parsing one choice ---------------------------------------------------------------------------


def _is_special(token: Any) -> bool:
    return isinstance(token, str) and len(token) > 2 and token.startswith("<") and token.endswith(">")


def echo_continuation(logprobs: Any, prompt: str, n_context: int, *, echoed_text: Any = None) -> tuple[float, int, int]:
    """Summed log-prob of the continuation from an echo-style ``logprobs`` object.

    Args:
        logprobs: A choice's ``logprobs``: ``token_logprobs`` and ``text_offset`` (equal length), and
            optionally ``tokens``.
        prompt: The prompt sent, ``context + continuation``.
        n_context: ``len(context)`` in characters.
        echoed_text: The choice's ``text`` (checked to start with the prompt when given).

    Returns:
        ``(sum of log-probs, number of continuation tokens, number of prompt tokens)``. A token counts
        when it ends after ``n_context`` and starts before ``len(prompt)`` (see the module docstring).
        A leading special token (``"<s>"``, ``"<|begin_of_text|>"``) that some servers count in the
        offsets but not in the text is skipped and the offsets shifted back.

    Raises:
        _NoPromptLogprobs: when the object holds no prompt tokens' log-probs.
        ModelError: when the continuation would start at the prompt's first token (no log-prob exists).
    """
    if not isinstance(logprobs, Mapping):
        raise _NoPromptLogprobs
    lps, offsets, tokens = logprobs.get("token_logprobs"), logprobs.get("text_offset"), logprobs.get("tokens")
    if not isinstance(lps, list) or not isinstance(offsets, list) or len(lps) != len(offsets) or not lps:
        raise _NoPromptLogprobs
    if isinstance(echoed_text, str) and not echoed_text.startswith(prompt):
        raise _NoPromptLogprobs  # the server did not echo the prompt
    if len(lps) <= MAX_TOKENS:
        raise _NoPromptLogprobs  # generated token(s) only: the prompt was not scored
    try:
        starts = [int(o) for o in offsets]
    except (TypeError, ValueError):
        raise _NoPromptLogprobs from None
    if isinstance(tokens, list) and len(tokens) == len(starts) and len(starts) > 1 \
            and _is_special(tokens[0]) and not prompt.startswith(tokens[0]):
        shift = starts[1]
        starts = [s - shift for s in starts]
    end_of_prompt = len(prompt)
    total, n_cont, n_prompt = 0.0, 0, 0
    for k, start in enumerate(starts):
        if start < 0 or start >= end_of_prompt:
            continue
        n_prompt += 1
        end = starts[k + 1] if k + 1 < len(starts) else end_of_prompt
        if end <= n_context:
            continue
        lp = lps[k]
        if lp is None:
            if k == 0 or start == 0:
                raise ModelError("the scored continuation starts at the prompt's first token, which has no log-prob")
            raise _NoPromptLogprobs
        if not isinstance(lp, (int, float)):
            raise _NoPromptLogprobs
        total += float(lp)
        n_cont += 1
    if n_cont == 0 or n_prompt == 0:
        raise _NoPromptLogprobs
    return total, n_cont, n_prompt


def _prompt_token_spans(logprobs: Mapping[str, Any], prompt: str) -> list[tuple[int, int, int]]:
    """``(index, start, end)`` character spans of the echoed prompt tokens (generated ones dropped)."""
    offsets = logprobs.get("text_offset")
    if not isinstance(offsets, list) or not offsets:
        raise _NoPromptLogprobs
    try:
        starts = [int(o) for o in offsets]
    except (TypeError, ValueError):
        raise _NoPromptLogprobs from None
    spans = []
    for k, start in enumerate(starts):
        if 0 <= start < len(prompt):
            end = starts[k + 1] if k + 1 < len(starts) else len(prompt)
            spans.append((k, start, min(end, len(prompt))))
    return spans


def top1_at_prompt_end(choice: Mapping[str, Any], prompt: str) -> tuple[str | None, str]:
    """``(top-1 token string at the prompt's last token, generated text)`` of an echo choice."""
    lp = choice.get("logprobs")
    text = choice.get("text")
    if not isinstance(lp, Mapping) or not isinstance(text, str) or not text.startswith(prompt):
        return None, ""
    try:
        spans = _prompt_token_spans(lp, prompt)
    except _NoPromptLogprobs:
        return None, ""
    tops = lp.get("top_logprobs")
    if not spans or not isinstance(tops, list) or spans[-1][0] >= len(tops):
        return None, ""
    top = tops[spans[-1][0]]
    if not isinstance(top, Mapping) or not top:
        return None, ""
    best = max(top.items(), key=lambda kv: kv[1] if isinstance(kv[1], (int, float)) else float("-inf"))[0]
    return str(best), text[len(prompt):]


def shifted_echo_continuation(logprobs: Any, prompt: str, n_context: int) -> tuple[float, int, int]:
    """Like :func:`echo_continuation`, for a server whose echo is one position late (``"echo_shifted"``).

    The log-prob of prompt token ``k`` is ``top_logprobs[k - 1][tokens[k]]``: the distribution reported
    at token ``k - 1`` is the one that predicts token ``k``.

    Raises:
        _NoPromptLogprobs: when there are no prompt tokens or top log-probs.
        ModelError: when a continuation token is not among the top log-probs of its position.
    """
    if not isinstance(logprobs, Mapping):
        raise _NoPromptLogprobs
    tokens, tops = logprobs.get("tokens"), logprobs.get("top_logprobs")
    spans = _prompt_token_spans(logprobs, prompt)
    if not isinstance(tokens, list) or not isinstance(tops, list) or len(tokens) != len(tops) or len(spans) < 2:
        raise _NoPromptLogprobs
    total, n_cont = 0.0, 0
    for k, _start, end in spans:
        if end <= n_context:
            continue
        prev = tops[k - 1] if k >= 1 else None
        if k == 0 or not isinstance(prev, Mapping):
            raise ModelError("the scored continuation starts at the prompt's first tokens, which have no log-prob "
                             "on this server")
        lp = prev.get(tokens[k])
        if not isinstance(lp, (int, float)):
            raise _NotInTop(
                f"continuation token {tokens[k]!r} is not among the {len(prev)} top log-probs the server gave at its "
                f"position, and this server (llama-cpp-python) reports no other way to read it; raise "
                f"shifted_top_logprobs or use a server with correct echo (vLLM)"
            )
        total += float(lp)
        n_cont += 1
    if n_cont == 0:
        raise _NoPromptLogprobs
    return total, n_cont, len(spans)


def vllm_continuation(prompt_logprobs: Any, prompt: str, n_context: int) -> tuple[float, int, int]:
    """Summed log-prob of the continuation from vLLM's ``prompt_logprobs``.

    Args:
        prompt_logprobs: ``[None, {token_id: {"logprob": float, "decoded_token": str, ...}}, ...]``, one
            entry per prompt token (the first has no log-prob). With ``prompt_logprobs: 0`` each dict
            holds the prompt token only; otherwise its first entry is taken as the prompt token.
        prompt: The prompt sent, ``context + continuation``.
        n_context: ``len(context)`` in characters.

    Returns:
        ``(sum of log-probs, number of continuation tokens, number of prompt tokens)``. Token spans are
        counted back from the prompt's end with the decoded token texts; the same straddle rule as
        :func:`echo_continuation` applies.

    Raises:
        _NoPromptLogprobs: when there are no prompt log-probs.
        ModelError: when an entry lacks its decoded token, or the continuation reaches the first token.
    """
    if not isinstance(prompt_logprobs, list) or len(prompt_logprobs) < 2:
        raise _NoPromptLogprobs
    end = len(prompt)
    total, n_cont = 0.0, 0
    for k in range(len(prompt_logprobs) - 1, -1, -1):
        if end <= n_context:
            break
        entry = prompt_logprobs[k]
        if entry is None:
            if k == 0:
                raise ModelError("the scored continuation starts at the prompt's first token, which has no log-prob")
            raise _NoPromptLogprobs
        if not isinstance(entry, Mapping) or not entry:
            raise _NoPromptLogprobs
        info = next(iter(entry.values()))
        if not isinstance(info, Mapping) or not isinstance(info.get("logprob"), (int, float)):
            raise _NoPromptLogprobs
        decoded = info.get("decoded_token")
        if not isinstance(decoded, str):
            raise ModelError("vLLM prompt_logprobs lack 'decoded_token'; use logprob_style='echo' with this server")
        total += float(info["logprob"])
        n_cont += 1
        end -= len(decoded)
    if n_cont == 0:
        raise _NoPromptLogprobs
    return total, n_cont, len(prompt_logprobs)


# --- the scorer -----------------------------------------------------------------------------------


class OpenAICompletionsScorer(CachedScorer):
    """Label log-probs from an OpenAI-compatible ``/v1/completions`` server (vLLM, llama.cpp, OpenAI).

    See the module docstring for the wire formats, the token rule and the retry policy.

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
        requests: HTTP requests sent (retries included).
        retries: Of those, retries after a transient failure.
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
        shifted_top_logprobs: int = SHIFTED_TOP_LOGPROBS,
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
        self.endpoint, self.base_url = split_base_url(base_url)
        self.model = str(model)
        key = api_key if api_key is not None else next((os.environ[e] for e in API_KEY_ENVS if os.environ.get(e)), "")
        self._api_key = _Secret(key)
        self.mode = mode
        self.length_norm = bool(length_norm)
        self.max_concurrency = int(max_concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.batch_size = int(batch_size)
        self.logprob_style = logprob_style
        self.requests = 0
        self.retries = 0
        self.shifted_top_logprobs = int(shifted_top_logprobs)
        self._style: Literal["echo", "echo_shifted", "vllm"] | None = (
            None if logprob_style == "auto" else logprob_style)
        self._shift_checked = logprob_style in ("echo_shifted", "vllm")
        self._lists_ok: bool | None = None  # does the server take a list of prompts? (None: not asked yet)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._opener = urllib.request.build_opener(_NoRedirect)

    @property
    def fingerprint(self) -> str:
        return f"openai:{self.base_url}:{self.model}:{self.mode}:{int(self.length_norm)}"

    @property
    def style(self) -> str | None:
        """The response style in use (``None`` until ``"auto"`` has seen a response)."""
        return self._style

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
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
        self._stop.clear()
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
                        self._stop.set()
                        # keep what the other in-flight requests bring back before raising
                        for other in pending:
                            other.cancel()
                        for other in wait(pending).done:
                            if not other.cancelled() and other.exception() is None:
                                take(futures[other], other.result())
                        raise fut.exception()  # type: ignore[misc]
        finally:
            self._stop.set()
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
        except _ListRefused as list_error:
            try:
                take(first[:1], self._score_batch(first[:1]))
            except ModelError:
                raise list_error from None
            if len(first) > 2:
                try:
                    scores = self._score_batch(first[1:], probe=True)
                except _ListRefused:
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

        ``probe``: the first request with a list of prompts; HTTP errors are not retried (the caller then
        tries one prompt alone).
        """
        style = self._style
        if style is not None:
            try:
                return self._score_as(style, batch, probe)
            except _NoPromptLogprobs:
                raise self._error(NO_PROMPT_LOGPROBS) from None
            except _RejectedStyle as exc:
                raise self._error(f"HTTP {exc.reason}") from None
        reasons: list[str] = []
        for candidate in ("echo", "vllm"):
            try:
                scores = self._score_as(candidate, batch, probe)
            except _NoPromptLogprobs:
                continue
            except _RejectedStyle as exc:
                reasons.append(f"{candidate}: HTTP {exc.reason}")
                continue
            with self._lock:
                if self._style is None:  # (echo may have switched to echo_shifted already)
                    self._style = candidate
            return scores
        said = f" (server said: {'; '.join(reasons)})" if reasons else ""
        raise self._error(NO_PROMPT_LOGPROBS + said)

    def _score_as(self, style: str, batch: list[_Prompt], probe: bool = False, top: int | None = None
                  ) -> list[Score]:
        """One request for ``batch`` in ``style``; ``top``: top log-probs asked in ``"echo_shifted"``."""
        top = top or self.shifted_top_logprobs
        payload: dict[str, Any] = {
            "model": self.model,
            "prompt": [p.text for p in batch],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        if style == "echo":
            payload.update(echo=True, logprobs=ECHO_TOP_LOGPROBS)
        elif style == "echo_shifted":
            payload.update(echo=True, logprobs=top)
        else:
            payload.update(prompt_logprobs=0)
        choices = self._choices(self._post(payload, probe=probe), len(batch), probe=probe)
        if style == "echo" and not self._shift_checked and self._echo_is_late(batch, choices):
            return self._score_as("echo_shifted", batch, probe)
        out: list[Score] = []
        n_tokens = 0
        for p, choice in zip(batch, choices):
            try:
                if style == "echo":
                    total, n_cont, n_prompt = echo_continuation(
                        choice.get("logprobs"), p.text, p.n_context, echoed_text=choice.get("text")
                    )
                elif style == "echo_shifted":
                    try:
                        total, n_cont, n_prompt = shifted_echo_continuation(choice.get("logprobs"), p.text,
                                                                            p.n_context)
                    except _NotInTop:
                        if top >= SHIFTED_TOP_LOGPROBS_RETRY:
                            raise
                        (total, n_cont), = self._score_as(style, [p], probe, top=SHIFTED_TOP_LOGPROBS_RETRY)
                        n_prompt = 0  # counted by that call
                else:
                    total, n_cont, n_prompt = vllm_continuation(choice.get("prompt_logprobs"), p.text, p.n_context)
            except ModelError as exc:
                raise self._error(str(exc)) from None
            out.append((total, n_cont))
            n_tokens += n_prompt
        with self._lock:
            self.stats.forward_tokens += n_tokens
        return out

    def _echo_is_late(self, batch: list[_Prompt], choices: list[Mapping[str, Any]]) -> bool:
        """Whether this server echoes log-probs one position late (see ``"echo_shifted"``); switches style if so.

        Suspicion: at every prompt's last token the top-1 entry equals the greedy continuation, which is
        what a late echo shows (it reports the distribution after that token). Confirmation: the same on
        :data:`SHIFT_PROBE`, whose last token (",") is not its greedy continuation (" 9").
        """
        suspicious = all(top and top == gen for top, gen in (top1_at_prompt_end(c, p.text)
                                                             for p, c in zip(batch, choices)))
        late = False
        if suspicious:
            payload = {"model": self.model, "prompt": [SHIFT_PROBE], "max_tokens": 1, "temperature": 0,
                       "echo": True, "logprobs": 1}
            try:
                probe = self._choices(self._post(payload), 1)[0]
            except ModelError:
                probe = {}
            top, gen = top1_at_prompt_end(probe, SHIFT_PROBE)
            late = bool(top) and top == gen
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

    def _choices(self, response: Any, n: int, *, probe: bool = False) -> list[Mapping[str, Any]]:
        """The response's choices in prompt order (matched by ``index``). Length ``n``."""
        if not isinstance(response, Mapping):
            raise self._error("malformed JSON response: the top level is not an object")
        if "choices" not in response and "error" in response:
            raise self._error(f"the server returned an error: {_error_text(response)}")
        choices = response.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, Mapping) for c in choices):
            raise self._error("malformed JSON response: no 'choices' list of objects")
        if len(choices) != n:
            raise (_ListRefused if probe else ModelError)(self._error(
                f"the server returned {len(choices)} choices for {n} prompts; it may not accept a list of "
                f"prompts (try batch_size=1)"
            ).args[0])
        if all("index" in c for c in choices):
            ordered: list[Mapping[str, Any] | None] = [None] * n
            for c in choices:
                i = c["index"]
                if not isinstance(i, int) or not 0 <= i < n or ordered[i] is not None:
                    raise self._error(f"malformed JSON response: bad or repeated choice index {i!r}")
                ordered[i] = c
            return ordered  # type: ignore[return-value]
        return list(choices)

    # -- HTTP ---------------------------------------------------------------------------------------

    def _post(self, payload: dict[str, Any], *, probe: bool = False) -> Any:
        """POST ``payload`` with retries (``probe``: none after an HTTP error status); the decoded JSON body.

        Raises:
            ModelError: connection refused, a non-retryable HTTP error, retries exhausted, malformed JSON.
            _RejectedStyle: HTTP 400/422 (the caller decides whether another style may work).
        """
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        tries = self.max_retries + 1
        last = ""
        for attempt in range(tries):
            if self._stop.is_set() and attempt > 0:
                raise self._error(f"stopped after another request failed ({last})")
            try:
                raw = self._post_once(body, headers)
            except _Retryable as exc:
                last = exc.reason
                if probe and exc.status in (500, 501):  # maybe "no lists here": the caller checks
                    raise _ListRefused(self._error(f"HTTP {exc.status} to a list of {len(payload['prompt'])} prompts")
                                       .args[0]) from None
                if attempt + 1 < tries:
                    with self._lock:
                        self.retries += 1
                    self._stop.wait(self._delay(attempt, exc.retry_after))
                continue
            try:
                return json.loads(raw)
            except (UnicodeDecodeError, ValueError):
                snippet = raw[:80].decode("utf-8", "replace")
                raise self._error(
                    f"malformed JSON in the response to POST {self._endpoint_shown()} "
                    f"({len(payload['prompt'])} prompts): {snippet!r}"
                ) from None
        raise self._error(f"gave up after {tries} tries (last: {last}); the server may be overloaded or down")

    def _post_once(self, body: bytes, headers: dict[str, str]) -> bytes:
        """One HTTP attempt; the body of a 2xx response."""
        with self._lock:
            self.requests += 1
        req = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            try:
                text = exc.read()
            except (OSError, http.client.HTTPException):
                text = b""
            finally:
                exc.close()
            message = _error_text(_maybe_json(text)) or (exc.reason if isinstance(exc.reason, str) else "")
            if status == 429 or status >= 500:
                raise _Retryable(f"HTTP {status}", _retry_after(exc.headers), status) from None
            if status in (400, 422):
                raise _RejectedStyle(f"{status}: {self._quote(message)}") from None
            hint = ""
            if status in (401, 403):
                hint = f"; check the API key (${API_KEY_ENVS[0]} or ${API_KEY_ENVS[1]})"
            elif status == 404:
                hint = "; does the server offer /v1/completions with this model? chat-only APIs cannot score labels"
            elif 300 <= status < 400:
                hint = "; redirects are not followed, pass the final URL as the base URL"
            raise self._error(f"HTTP {status} from POST {self._endpoint_shown()}: {self._quote(message)}{hint}") \
                from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ConnectionRefusedError):
                raise self._error("connection refused; is the server running at " + self.base_url + "?") from None
            if isinstance(reason, socket.gaierror):
                raise self._error(f"cannot resolve the host of {self.base_url} ({reason})") from None
            if isinstance(reason, TimeoutError):
                raise _Retryable(f"no response within {self.timeout:g}s") from None
            raise _Retryable(f"connection error ({type(reason).__name__})") from None
        except TimeoutError:
            raise _Retryable(f"no response within {self.timeout:g}s") from None
        except ConnectionRefusedError:
            raise self._error("connection refused; is the server running at " + self.base_url + "?") from None
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise _Retryable(f"connection dropped ({type(exc).__name__})") from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry ``attempt + 1``: ``Retry-After`` (capped), else jittered back-off."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
        with self._lock:
            jitter = 0.5 + 0.5 * self._rng.random()
        return min(self.backoff * 2**attempt, MAX_BACKOFF) * jitter

    # -- messages -----------------------------------------------------------------------------------

    def _endpoint_shown(self) -> str:
        """The endpoint without its query string (which may hold a key)."""
        return urllib.parse.urlsplit(self.endpoint)._replace(query="").geturl()

    def _quote(self, text: str) -> str:
        text = " ".join(self._redact(str(text)).split())
        return text if len(text) <= QUOTE_CHARS else text[:QUOTE_CHARS] + "..."

    def _redact(self, text: str) -> str:
        key = self._api_key.reveal()
        return text.replace(key, "***") if key else text

    def _error(self, what: str) -> ModelError:
        return ModelError(self._redact(f"OpenAI-compatible server {self.base_url} (model {self.model!r}): {what}"))


def _maybe_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return raw.decode("utf-8", "replace")


def _error_text(body: Any) -> str:
    """The message of an error body: OpenAI's ``{"error": {"message"}}``, ``{"detail"}``, or plain text."""
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            for field in ("message", "detail", "msg"):
                if err.get(field):
                    return str(err[field])
            return json.dumps(err)[:QUOTE_CHARS * 2]
        if body.get("message"):
            return str(body["message"])
        return str(err)
    return str(body)


def _retry_after(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else ``None``."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
