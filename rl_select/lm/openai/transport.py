"""HTTP to an OpenAI-compatible server: POST JSON with retries, refuse redirects, keep the API key secret.

:class:`Transport` wraps one :class:`httpx.Client` (a connection pool shared by the scorer's threads)
and retries each request with :mod:`tenacity` on HTTP 429 and 5xx, time-outs and dropped connections.
The wait before a retry is the server's ``Retry-After`` (capped at :data:`MAX_RETRY_AFTER`), else an
exponential back-off (capped at :data:`MAX_BACKOFF`) times a jitter in [0.5, 1) from a seeded
:class:`random.Random`. Redirects are never followed, so the ``Authorization`` header never reaches
another host. Every failure is a one-line :class:`~rl_select.errors.ModelError` naming the server,
the model and what was expected, with the API key masked.

The API key (argument, else ``$RL_SELECT_API_KEY``, else ``$OPENAI_API_KEY``) goes into the
``Authorization`` header only: never into ``repr``, a fingerprint or an error message.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Collection
from typing import Any

import httpx
from tenacity import RetryCallState, RetryError, Retrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base

from rl_select.errors import ModelError
from rl_select.lm.openai.wire import Overflow, clip, context_overflow, error_text

#: Environment variables read for the API key, in order.
API_KEY_ENVS: tuple[str, ...] = ("RL_SELECT_API_KEY", "OPENAI_API_KEY")
#: Longest wait taken from a ``Retry-After`` header, and longest back-off, in seconds.
MAX_RETRY_AFTER = 60.0
MAX_BACKOFF = 30.0
#: Seconds allowed for a request to an optional endpoint (:meth:`Transport.probe`).
PROBE_TIMEOUT = 10.0


class Secret:
    """A string that never shows itself in ``repr``/``str`` (the API key)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself (for the ``Authorization`` header only)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


class Rejected(Exception):
    """HTTP 400/422: the server refused the request's parameters (e.g. llama.cpp's "no echo").

    ``str(exc)`` is ``"<status>: <the server's message>"``.
    """


class ContextOverflow(Rejected):
    """The server refused a prompt as longer than its context window (see :func:`.wire.context_overflow`).

    Attributes:
        overflow: What the server said: the prompt's tokens and the window, where it gave them.
    """

    def __init__(self, message: str, overflow: Overflow) -> None:
        super().__init__(message)
        self.overflow = overflow


class StatusError(ModelError):
    """An HTTP status the caller asked not to retry (``post(..., fail_fast=...)``)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Transient(Exception):
    """A failure of one HTTP attempt worth retrying (429/5xx, time-out, dropped connection)."""

    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.status = status


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
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else ""
        shown = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        raise ModelError(f"bad base URL {shown!r}; expected http(s)://host[:port][/v1]")
    if parts.username is not None or parts.password is not None:
        raise ModelError(
            "the base URL must not carry credentials; put the API key in $RL_SELECT_API_KEY (or pass api_key)"
        )
    path = parts.path.rstrip("/")
    endpoint_path = path + ("/completions" if path.endswith("/v1") else "/v1/completions")
    endpoint = urllib.parse.urlunsplit((parts.scheme, parts.netloc, endpoint_path, parts.query, ""))
    return endpoint, urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else ``None``."""
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


class RetryWait(wait_base):
    """A tenacity wait: ``Retry-After`` (capped), else jittered exponential back-off.

    Args:
        backoff: First back-off in seconds; doubles per retry up to :data:`MAX_BACKOFF`.
        seed: Seed of the jitter.
    """

    def __init__(self, backoff: float, seed: int) -> None:
        self.backoff = backoff
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
        with self._lock:
            jitter = 0.5 + 0.5 * self._rng.random()
        return min(self.backoff * 2**attempt, MAX_BACKOFF) * jitter

    def __call__(self, retry_state: RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        return self.delay(retry_state.attempt_number - 1, getattr(failure, "retry_after", None))


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def _maybe_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        return raw.decode("utf-8", "replace")


class Transport:
    """POSTs JSON to a server's ``/v1/completions`` endpoint, thread-safe.

    Args:
        base_url: Server root, e.g. ``http://127.0.0.1:8000`` or ``.../v1`` (see :func:`split_base_url`).
        model: Model name (named in every error message).
        api_key: Bearer token; ``None``: ``$RL_SELECT_API_KEY``, then ``$OPENAI_API_KEY``, else none sent.
        timeout: Seconds allowed for connecting and for each read of one response.
        max_retries: Retries of one request after a transient failure (so ``max_retries + 1`` tries).
        backoff: First back-off in seconds (see :class:`RetryWait`).
        seed: Seed of the back-off jitter.

    Attributes:
        endpoint: The completions URL (with the base URL's query string, if any).
        base_url: The base URL as shown in fingerprints and messages (no query string).
        requests: HTTP attempts made (retries included).
        retries: Of those, retries after a transient failure.
        probes: Requests to other endpoints (:meth:`probe`), not counted in ``requests``.
    """

    def __init__(self, base_url: str, *, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_retries: int = 5, backoff: float = 0.5, seed: int = 0) -> None:
        self.endpoint, self.base_url = split_base_url(base_url)
        self.model = model
        key = api_key if api_key is not None else next((os.environ[e] for e in API_KEY_ENVS if os.environ.get(e)), "")
        self._api_key = Secret(key)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.wait = RetryWait(float(backoff), seed)
        self.requests = 0
        self.retries = 0
        self.probes = 0
        self._lock = threading.Lock()
        self._halted = threading.Event()
        self._client = httpx.Client(timeout=self.timeout, follow_redirects=False)
        weakref.finalize(self, self._client.close)  # the pooled connections go with the transport

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return (f"{type(self).__name__}(base_url={self.base_url!r}, model={self.model!r}, api_key={key}, "
                f"timeout={self.timeout:g}, max_retries={self.max_retries})")

    @property
    def has_key(self) -> bool:
        """Whether requests carry an API key."""
        return bool(self._api_key)

    # -- requests -----------------------------------------------------------------------------------

    def post(self, payload: dict[str, Any], *, fail_fast: Collection[int] = ()) -> Any:
        """POST ``payload`` as JSON, retrying transient failures; the decoded JSON body.

        Args:
            payload: The request body.
            fail_fast: HTTP statuses raised at once as :class:`StatusError` instead of retried.

        Raises:
            StatusError: an HTTP status in ``fail_fast``.
            ContextOverflow: the server says the prompt is longer than its context window (any error status).
            Rejected: HTTP 400/422 (the caller decides whether another request may work).
            ModelError: connection refused, an unknown host, another HTTP error status, retries exhausted
                or cut short by :meth:`halt`, malformed JSON.
        """
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        last = ""
        retrying = Retrying(retry=retry_if_exception_type(_Transient), stop=stop_after_attempt(self.max_retries + 1),
                            wait=self.wait, sleep=self._halted.wait, before_sleep=self._count_retry)
        try:
            for attempt in retrying:
                with attempt:
                    if attempt.retry_state.attempt_number > 1 and self._halted.is_set():
                        raise self.error(f"stopped after another request failed ({last})")
                    try:
                        response = self._send(payload, headers)
                    except _Transient as exc:
                        last = exc.reason
                        if exc.status in fail_fast:
                            what = f"HTTP {exc.status} from POST {self.endpoint_shown} (not retried)"
                            raise StatusError(self.describe(what), exc.status) from None
                        raise
        except RetryError:
            raise self.error(f"gave up after {self.max_retries + 1} tries (last: {last}); the server may be "
                             f"overloaded or down") from None
        try:
            return json.loads(response.content)
        except ValueError:
            snippet = response.content[:80].decode("utf-8", "replace")
            raise self.error(f"malformed JSON in the response to POST {self.endpoint_shown} "
                             f"({len(payload.get('prompt', ()))} prompts): {snippet!r}") from None

    def probe(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """One request to an optional endpoint of the server (``GET /props``, ``POST /tokenize``), never retried.

        Args:
            method: ``"GET"`` or ``"POST"``.
            path: The path from the server root (the base URL without ``/v1``), e.g. ``"/props"``.
            payload: The JSON body of a POST.

        Returns:
            The decoded JSON answer, or ``None`` on any failure (no such endpoint, an error, no JSON).
        """
        parts = urllib.parse.urlsplit(self.endpoint)
        root = parts.path.removesuffix("/completions").removesuffix("/v1")
        url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, root + path, parts.query, ""))
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        with self._lock:
            self.probes += 1
        try:
            response = self._client.request(method, url, json=payload, headers=headers,
                                            timeout=min(self.timeout, PROBE_TIMEOUT))
        except httpx.HTTPError:
            return None
        if not response.is_success:
            return None
        try:
            return json.loads(response.content)
        except ValueError:
            return None

    def halt(self) -> None:
        """Cut short the back-off of every request in flight; each then fails instead of retrying."""
        self._halted.set()

    def resume(self) -> None:
        """Allow retries again (undo :meth:`halt`)."""
        self._halted.clear()

    def _count_retry(self, retry_state: RetryCallState) -> None:
        with self._lock:
            self.retries += 1

    def _send(self, payload: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """One HTTP attempt; a 2xx response.

        Raises:
            _Transient: 429/5xx, a time-out, a dropped connection.
            ContextOverflow: the prompt is over the server's context window.
            Rejected: 400/422.
            ModelError: any other failure.
        """
        with self._lock:
            self.requests += 1
        try:
            response = self._client.post(self.endpoint, json=payload, headers=headers)
        except httpx.TimeoutException:
            raise _Transient(f"no response within {self.timeout:g}s") from None
        except httpx.ConnectError as exc:
            cause = _root_cause(exc)
            if isinstance(cause, ConnectionRefusedError):
                raise self.error(f"connection refused; is the server running at {self.base_url}?") from None
            if isinstance(cause, socket.gaierror):
                raise self.error(f"cannot resolve the host of {self.base_url} ({clip(str(cause), 60)})") from None
            raise _Transient(f"connection error ({type(cause).__name__})") from None
        except httpx.TransportError as exc:
            raise _Transient(f"connection dropped ({type(exc).__name__})") from None
        if response.is_success:
            return response
        status = response.status_code
        body = _maybe_json(response.content)
        message = self._quote(error_text(body) or response.reason_phrase)
        overflow = context_overflow(body) if status != 429 else None
        if overflow is not None:
            raise ContextOverflow(f"{status}: {message}", overflow)
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}", retry_after_seconds(response.headers.get("Retry-After")), status)
        if status in (400, 422):
            raise Rejected(f"{status}: {message}")
        hint = ""
        if status in (401, 403):
            hint = f"; check the API key (${API_KEY_ENVS[0]} or ${API_KEY_ENVS[1]})"
        elif status == 404:
            hint = "; expected /v1/completions for this model (chat-only APIs cannot score)"
        elif 300 <= status < 400:
            hint = "; redirects are not followed: pass the final URL as the base URL"
        raise self.error(f"HTTP {status} from {self.endpoint_shown}: {message}{hint}")

    # -- messages -----------------------------------------------------------------------------------

    @property
    def endpoint_shown(self) -> str:
        """The endpoint without its query string (which may hold a key)."""
        return urllib.parse.urlsplit(self.endpoint)._replace(query="").geturl()

    def describe(self, what: str) -> str:
        """``what``, prefixed with the server and model, with the API key masked."""
        return self._redact(f"server {self.base_url} (model {self.model!r}): {what}")

    def error(self, what: str, kind: type[ModelError] = ModelError) -> ModelError:
        """A one-line error of class ``kind`` saying :meth:`describe` of ``what``."""
        return kind(self.describe(what))

    def _quote(self, text: str) -> str:
        """A server's own words for a message: the key masked, one line, :data:`~.wire.QUOTE_CHARS` at most."""
        return clip(self._redact(str(text)))

    def _redact(self, text: str) -> str:
        key = self._api_key.reveal()
        return text.replace(key, "***") if key else text
