"""The OpenAI-compatible scorer against a fake ``/v1/completions`` server on 127.0.0.1.

The fake tokenises with a GPT-2-like regex (words carry their leading space) and gives every token a
deterministic log-prob (a hash of the token and the text before it), so the exact score of any
continuation is known here without a model. It speaks the prompt-log-prob styles (echo +
``text_offset``, and vLLM's ``prompt_logprobs``) and, when asked to (``next_token=True``), the next
token's top log-probs (OpenAI's layout or llama-server's), with labels ranked on demand outside the
top ``N`` asked; it can play a chat-only API or a llama.cpp build without echo, and injects faults
(5xx, 429, a redirect, slow answers, bad JSON, a server that dies) one request at a time. Given a context
window (``n_ctx``) it refuses longer prompts in one server's words, and can say its window (llama.cpp's
``GET /props``, vLLM's ``GET /v1/models``) and count tokens (``POST /tokenize``).
"""

from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rl_select.errors import MAX_MESSAGE, ModelError
from rl_select.experiments.report import window_line
from rl_select.lm.cache import ScoreCache
from rl_select.lm.calibration import calibrate
from rl_select.lm.openai import (
    MAX_RETRY_AFTER,
    NEXT_TOKEN_TOP_LOGPROBS,
    NEXT_TOKEN_TOP_LOGPROBS_RETRY,
    NO_NEXT_TOKEN_LOGPROBS,
    NO_PROMPT_LOGPROBS,
    SHIFT_PROBE,
    SHIFTED_TOP_LOGPROBS,
    SHIFTED_TOP_LOGPROBS_RETRY,
    OpenAICompletionsScorer,
    echo_continuation,
    next_token_logprobs,
    split_base_url,
    vllm_continuation,
)
from rl_select.lm.openai.transport import retry_after_seconds
from rl_select.lm.openai.wire import NoNextLogprobs, Overflow, context_overflow, prefix_token
from rl_select.lm.window import ContextWindowWarning, failure_row
from rl_select.prompts import (
    channel_contexts,
    channel_target,
    content_free_queries,
    label_continuations,
    render_prefix,
    render_query,
)
from rl_select.tasks import TaskSpec, get_task
from rl_select.types import Example

SPEC = get_task("sst2")
DEMOS = [
    Example(text="great fun from start to end", label="positive"),
    Example(text="dull, slow and far too long", label="negative"),
]
QUERIES = [
    Example(text="a quiet gem", label="positive"),
    Example(text="a loud mess", label="negative"),
    Example(text="fine enough, I suppose", label="positive"),
    Example(text="not worth the ticket", label="negative"),
    Example(text="warm and witty", label="positive"),
    Example(text="it drags", label="negative"),
]
SECRET = "sk-test-SECRET-123"
MODEL = "fake-model"

# --- the fake server ------------------------------------------------------------------------------

TOKEN_RE = re.compile(r" ?\w+| ?[^\w\s]+|\s+(?!\S)|\s+")


def tokenize(text: str) -> list[tuple[int, str]]:
    """``(start offset, token text)`` for every token of ``text``."""
    return [(m.start(), m.group()) for m in TOKEN_RE.finditer(text)]


def token_logprob(before: str, token: str) -> float:
    """The fake LM's log P(token | before): a hash in (-5.05, -0.05]."""
    h = hashlib.blake2b(f"{before}\x00{token}".encode(), digest_size=8).digest()
    return -0.05 - 5.0 * int.from_bytes(h, "big") / 2**64


def truth_pair(context: str, cont: str) -> tuple[float, int]:
    """Exact summed log-prob and token count of ``cont`` after ``context`` under the fake LM."""
    full = context + cont
    toks = tokenize(full)
    assert any(s == len(context) for s, _ in toks), "test data must split at the context boundary"
    lps = [token_logprob(full[:s], t) for s, t in toks if s >= len(context)]
    return sum(lps), len(lps)


def truth(demos: list[Example], queries: list[Example], *, mode: str = "direct", length_norm: bool = False,
          spec: TaskSpec = SPEC):
    """Ground-truth label log-probs, shape ``(len(queries), n_labels)``."""
    out = np.zeros((len(queries), len(spec.labels)))
    for i, q in enumerate(queries):
        for j in range(len(spec.labels)):
            if mode == "channel":
                context = render_prefix(spec, demos, channel=True) + channel_contexts(spec)[j]
                cont = channel_target(spec, q)
            else:
                context = render_prefix(spec, demos) + render_query(spec, q)
                cont = label_continuations(spec)[j]
            total, n = truth_pair(context, cont)
            out[i, j] = total / n if length_norm else total
    return out


GENERATED = " the"
#: The fake's next-token candidates: SST-2's label words, " very" (the first token of " very good"), others.
NEXT_VOCAB = (GENERATED, " positive", " negative", " very", " good", " bad", " a", "\n", " ")


class FakeServer:
    """A fake OpenAI-compatible completions server on 127.0.0.1.

    Args:
        style: ``"echo"`` (echo + logprobs; ignores ``prompt_logprobs``), ``"late"`` (echo one token late,
            as llama-cpp-python does), ``"vllm"`` (``prompt_logprobs```
            only; echo gives no log-probs), ``"chat"`` (no log-probs at all), ``"generated_only"`` (echo
            returns the generated token's log-prob only, like some llama.cpp builds), ``"reject_echo"``
            (HTTP 400 on echo, like llama.cpp's "Only no echo is supported").
        bos: Echo a ``"<s>"`` token first and count it in ``text_offset`` (as vLLM does).
        delay: Seconds each request takes.
        single: Answer HTTP 500 to a list of more than one prompt (as llama-cpp-python's server does).
        port: Port to bind (0: any free one).
        next_token: Answer a request without ``echo`` and with an integer ``logprobs`` with the next
            token's top log-probs (over :data:`NEXT_VOCAB`); off: ``"logprobs": null`` (a server that
            only scores prompts).
        next_format: ``"openai"`` (``top_logprobs: [{token: lp}]``) or ``"llama_server"``
            (``content: [{top_logprobs: [{token, logprob}]}]``).

    Attributes (next token): ``rank(prompt, token)`` places a token in the top ``N`` only when ``N >= rank``;
    ``stops(prompt)``: generate no token (end of text, no log-probs, as llama-cpp-python does);
    ``max_logprobs``: answer HTTP 400 to a larger ``logprobs`` (vLLM's ``--max-logprobs``).

    Attributes (context window): ``n_ctx``: refuse a prompt whose tokens plus ``max_tokens`` exceed it, in the
    words of ``overflow_format`` (a key of :data:`OVERFLOW_BODIES`), counting refusals in ``overflows``;
    ``props``: answer ``GET /props`` with it (llama.cpp), ``models``: ``GET /v1/models`` (vLLM); ``tokenize``:
    answer ``POST /tokenize`` in that server's shape (``"llama_server"`` or ``"vllm"``), recording ``tokenized``.
    """

    def __init__(self, style: str = "echo", *, bos: bool = False, delay: float = 0.0, port: int = 0,
                 single: bool = False, next_token: bool = False, next_format: str = "openai") -> None:
        self.style = style
        self.single = single
        self.next_token = next_token
        self.next_format = next_format
        self.rank = lambda prompt, token: 1
        self.stops = lambda prompt: False
        self.max_logprobs: int | None = None
        self.n_ctx: int | None = None
        self.overflow_format = "llama_server"
        self.overflows = 0
        self.props = False
        self.models = False
        self.tokenize: str | None = None
        self.tokenized: list[str] = []
        self.late_rank = 1  # "late" style: the rank of every next token (outside the top n when n < this)
        self.bos = bos
        self.delay = delay
        self.port = port
        self.slow_seconds = 1.0
        self.redirect_to = ""  # where the "redirect" fault points
        self.faults: list[str | None] = []
        self.requests = 0
        self.batch_sizes: list[int] = []
        self.prompts_seen: list[str] = []
        self.auth: list[str | None] = []
        self.bodies: list[dict[str, Any]] = []
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        httpd.daemon_threads = True
        httpd.fake = self  # type: ignore[attr-defined]
        self.port = httpd.server_address[1]
        self.httpd = httpd
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        httpd, self.httpd = self.httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    # -- responses ----------------------------------------------------------------------------------

    def echo_choice(self, index: int, prompt: str, max_tokens: int) -> dict[str, Any]:
        toks = tokenize(prompt)
        tokens = [t for _, t in toks]
        offsets = [s for s, _ in toks]
        lps: list[float | None] = [None] + [token_logprob(prompt[:s], t) for s, t in toks[1:]]
        if self.bos:
            tokens, offsets = ["<s>"] + tokens, [0] + [s + 3 for s in offsets]
            lps = [None, token_logprob("", tokens[1])] + lps[1:]
        text = prompt
        if max_tokens >= 1:
            tokens.append(GENERATED)
            offsets.append(offsets[-1] + len(tokens[-2]))
            lps.append(-1.0)
            text += GENERATED
        return {"index": index, "text": text, "finish_reason": "length",
                "logprobs": {"tokens": tokens, "token_logprobs": lps, "text_offset": offsets,
                             "top_logprobs": [None if lp is None else {t: lp} for t, lp in zip(tokens, lps)]}}

    def late_choice(self, index: int, prompt: str, top_n: int) -> dict[str, Any]:
        """llama-cpp-python's echo: position i reports the distribution AFTER token i (one token late)."""
        toks = tokenize(prompt)
        tokens = [t for _, t in toks]
        offsets = [s for s, _ in toks]
        lps: list[float | None] = [None]
        tops: list[dict[str, float] | None] = [None]
        for i in range(1, len(toks)):
            end = offsets[i] + len(tokens[i])
            lps.append(token_logprob(prompt[:end], tokens[i]))  # the wrong (late) number
            nxt = {tokens[i + 1]: token_logprob(prompt[:offsets[i + 1]], tokens[i + 1])} if i + 1 < len(toks) \
                else {GENERATED: 0.0}  # greedy next token: the top-1 after the prompt
            if top_n < self.late_rank and i + 1 < len(toks):  # the next token ranks below the top_n asked
                nxt = {"<other>": -0.01}
            tops.append({**nxt, tokens[i]: lps[-1]} if top_n > 1 else {**nxt})
        return {"index": index, "text": prompt + GENERATED, "finish_reason": "length",
                "logprobs": {"tokens": tokens, "token_logprobs": lps, "text_offset": offsets, "top_logprobs": tops}}

    def vllm_choice(self, index: int, prompt: str) -> dict[str, Any]:
        toks = tokenize(prompt)
        entries: list[Any] = [None]
        for n, (s, t) in enumerate(toks[1:], start=1):
            entries.append({str(1000 + n): {"logprob": token_logprob(prompt[:s], t), "rank": 1, "decoded_token": t}})
        return {"index": index, "text": GENERATED, "finish_reason": "length", "logprobs": None,
                "prompt_logprobs": entries}

    def next_choice(self, index: int, prompt: str, top_n: int) -> dict[str, Any]:
        """The next token's top-``top_n`` log-probs after ``prompt``: log P(t | prompt) as echo would score t."""
        dist = {t: token_logprob(prompt, t) for t in NEXT_VOCAB}
        if self.stops(prompt):
            empty: dict[str, Any] = {"content": []} if self.next_format == "llama_server" else \
                {"tokens": [], "token_logprobs": [], "text_offset": [], "top_logprobs": []}
            return {"index": index, "text": "", "finish_reason": "stop", "logprobs": empty}
        gen = max(dist, key=dist.__getitem__)
        shown = sorted(((t, lp) for t, lp in dist.items() if self.rank(prompt, t) <= top_n), key=lambda x: -x[1])
        shown = shown[:top_n]
        if self.next_format == "llama_server":
            def entry(t: str, lp: float) -> dict[str, Any]:
                return {"id": NEXT_VOCAB.index(t), "token": t, "logprob": lp, "bytes": list(t.encode())}

            first = {**entry(gen, dist[gen]), "top_logprobs": [entry(*x) for x in shown]}
            logprobs: dict[str, Any] = {"content": [first]}
        else:
            logprobs = {"tokens": [gen], "token_logprobs": [dist[gen]], "text_offset": [len(prompt)],
                        "top_logprobs": [dict(shown)]}
        return {"index": index, "text": gen, "finish_reason": "length", "logprobs": logprobs}

    def generated_only_choice(self, index: int, prompt: str) -> dict[str, Any]:
        return {"index": index, "text": GENERATED, "finish_reason": "length",
                "logprobs": {"tokens": [GENERATED], "token_logprobs": [-1.0], "text_offset": [0]}}

    def respond(self, req: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        prompts = req["prompt"] if isinstance(req["prompt"], list) else [req["prompt"]]
        if req.get("model") != MODEL:
            return 404, {"error": {"message": f"The model `{req.get('model')}` does not exist."}}
        if self.single and len(prompts) > 1:
            return 500, {"error": {"message": "", "type": "internal_server_error"}}
        echo = bool(req.get("echo")) and req.get("logprobs") is not None
        if self.style == "reject_echo" and req.get("echo"):
            return 400, {"error": {"message": "Only no echo is supported", "type": "invalid_request_error"}}
        top_n = req.get("logprobs")
        if self.max_logprobs is not None and isinstance(top_n, int) and top_n > self.max_logprobs:
            return 400, {"error": {"message": f"Requested sample logprobs of {top_n}, which is greater than max "
                                              f"allowed: {self.max_logprobs}", "type": "BadRequestError"}}
        next_token = self.next_token and not req.get("echo") and isinstance(top_n, int)
        if self.n_ctx is not None:
            n = max(len(tokenize(p)) for p in prompts)
            if n + int(req.get("max_tokens", 16)) > self.n_ctx:
                with self.lock:
                    self.overflows += 1
                return OVERFLOW_BODIES[self.overflow_format](n, self.n_ctx)
        choices = []
        for i, p in enumerate(prompts):
            if next_token:
                choices.append(self.next_choice(i, p, top_n))
            elif self.style == "echo" and echo:
                choices.append(self.echo_choice(i, p, int(req.get("max_tokens", 16))))
            elif self.style == "late" and echo:
                choices.append(self.late_choice(i, p, int(req["logprobs"])))
            elif self.style == "vllm" and req.get("prompt_logprobs") is not None:
                choices.append(self.vllm_choice(i, p))
            elif self.style == "generated_only" and echo:
                choices.append(self.generated_only_choice(i, p))
            else:
                choices.append({"index": i, "text": GENERATED, "finish_reason": "length", "logprobs": None})
        choices.reverse()  # the client must match choices to prompts by index
        usage = {"prompt_tokens": sum(len(tokenize(p)) for p in prompts)}
        return 200, {"id": "cmpl-1", "object": "text_completion", "model": MODEL, "choices": choices, "usage": usage}


    def answer_get(self, path: str) -> tuple[int, Any]:
        if path == "/props" and self.props:
            return 200, {"default_generation_settings": {"n_ctx": self.n_ctx, "params": {}}, "total_slots": 1}
        if path == "/v1/models" and self.models:
            return 200, {"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": self.n_ctx}]}
        return 404, {"error": {"message": "not found"}}

    def answer_tokenize(self, req: dict[str, Any]) -> tuple[int, Any]:
        key = {"llama_server": "content", "vllm": "prompt"}.get(self.tokenize or "")
        if key is None or not isinstance(req.get(key), str):
            return (404 if key is None else 400), {"error": {"message": "bad tokenize request"}}
        with self.lock:
            self.tokenized.append(req[key])
        tokens = list(range(len(tokenize(req[key]))))
        return 200, {"tokens": tokens} if self.tokenize == "llama_server" else \
            {"tokens": tokens, "count": len(tokens), "max_model_len": self.n_ctx}


#: A refused prompt of ``n`` tokens over a window of ``n_ctx``, in each server's words (status, body).
OVERFLOW_BODIES = {
    "llama_server": lambda n, n_ctx: (400, {"error": {
        "code": 400, "message": f"request ({n} tokens) exceeds the available context size ({n_ctx} tokens), try "
        f"increasing it", "type": "exceed_context_size_error", "n_prompt_tokens": n, "n_ctx": n_ctx}}),
    "vllm": lambda n, n_ctx: (400, {
        "object": "error", "message": f"This model's maximum context length is {n_ctx} tokens. However, you "
        f"requested {n + 1} tokens ({n} in the messages, 1 in the completion). Please reduce the length of the "
        f"messages or completion.", "type": "BadRequestError", "param": None, "code": 400}),
    "vllm_decoder": lambda n, n_ctx: (400, {
        "object": "error", "message": f"The decoder prompt (length {n}) is longer than the maximum model length of "
        f"{n_ctx}. Make sure that `max_model_len` is no smaller than the number of text tokens.",
        "type": "BadRequestError", "param": None, "code": 400}),
    "openai": lambda n, n_ctx: (400, {"error": {
        "message": f"This model's maximum context length is {n_ctx} tokens, however you requested {n + 1} tokens "
        f"({n} in your prompt; 1 for the completion). Please reduce your prompt; or completion length.",
        "type": "invalid_request_error", "param": None, "code": "context_length_exceeded"}}),
    "llama_cpp_python": lambda n, n_ctx: (500, {"detail": f"Requested tokens ({n}) exceed context window of "
                                                          f"{n_ctx}"}),
    "unnumbered": lambda n, n_ctx: (400, {"error": {"message": "prompt too long", "code": "context_length_exceeded"}}),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        status, body = fake.answer_get(self.path)
        self._send(status, json.dumps(body).encode())

    def do_POST(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/tokenize":
            status, body = fake.answer_tokenize(json.loads(raw))
            self._send(status, json.dumps(body).encode())
            return
        if self.path != "/v1/completions":
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        req = json.loads(raw)
        with fake.lock:
            fake.requests += 1
            fake.active += 1
            fake.peak = max(fake.peak, fake.active)
            fault = fake.faults.pop(0) if fake.faults else None
            fake.auth.append(self.headers.get("Authorization"))
            fake.bodies.append(req)
        try:
            if fake.delay:
                time.sleep(fake.delay)
            if fault == "die":  # stop listening, then drop this connection unanswered
                fake.stop()
                self.close_connection = True
                return
            if fault == "500":
                self._send(500, b'{"error": {"message": "internal error"}}')
                return
            if fault is not None and fault.startswith("429"):  # "429" or "429:<Retry-After>"
                wait = fault.partition(":")[2] or "0"
                self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": wait})
                return
            if fault == "redirect":
                self._send(307, b"", {"Location": fake.redirect_to})
                return
            if fault == "malformed":
                self._send(200, b'{"choices": [ this is not json')
                return
            if fault == "401echo":  # a careless server that quotes the credentials back
                msg = f"invalid API key: {self.headers.get('Authorization')}"
                self._send(401, json.dumps({"error": {"message": msg}}).encode())
                return
            if fault == "slow":
                time.sleep(fake.slow_seconds)
            status, body = fake.respond(req)
            with fake.lock:
                if status == 200:
                    prompts = req["prompt"] if isinstance(req["prompt"], list) else [req["prompt"]]
                    fake.batch_sizes.append(len(prompts))
                    fake.prompts_seen.extend(prompts)
            self._send(status, json.dumps(body).encode())
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out)
            pass
        finally:
            with fake.lock:
                fake.active -= 1


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RL_SELECT_API_KEY", "OPENAI_API_KEY", "RL_SELECT_BASE_URL", "RL_SELECT_MODEL",
                 "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def servers() -> Iterator[list[FakeServer]]:
    """Start servers with ``start(FakeServer(...))``-style calls; every one is stopped afterwards."""
    started: list[FakeServer] = []
    yield started
    for s in started:
        s.stop()


@pytest.fixture
def serve(servers: list[FakeServer]):
    def start(style: str = "echo", **kwargs: Any) -> FakeServer:
        s = FakeServer(style, **kwargs).start()
        servers.append(s)
        return s

    return start


def scorer_for(server: FakeServer, **kwargs: Any) -> OpenAICompletionsScorer:
    opts: dict[str, Any] = {"base_url": server.url, "model": MODEL, "backoff": 0.01, "timeout": 5.0}
    opts.update(kwargs)
    return OpenAICompletionsScorer(SPEC, **opts)


def assert_short(*messages: Any) -> None:
    """Each message (an exception, a warning or a string) is one line under MAX_MESSAGE characters, not counting
    the user's own values it names (the server's URL and the model name), as every rl-select message is."""
    for message in messages:
        text = str(getattr(message, "message", message))
        own = re.sub(r"http://127\.0\.0\.1:\d+", "", text).replace(repr(MODEL), "")
        assert len(own) < MAX_MESSAGE and "\n" not in text, (len(own), text)


# --- scores ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("style", "bos", "expected_style"), [
    ("echo", False, "echo"), ("echo", True, "echo"), ("vllm", False, "vllm"),
])
def test_direct_scores_match_ground_truth(serve, style: str, bos: bool, expected_style: str) -> None:
    server = serve(style, bos=bos)
    scorer = scorer_for(server)
    got = scorer.logprobs(demos=DEMOS, queries=QUERIES)
    assert got.shape == (len(QUERIES), len(SPEC.labels))
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES), rtol=0, atol=1e-9)
    assert scorer.style == expected_style
    assert scorer.stats.forward_tokens > len(QUERIES) * len(SPEC.labels)
    body = server.bodies[-1]
    assert body["model"] == MODEL and body["temperature"] == 0 and body["max_tokens"] in (0, 1)
    if expected_style == "echo":
        assert body["echo"] is True and body["logprobs"] in (0, 1)
    else:
        assert body["prompt_logprobs"] == 0


@pytest.mark.parametrize("style", ["echo", "vllm"])
def test_channel_and_length_norm_match_ground_truth(serve, style: str) -> None:
    server = serve(style)
    for mode in ("direct", "channel"):
        for norm in (False, True):
            scorer = scorer_for(server, mode=mode, length_norm=norm, logprob_style=style)
            got = scorer.logprobs(demos=DEMOS, queries=QUERIES[:3])
            np.testing.assert_allclose(got, truth(DEMOS, QUERIES[:3], mode=mode, length_norm=norm), atol=1e-9)
    zero_shot = scorer_for(server, mode="channel", logprob_style=style).logprobs(demos=[], queries=QUERIES[:2])
    np.testing.assert_allclose(zero_shot, truth([], QUERIES[:2], mode="channel"), atol=1e-9)


def test_prompts_go_as_lists_in_few_requests(serve) -> None:
    server = serve("echo")
    scorer = scorer_for(server, batch_size=16, logprob_style="echo")
    scorer.logprobs(demos=DEMOS, queries=QUERIES[:3])
    assert server.requests == scorer.requests == 1
    assert server.batch_sizes == [6]
    scorer = scorer_for(server, batch_size=4, logprob_style="echo")
    scorer.logprobs(demos=DEMOS, queries=QUERIES[3:])
    assert scorer.requests == 2 and sorted(server.batch_sizes[1:]) == [2, 4]  # concurrent: any order


def test_a_server_that_refuses_lists_gets_one_prompt_per_request(serve) -> None:
    server = serve("echo", single=True)
    scorer = scorer_for(server, batch_size=4)
    with pytest.warns(RuntimeWarning, match=r"refused a list of 4 prompts \(HTTP 500 to a list of 4 prompts\)") as seen:
        lp = scorer.logprobs(demos=DEMOS, queries=QUERIES)
    assert_short(*seen)
    np.testing.assert_allclose(lp, truth(DEMOS, QUERIES), atol=1e-9)
    assert scorer.batch_size == 1 and scorer.style == "echo"
    # the next-token probe ("auto"; this server scores prompts only), then one prompt per request
    assert server.batch_sizes == [1] * (1 + len(QUERIES) * len(SPEC.labels))
    assert scorer.retries == 0  # the probe's 500 is not retried
    more = [Example(text="plain", label=SPEC.labels[0], uid="x9")]
    scorer.logprobs(demos=DEMOS, queries=more)  # no second probe, no second warning
    assert server.batch_sizes[-2:] == [1, 1] and scorer.requests == len(server.batch_sizes) + 2  # two list probes


@pytest.mark.parametrize("style", ["auto", "echo"])
def test_a_one_token_late_echo_is_detected_and_read_right(serve, style: str) -> None:
    server = serve("late")
    scorer = scorer_for(server, logprob_style=style)
    with pytest.warns(RuntimeWarning, match="one token late") as seen:
        got = scorer.logprobs(demos=DEMOS, queries=QUERIES)
    assert_short(*seen)
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES), atol=1e-9)
    assert scorer.style == "echo_shifted"
    assert any(b["prompt"] == [SHIFT_PROBE] for b in server.bodies)  # confirmed by the probe
    assert server.bodies[-1]["logprobs"] == SHIFTED_TOP_LOGPROBS
    # a plain echo server is never taken for a late one
    plain = serve("echo")
    ok = scorer_for(plain)
    ok.logprobs(demos=DEMOS, queries=QUERIES)
    assert ok.style == "echo" and not any(b["prompt"] == [SHIFT_PROBE] for b in plain.bodies)


def test_a_late_echo_token_outside_the_top_50_is_asked_again_with_more(serve) -> None:
    server = serve("late")
    server.late_rank = 200
    scorer = scorer_for(server, logprob_style="echo_shifted", batch_size=4)
    got = scorer.logprobs(demos=DEMOS, queries=QUERIES[:2])
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES[:2]), atol=1e-9)
    asked = [b["logprobs"] for b in server.bodies]
    assert asked[0] == SHIFTED_TOP_LOGPROBS and asked[1:] == [SHIFTED_TOP_LOGPROBS_RETRY] * 4  # each prompt again
    server.late_rank = 5000
    with pytest.raises(ModelError, match="not among the") as info:
        scorer_for(server, logprob_style="echo_shifted").logprobs(demos=DEMOS, queries=QUERIES[2:3])
    assert_short(info.value)


def test_a_late_echo_without_the_token_in_its_top_logprobs_is_a_clear_error(serve) -> None:
    server = serve("late")
    scorer = scorer_for(server, logprob_style="echo_shifted", shifted_top_logprobs=1)
    server.style = "late"
    original = server.late_choice
    server.late_choice = lambda i, p, n: {**original(i, p, n), "logprobs": {
        **original(i, p, n)["logprobs"], "top_logprobs": [None] + [{"zzz": -0.1}] * (len(tokenize(p)) - 1)}}
    with pytest.raises(ModelError, match=r"not among the 1 top log-probs.*shifted_top_logprobs") as info:
        scorer.logprobs(demos=DEMOS, queries=QUERIES[:1])
    assert_short(info.value)


def test_max_concurrency_is_respected(serve) -> None:
    server = serve("echo", delay=0.1)
    scorer = scorer_for(server, batch_size=1, max_concurrency=3, logprob_style="echo")
    got = scorer.logprobs(demos=DEMOS, queries=QUERIES)
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES), atol=1e-9)
    assert server.requests == len(QUERIES) * len(SPEC.labels)
    assert 2 <= server.peak <= 3


def test_disk_cache_makes_a_repeat_free(serve, tmp_path: Path) -> None:
    server = serve("echo")
    cache = ScoreCache(tmp_path / "scores.sqlite")
    try:
        first = scorer_for(server, cache=cache).logprobs(demos=DEMOS, queries=QUERIES)
        n = server.requests
        again = scorer_for(server, cache=cache)
        second = again.logprobs(demos=DEMOS, queries=QUERIES)
        np.testing.assert_array_equal(first, second)
        assert server.requests == n and again.requests == 0
        assert again.stats.cache_hits == len(QUERIES)
        # a fresh cache object on the same file (a new run) is free too
        cache.close()
        cache = ScoreCache(tmp_path / "scores.sqlite")
        third = scorer_for(server, cache=cache).logprobs(demos=DEMOS, queries=QUERIES)
        np.testing.assert_array_equal(first, third)
        assert server.requests == n
        # another mode is another key
        scorer_for(server, cache=cache, mode="channel").logprobs(demos=DEMOS, queries=QUERIES[:1])
        assert server.requests > n
    finally:
        cache.close()


def test_calibration_through_the_base_class(serve) -> None:
    server = serve("echo")
    got = scorer_for(server, calibrate=True).logprobs(demos=DEMOS, queries=QUERIES)
    cf = content_free_queries(SPEC)
    expected = calibrate(truth(DEMOS, QUERIES), truth(DEMOS, cf))
    np.testing.assert_allclose(got, expected, atol=1e-9)


# --- the next-token style ------------------------------------------------------------------------


def contexts_of(demos: list[Example], queries: list[Example], spec: TaskSpec = SPEC) -> list[str]:
    """The direct-mode context of each query (demonstrations + query, no label)."""
    return [render_prefix(spec, demos) + render_query(spec, q) for q in queries]


@pytest.mark.parametrize("fmt", ["openai", "llama_server"])
def test_next_token_reads_every_label_from_one_request_per_query(serve, fmt: str) -> None:
    server = serve("echo", next_token=True, next_format=fmt)
    scorer = scorer_for(server, batch_size=4)
    got = scorer.logprobs(demos=DEMOS, queries=QUERIES)
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES), rtol=0, atol=1e-12)  # log P(token | context), as echo
    assert scorer.style == "next_token"
    # the first query alone (it settles the style), then the other five as lists of 4 and 1: no request per label
    assert server.requests == scorer.requests == 3 and sorted(server.batch_sizes) == [1, 1, 4]
    for body in server.bodies:
        assert "echo" not in body and body["max_tokens"] == 1 and body["temperature"] == 0
        assert body["logprobs"] == NEXT_TOKEN_TOP_LOGPROBS
    # the prompts are the contexts alone: they share the demonstrations' prefix, which a server can cache
    assert sorted(server.prompts_seen) == sorted(contexts_of(DEMOS, QUERIES))
    assert all(p.endswith("\nSentiment:") for p in server.prompts_seen)  # the label's leading space is its own
    assert scorer.stats.forward_tokens == sum(len(tokenize(c)) for c in contexts_of(DEMOS, QUERIES))
    normed = scorer_for(server, length_norm=True).logprobs(demos=DEMOS, queries=QUERIES)
    np.testing.assert_allclose(normed, truth(DEMOS, QUERIES, length_norm=True), atol=1e-12)  # one token each


def test_next_token_label_outside_the_top_n_is_asked_again_with_more(serve) -> None:
    server = serve("echo", next_token=True)
    server.rank = lambda prompt, token: 100 if token == " negative" else 1  # outside the top 20, inside the top 1000
    scorer = scorer_for(server, batch_size=1, max_concurrency=1)
    got = scorer.logprobs(demos=DEMOS, queries=QUERIES[:3])
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES[:3]), atol=1e-12)
    assert scorer.style == "next_token" and scorer.echo_fallbacks == 0
    asked = [b["logprobs"] for b in server.bodies]
    assert asked == [NEXT_TOKEN_TOP_LOGPROBS, NEXT_TOKEN_TOP_LOGPROBS_RETRY] * 3  # each query again, alone
    assert not any(b.get("echo") for b in server.bodies)


def test_next_token_label_still_missing_is_scored_with_echo_never_zero(serve) -> None:
    server = serve("echo", next_token=True)
    deep, mute = QUERIES[3], QUERIES[5]
    # " negative" ranks below the top 1000 after one query; the server stops at once (end of text) after another
    server.rank = lambda prompt, token: 5000 if token == " negative" and prompt.endswith(deep.text + "\nSentiment:") \
        else 1
    server.stops = lambda prompt: prompt.endswith(mute.text + "\nSentiment:")
    scorer = scorer_for(server, batch_size=1, max_concurrency=1)
    with pytest.warns(RuntimeWarning, match=r"' negative' not among the top 1000 next tokens; scoring its missing "
                                            r"labels with echo") as seen:
        got = scorer.logprobs(demos=DEMOS, queries=QUERIES)
    assert_short(*seen)
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES), atol=1e-12)
    assert scorer.style == "next_token" and scorer.echo_fallbacks == 2
    ctx = contexts_of(DEMOS, QUERIES)
    echoed = [b["prompt"] for b in server.bodies if b.get("echo")]
    assert echoed == [[ctx[3] + " negative"]] + [[ctx[5] + c] for c in label_continuations(SPEC)]  # missing only
    # named explicitly, the style does not fall back: a one-line error
    for queries, said in (([deep], "' negative' not among the top 1000 next tokens"),
                          ([mute], "the server generated no token for a query")):
        strict = scorer_for(server, logprob_style="next_token")
        strict.logprobs(demos=DEMOS, queries=QUERIES[:1])  # settled on a query that works
        with pytest.raises(ModelError, match=said) as info:
            strict.logprobs(demos=DEMOS, queries=queries)
        assert "logprob_style='auto'" in str(info.value)
        assert_short(info.value)


def test_multi_token_labels_keep_the_echo_path(serve) -> None:
    spec = dataclasses.replace(SPEC, name="sst2-very", verbalizers={"positive": "very good", "negative": "very bad"})
    server = serve("echo", next_token=True)
    scorer = OpenAICompletionsScorer(spec, base_url=server.url, model=MODEL, backoff=0.01)
    with pytest.warns(RuntimeWarning, match=r"label ' very (good|bad)' \(\+1 more\) not among the top 1000 next tokens "
                                            r"\(' very' is a proper prefix: several tokens here\); "
                                            r"scoring this task with echo") as seen:
        got = scorer.logprobs(demos=DEMOS, queries=QUERIES)
    assert_short(*seen)
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES, spec=spec), atol=1e-12)
    assert scorer.style == "echo"
    assert [b.get("logprobs") for b in server.bodies[:2]] == [NEXT_TOKEN_TOP_LOGPROBS, NEXT_TOKEN_TOP_LOGPROBS_RETRY]
    assert all(b.get("echo") for b in server.bodies[2:])
    n = len(server.bodies)
    scorer.logprobs(demos=DEMOS[:1], queries=QUERIES[:2])  # decided for the scorer's life: no second probe
    assert all(b.get("echo") for b in server.bodies[n:])
    with pytest.raises(ModelError, match=r"several tokens.*use logprob_style='auto' or 'echo'") as info:
        OpenAICompletionsScorer(spec, base_url=server.url, model=MODEL, logprob_style="next_token").logprobs(
            demos=DEMOS, queries=QUERIES[:1])
    assert_short(info.value)


def test_a_server_that_caps_logprobs_keeps_echo_for_labels_beyond_its_cap(serve) -> None:
    server = serve("echo", next_token=True)
    server.max_logprobs = 20  # vLLM's default --max-logprobs: the retry for 1000 is HTTP 400
    server.rank = lambda prompt, token: 100 if token == " negative" else 1
    scorer = scorer_for(server)
    with pytest.warns(RuntimeWarning) as seen:
        got = scorer.logprobs(demos=DEMOS, queries=QUERIES)
    said = [str(w.message) for w in seen]
    assert_short(*said)
    assert any("refused logprobs=1000 (HTTP 400: Requested sample logprobs of 1000" in m for m in said)
    assert any("' negative' not among the top 20 next tokens; scoring this task with echo" in m for m in said)
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES), atol=1e-12)
    assert scorer.style == "echo"  # the label's token was never seen: it may be several tokens


def test_next_token_on_a_server_that_refuses_lists(serve) -> None:
    server = serve("echo", next_token=True, single=True)
    scorer = scorer_for(server, batch_size=4)
    with pytest.warns(RuntimeWarning, match="refused a list of 4 prompts"):
        got = scorer.logprobs(demos=DEMOS, queries=QUERIES)
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES), atol=1e-12)
    assert scorer.style == "next_token" and scorer.batch_size == 1
    assert server.batch_sizes == [1] * len(QUERIES)  # one request per query (the refused list is not counted)


def test_channel_mode_never_asks_for_the_next_token(serve) -> None:
    server = serve("echo", next_token=True)
    got = scorer_for(server, mode="channel").logprobs(demos=DEMOS, queries=QUERIES[:2])
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES[:2], mode="channel"), atol=1e-12)
    assert all(b.get("echo") for b in server.bodies)
    with pytest.raises(ModelError, match="direct mode only"):
        scorer_for(server, mode="channel", logprob_style="next_token")


def test_no_logprobs_and_server_down_are_two_different_lines(serve) -> None:
    chat = serve("chat")  # answers, but with no log-probs of any kind
    with pytest.raises(ModelError) as strict:
        scorer_for(chat, logprob_style="next_token").logprobs(demos=DEMOS, queries=QUERIES[:1])
    with pytest.raises(ModelError) as auto:
        scorer_for(chat).logprobs(demos=DEMOS, queries=QUERIES[:1])
    refusing = serve("echo", next_token=True)
    refusing.max_logprobs = 0  # refuses any logprobs without echo... and with it: nothing to read
    with pytest.raises(ModelError) as rejected:
        scorer_for(refusing, logprob_style="next_token").logprobs(demos=DEMOS, queries=QUERIES[:1])
    down = serve("echo", next_token=True)
    url = down.url
    down.stop()
    downs = []
    for style in ("next_token", "auto"):
        with pytest.raises(ModelError) as info:
            OpenAICompletionsScorer(SPEC, base_url=url, model=MODEL, logprob_style=style).logprobs(  # type: ignore[arg-type]
                demos=DEMOS, queries=QUERIES[:1])
        downs.append(str(info.value))
    messages = [str(strict.value), str(auto.value), str(rejected.value), *downs]
    assert all(MODEL in m for m in messages)
    assert_short(*messages)
    assert NO_NEXT_TOKEN_LOGPROBS in messages[0]
    assert NO_PROMPT_LOGPROBS in messages[1] and "next_token: no top_logprobs" in messages[1]
    assert NO_NEXT_TOKEN_LOGPROBS in messages[2] and "HTTP 400: Requested sample logprobs of 20" in messages[2]
    for m in downs:
        assert f"connection refused; is the server running at {url}?" in m
        assert "log-probs" not in m


def test_styles_share_the_cache_they_score_the_same_quantity(serve, tmp_path: Path) -> None:
    """Next token reads log P(label token | context), which echo reads for a one-token label: one fingerprint."""
    server = serve("echo", next_token=True)
    cache = ScoreCache(tmp_path / "scores.sqlite")
    try:
        echo = scorer_for(server, cache=cache, logprob_style="echo")
        nxt = scorer_for(server, cache=cache, logprob_style="next_token")
        assert echo.fingerprint == nxt.fingerprint == scorer_for(server).fingerprint
        a = echo.logprobs(demos=DEMOS, queries=QUERIES[:3])
        b = nxt.logprobs(demos=DEMOS, queries=QUERIES[3:])
        np.testing.assert_allclose(np.vstack([a, b]), truth(DEMOS, QUERIES), atol=1e-12)
        n = server.requests
        both = scorer_for(server, cache=cache).logprobs(demos=DEMOS, queries=QUERIES)
        assert server.requests == n  # rows of either style serve the other
        np.testing.assert_array_equal(both, np.vstack([a, b]))
    finally:
        cache.close()


def test_next_token_parsing() -> None:
    legacy = {"logprobs": {"tokens": [" a"], "token_logprobs": [-0.5], "text_offset": [9],
                           "top_logprobs": [{" a": -0.5, " positive": -1.0, "positive": -3.0}]}}
    assert next_token_logprobs(legacy) == {" a": -0.5, " positive": -1.0, "positive": -3.0}
    server = {"logprobs": {"content": [{"token": " a", "logprob": -0.5, "top_logprobs": [
        {"id": 1, "token": " positive", "logprob": -1.0}, {"id": 2, "token": " positive", "logprob": -4.0}]}]}}
    assert next_token_logprobs(server) == {" positive": -1.0}  # the same text twice: the likelier one
    assert next_token_logprobs({"logprobs": {"tokens": [], "top_logprobs": []}}) == {}  # stopped: no token
    assert next_token_logprobs({"logprobs": {"content": []}}) == {}
    for bad in ({"logprobs": None}, {}, {"logprobs": {"tokens": [" a"], "token_logprobs": [-0.5]}},
                {"logprobs": {"tokens": [" a"], "top_logprobs": [None]}}, {"logprobs": {"top_logprobs": [{}]}}):
        with pytest.raises(NoNextLogprobs):
            next_token_logprobs(bad)
    top = {" ": -1.0, " pos": -2.0, " po": -3.0, "positive": -4.0}
    assert prefix_token(top, " positive") == " pos"  # the longest; a lone space is no evidence
    assert prefix_token({" ": -1.0, " positive": -2.0}, " positive") is None


# --- faults ---------------------------------------------------------------------------------------


def test_500_twice_then_success_is_retried(serve) -> None:
    server = serve("echo")
    server.faults = ["500", "500"]
    scorer = scorer_for(server, logprob_style="echo", batch_size=1)
    got = scorer.logprobs(demos=DEMOS, queries=QUERIES[:2])
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES[:2]), atol=1e-9)
    assert scorer.requests == server.requests == 6 and scorer.retries == 2


def test_a_transient_500_on_the_first_list_keeps_lists(serve, recwarn: pytest.WarningsRecorder) -> None:
    server = serve("echo")
    server.faults = ["500"]
    scorer = scorer_for(server, logprob_style="echo", batch_size=16)
    got = scorer.logprobs(demos=DEMOS, queries=QUERIES[:3])  # 6 prompts: list (500), 1 alone, then 5 as a list
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES[:3]), atol=1e-9)
    assert server.batch_sizes == [1, 5] and scorer.batch_size == 16
    assert not [w for w in recwarn if "refused a list" in str(w.message)]


def test_429_honours_retry_after(serve) -> None:
    server = serve("echo")
    server.faults = ["429", "429"]
    scorer = scorer_for(server, backoff=30.0, logprob_style="echo")  # only Retry-After: 0 makes this fast
    t0 = time.perf_counter()
    got = scorer.logprobs(demos=DEMOS, queries=QUERIES[:2])
    assert time.perf_counter() - t0 < 5.0
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES[:2]), atol=1e-9)
    assert scorer.requests == 3
    wait = scorer.transport.wait
    assert wait.delay(0, 10_000.0) == MAX_RETRY_AFTER
    assert 0.5 <= wait.delay(0, None) / 30.0 <= 1.0
    assert 0.5 <= wait.delay(3, None) / 30.0 <= 1.0  # capped at MAX_BACKOFF before the jitter
    # a positive Retry-After is waited out even with no back-off of our own
    server.faults = ["429:1"]
    patient = scorer_for(server, backoff=0.0)
    t0 = time.perf_counter()
    patient.logprobs(demos=DEMOS, queries=QUERIES[2:3])
    assert time.perf_counter() - t0 >= 0.9 and patient.retries == 1


def test_retry_after_forms() -> None:
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25.0 <= retry_after_seconds(later) <= 30.0
    assert retry_after_seconds(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0


def test_a_redirect_is_refused_and_the_key_stays_home(serve) -> None:
    server, elsewhere = serve("echo"), serve("echo")
    server.redirect_to = elsewhere.url + "/v1/completions"
    server.faults = ["redirect"]
    with pytest.raises(ModelError, match=r"HTTP 307 .*redirects are not followed") as info:
        scorer_for(server, api_key=SECRET, logprob_style="echo").logprobs(demos=DEMOS, queries=QUERIES[:1])
    assert server.requests == 1 and elsewhere.requests == 0 and not elsewhere.auth
    assert "SECRET" not in str(info.value)
    assert_short(info.value)


def test_slow_server_is_retried_then_a_clear_error(serve) -> None:
    server = serve("echo")
    server.faults = ["slow"]
    scorer = scorer_for(server, timeout=0.3, max_retries=2)
    got = scorer.logprobs(demos=DEMOS, queries=QUERIES[:1])  # slow once, then fine
    np.testing.assert_allclose(got, truth(DEMOS, QUERIES[:1]), atol=1e-9)
    server.faults = ["slow"] * 3
    with pytest.raises(ModelError) as info:
        scorer.logprobs(demos=DEMOS, queries=QUERIES[1:2])
    msg = str(info.value)
    assert "3 tries" in msg and "0.3s" in msg and server.url in msg and MODEL in msg
    assert_short(msg)


def test_malformed_json_is_named(serve) -> None:
    server = serve("echo")
    server.faults = ["malformed"]
    with pytest.raises(ModelError, match="malformed JSON") as info:
        scorer_for(server).logprobs(demos=DEMOS, queries=QUERIES[:1])
    assert "/v1/completions" in str(info.value)
    assert_short(info.value)


@pytest.mark.parametrize("style", ["chat", "generated_only", "reject_echo"])
def test_no_prompt_logprobs_is_refused(serve, style: str) -> None:
    server = serve(style)
    with pytest.raises(ModelError) as info:
        scorer_for(server).logprobs(demos=DEMOS, queries=QUERIES[:2])
    assert NO_PROMPT_LOGPROBS in str(info.value)
    assert_short(info.value)
    if style == "reject_echo":
        assert "Only no echo is supported" in str(info.value)
    with pytest.raises(ModelError, match="no prompt log-probs"):
        scorer_for(server, logprob_style="vllm").logprobs(demos=DEMOS, queries=QUERIES[:2])


def test_wrong_model_names_the_server_message(serve) -> None:
    server = serve("echo")
    with pytest.raises(ModelError, match=r"HTTP 404.*does not exist.*expected /v1/completions") as info:
        scorer_for(server, model="nope").logprobs(demos=DEMOS, queries=QUERIES[:1])
    assert_short(info.value)
    long_words = {"error": {"message": "the server explains at length " * 20}}
    server.respond = lambda req: (400, long_words)  # type: ignore[method-assign]
    with pytest.raises(ModelError, match="the server explains at length") as info:
        scorer_for(server, logprob_style="echo").logprobs(demos=DEMOS, queries=QUERIES[:1])
    assert_short(info.value)


def test_no_server_says_so(serve) -> None:
    server = serve("echo")
    url = server.url
    server.stop()
    scorer = OpenAICompletionsScorer(SPEC, base_url=url, model=MODEL, backoff=0.01)
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=r"is the server running at http://127\.0\.0\.1:\d+\?"):
        scorer.logprobs(demos=DEMOS, queries=QUERIES[:1])
    assert time.perf_counter() - t0 < 2.0


def test_server_dies_mid_run_keeps_what_was_scored(serve, tmp_path: Path) -> None:
    server = serve("echo")
    port = server.port
    server.faults = [None, None, None, "die"]  # one query (two labels) per request, one at a time
    cache = ScoreCache(tmp_path / "scores.sqlite")
    try:
        scorer = scorer_for(server, cache=cache, batch_size=2, max_concurrency=1, max_retries=3, logprob_style="echo")
        with pytest.raises(ModelError, match="is the server running at") as info:
            scorer.logprobs(demos=DEMOS, queries=QUERIES)
        assert "\n" not in str(info.value)
        assert len(cache) == 3
        cache.close()
        cache = ScoreCache(tmp_path / "scores.sqlite")  # as a new run would
        again = serve("echo", port=port)
        scorer = scorer_for(again, cache=cache, batch_size=2, max_concurrency=1, logprob_style="echo")
        got = scorer.logprobs(demos=DEMOS, queries=QUERIES)
        np.testing.assert_allclose(got, truth(DEMOS, QUERIES), atol=1e-9)
        assert again.requests == 3
        asked = set(again.prompts_seen)
        for q in QUERIES[:3]:
            assert not any(q.text in p.rsplit("\n\n", 1)[-1] for p in asked)
        for q in QUERIES[3:]:
            assert any(q.text in p.rsplit("\n\n", 1)[-1] for p in asked)
        assert scorer.stats.cache_hits == 3 and scorer.stats.cache_misses == 3
    finally:
        cache.close()


# --- the context window ---------------------------------------------------------------------------

LONG = Example(text=" ".join(["long"] * 40), label="positive", uid="long-1")
HUGE = Example(text=" ".join(["huge"] * 200), label="negative", uid="huge-1")


def row_tokens(demos: list[Example], query: Example) -> int:
    """A direct-mode row's tokens on the fake: its longest label's prompt and the one generated token."""
    context = render_prefix(SPEC, demos) + render_query(SPEC, query)
    return max(len(tokenize(context + c)) for c in label_continuations(SPEC)) + 1


def windowed(serve, **kwargs: Any) -> FakeServer:
    """A fake whose window holds QUERIES and LONG after one demonstration, not LONG after two nor HUGE alone."""
    server = serve("echo", **kwargs)
    server.n_ctx = row_tokens(DEMOS[1:], LONG)
    assert row_tokens(DEMOS, LONG) > server.n_ctx >= max(row_tokens(DEMOS, q) for q in QUERIES)
    assert row_tokens([], HUGE) > server.n_ctx
    return server


def expected_window_rows(queries: list[Example]) -> np.ndarray:
    """The window rule's answer: LONG without its leftmost demonstration, HUGE a failure, the rest as they are."""
    rows = []
    for q in queries:
        if q is HUGE:
            rows.append(failure_row(SPEC, q))
        else:
            rows.append(truth(DEMOS[1:] if q is LONG else DEMOS, [q])[0])
    return np.array(rows)


@pytest.mark.parametrize("dialect", sorted(OVERFLOW_BODIES))
def test_a_row_over_the_window_drops_demos_then_fails_in_every_servers_words(serve, dialect: str) -> None:
    server = windowed(serve)
    server.overflow_format = dialect
    queries = [QUERIES[0], LONG, QUERIES[1], HUGE]
    scorer = scorer_for(server, batch_size=4)
    with pytest.warns(ContextWindowWarning) as caught:
        got = scorer.logprobs(demos=DEMOS, queries=queries)
    np.testing.assert_allclose(got, expected_window_rows(queries), atol=1e-9)
    assert scorer.stats.rows_dropped_demos == 1 and scorer.stats.rows_failed == 1
    notes = [str(w.message) for w in caught]
    assert len(notes) == 2 and all(len(n) < 200 and "\n" not in n for n in notes), notes
    window = "the server's context window" if dialect == "unnumbered" else f"the server's {server.n_ctx}-token"
    assert notes[0].startswith("row 'long-1': dropped 1 of 2 demonstrations (leftmost first)") and window in notes[0]
    assert notes[1].startswith("row 'huge-1': the query alone") and notes[1].endswith("scored as a failure")
    if dialect != "unnumbered":
        assert f"is {row_tokens([], HUGE):,} tokens" in notes[1]  # the server's count and the generated token
    assert server.overflows >= 3  # LONG after two demonstrations, HUGE after two, one, none
    assert window_line(scorer.stats).startswith("context window: 1 LM rows scored as failures")


def test_rows_that_fit_are_sent_as_before(serve) -> None:
    plain = serve("echo")
    roomy = serve("echo")
    roomy.n_ctx, roomy.props, roomy.tokenize = 10_000, True, "llama_server"
    for server in (plain, roomy):
        got = scorer_for(server, batch_size=4).logprobs(demos=DEMOS, queries=QUERIES)
        np.testing.assert_allclose(got, truth(DEMOS, QUERIES), rtol=0, atol=0)
    def sent(server: FakeServer) -> list[str]:
        return sorted(json.dumps(b, sort_keys=True) for b in server.bodies)  # concurrent: any order

    assert sent(roomy) == sent(plain) and roomy.overflows == 0
    assert roomy.tokenized == []  # every row is within the window by its byte count: nothing to measure


@pytest.mark.parametrize(("says", "shape"), [("props", "llama_server"), ("models", "vllm")])
def test_a_server_that_says_its_window_has_long_rows_fitted_before_they_are_sent(serve, says: str,
                                                                                  shape: str) -> None:
    server = windowed(serve)
    setattr(server, says, True)
    server.tokenize = shape
    queries = [QUERIES[0], LONG, HUGE]
    scorer = scorer_for(server)
    with pytest.warns(ContextWindowWarning, match=f"the {server.n_ctx:,}-token context window"):
        got = scorer.logprobs(demos=DEMOS, queries=queries)
    np.testing.assert_allclose(got, expected_window_rows(queries), atol=1e-9)
    assert scorer.stats.rows_dropped_demos == 1 and scorer.stats.rows_failed == 1
    assert server.overflows == 0  # nothing sent that the server would refuse
    assert server.tokenized and all("long" in t or "huge" in t or t == "a" for t in server.tokenized)
    assert not any(HUGE.text in p for p in server.prompts_seen)


def test_next_token_rows_over_the_window_follow_the_same_rule(serve) -> None:
    server = windowed(serve, next_token=True)
    queries = [LONG, QUERIES[0], HUGE, QUERIES[1]]  # the style is settled on the first row that fits
    scorer = scorer_for(server, batch_size=4)
    with pytest.warns(ContextWindowWarning):
        got = scorer.logprobs(demos=DEMOS, queries=queries)
    np.testing.assert_allclose(got, expected_window_rows(queries), atol=1e-9)
    assert scorer.style == "next_token" and not any(b.get("echo") for b in server.bodies)
    assert scorer.stats.rows_dropped_demos == 1 and scorer.stats.rows_failed == 1


def test_a_cut_row_is_cached_with_its_count_and_a_failed_row_is_not(serve, tmp_path: Path) -> None:
    server = windowed(serve)
    cache = ScoreCache(tmp_path / "scores.sqlite")
    try:
        with pytest.warns(ContextWindowWarning):
            first = scorer_for(server, cache=cache).logprobs(demos=DEMOS, queries=[LONG, HUGE])
        n = server.requests
        again = scorer_for(server, cache=cache)
        with pytest.warns(ContextWindowWarning, match="huge-1"):
            second = again.logprobs(demos=DEMOS, queries=[LONG, HUGE])
        np.testing.assert_array_equal(first, second)
        assert again.stats.cache_hits == 1 and again.stats.rows_dropped_demos == 1 and again.stats.rows_failed == 1
        assert server.requests > n and all(HUGE.text in p for b in server.bodies[n:] for p in b["prompt"])
    finally:
        cache.close()


def test_other_refusals_are_not_taken_for_the_window() -> None:
    for body in ({"error": {"message": "Requested sample logprobs of 1000, which is greater than max allowed: 20"}},
                 {"error": {"message": "Only no echo is supported"}}, "Bad Request", None):
        assert context_overflow(body) is None
    newer_vllm = {"error": {"message": "'max_tokens' or 'max_completion_tokens' is too large: 1. This model's maximum "
                                       "context length is 2048 tokens and your request has 2048 input tokens "
                                       "(1 > 2048 - 2048)."}}
    assert context_overflow(newer_vllm) == Overflow(prompt_tokens=2048, window=2048)
    sglang = {"error": {"message": "The input (3000 tokens) is longer than the model's context length (2048 tokens)."}}
    assert context_overflow(sglang) == Overflow(prompt_tokens=3000, window=2048)


# --- the API key ----------------------------------------------------------------------------------


def test_api_key_is_sent_but_never_shown(serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve("echo")
    cache = ScoreCache(tmp_path / "scores.sqlite")
    messages: list[str] = []
    try:
        scorer = scorer_for(server, api_key=SECRET, cache=cache)
        scorer.logprobs(demos=DEMOS, queries=QUERIES)
        assert server.auth and all(a == f"Bearer {SECRET}" for a in server.auth)
        for text in (scorer.fingerprint, repr(scorer), str(scorer), repr(vars(scorer))):
            assert "SECRET" not in text
        assert scorer.fingerprint == f"openai:{server.url}:{MODEL}:direct:0"
        for faults, kwargs in ((["401echo"], {}), (["malformed"], {}),
                               (["500"] * 2, {"max_retries": 1, "batch_size": 1})):
            server.faults = list(faults)
            with pytest.raises(ModelError) as info:
                scorer_for(server, api_key=SECRET, **kwargs).logprobs(demos=DEMOS, queries=[QUERIES[0], DEMOS[0]])
            messages.append(str(info.value))
        server.style = "chat"
        with pytest.raises(ModelError) as info:
            scorer_for(server, api_key=SECRET).logprobs(demos=[], queries=QUERIES[:1])
        messages.append(str(info.value))
        assert "HTTP 401" in messages[0] and "***" in messages[0]
        assert all("SECRET" not in m for m in messages)
        assert_short(*messages)
    finally:
        cache.close()
    for path in tmp_path.iterdir():
        assert SECRET.encode() not in path.read_bytes() and b"SECRET" not in path.read_bytes()
    # from the environment, in order
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-openai-env")
    server.style = "echo"
    scorer_for(server).logprobs(demos=[], queries=QUERIES[:1])
    assert server.auth[-1] == "Bearer sk-from-openai-env"
    monkeypatch.setenv("RL_SELECT_API_KEY", "sk-from-rl-env")
    scorer_for(server).logprobs(demos=[], queries=QUERIES[1:2])
    assert server.auth[-1] == "Bearer sk-from-rl-env"
    monkeypatch.delenv("RL_SELECT_API_KEY")
    monkeypatch.delenv("OPENAI_API_KEY")
    scorer_for(server).logprobs(demos=[], queries=QUERIES[2:3])
    assert server.auth[-1] is None


# --- configuration and parsing --------------------------------------------------------------------


def test_base_url_model_from_environment_and_url_forms(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve("echo")
    with pytest.raises(ModelError, match="RL_SELECT_BASE_URL"):
        OpenAICompletionsScorer(SPEC, model=MODEL)
    monkeypatch.setenv("RL_SELECT_BASE_URL", server.url + "/v1/")
    with pytest.raises(ModelError, match="RL_SELECT_MODEL"):
        OpenAICompletionsScorer(SPEC)
    monkeypatch.setenv("RL_SELECT_MODEL", MODEL)
    scorer = OpenAICompletionsScorer(SPEC)
    assert scorer.fingerprint == f"openai:{server.url}/v1:{MODEL}:direct:0"
    np.testing.assert_allclose(scorer.logprobs(demos=[], queries=QUERIES[:1]), truth([], QUERIES[:1]), atol=1e-9)

    assert split_base_url("http://h:8000") == ("http://h:8000/v1/completions", "http://h:8000")
    assert split_base_url("http://h:8000/v1/") == ("http://h:8000/v1/completions", "http://h:8000/v1")
    endpoint, shown = split_base_url("https://h/api/v1?key=abc")
    assert endpoint == "https://h/api/v1/completions?key=abc" and shown == "https://h/api/v1"
    with pytest.raises(ModelError, match="credentials") as info:
        split_base_url("http://user:hunter2@h:8000")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ModelError, match="bad base URL"):
        split_base_url("ftp://h")
    with pytest.raises(ModelError, match="scoring mode"):
        OpenAICompletionsScorer(SPEC, mode="sideways")  # type: ignore[arg-type]


def test_token_straddling_the_boundary_is_counted() -> None:
    prompt = "Answer:yes"  # context "Answer:" ; tokens "Answer", ":y", "es" -> ":y" straddles
    logprobs = {"tokens": ["Answer", ":y", "es", " the"], "token_logprobs": [None, -1.0, -2.0, -9.0],
                "text_offset": [0, 6, 8, 10]}
    assert echo_continuation(logprobs, prompt, 7, echoed_text=prompt + " the") == (-3.0, 2, 3)
    # on the boundary exactly: only the continuation's own token; the generated one never counts
    assert echo_continuation(logprobs, prompt, 8) == (-2.0, 1, 3)
    entries = [None, {"1": {"logprob": -1.0, "decoded_token": ":y"}}, {"2": {"logprob": -2.0, "decoded_token": "es"}}]
    assert vllm_continuation(entries, prompt, 7) == (-3.0, 2, 3)
    assert vllm_continuation(entries, prompt, 8) == (-2.0, 1, 3)
    with pytest.raises(ModelError, match="first token"):
        echo_continuation(logprobs, prompt, 0)


# --- the CLI on the OpenAI-compatible backend -------------------------------------------------------


def test_cli_evaluate_runs_against_the_server(serve, tmp_path: Path, data_root, monkeypatch) -> None:
    """`rl-select evaluate --backend openai` end to end; a rerun asks the server for nothing."""
    from typer.testing import CliRunner

    from rl_select.cli import app

    server = serve("echo")
    monkeypatch.setenv("RL_SELECT_API_KEY", "sk-test-SECRET-cli")
    args = ["evaluate", "--backend", "openai", "--base-url", server.url, "--model", MODEL, "--selector", "random",
            "--task", "sst2", "--data", str(data_root / "sst2"), "--k", "2", "--n-pool", "4", "--n-val", "4",
            "--n-test", "6", "--seeds", "0", "--cache", str(tmp_path / "c.sqlite"), "--out", str(tmp_path / "runs")]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    asked = server.requests
    assert asked > 0
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    assert server.requests == asked
    for run in (tmp_path / "runs").iterdir():
        for f in run.iterdir():
            assert b"SECRET" not in f.read_bytes(), f


def test_config_sets_the_request_limits(serve, tmp_path: Path) -> None:
    from rl_select.errors import ConfigError
    from rl_select.experiments.config import load_config
    from rl_select.experiments.harness import scorer_factory

    server = serve("echo")
    cfg = load_config(None, {"backend": "openai", "base_url": server.url, "model": MODEL, "max_concurrency": 2,
                             "timeout": 7.5, "max_retries": 1, "cache": "none"})
    scorer = scorer_factory(cfg)(SPEC)
    assert (scorer.max_concurrency, scorer.timeout, scorer.max_retries) == (2, 7.5, 1)
    with pytest.raises(ConfigError, match="max_concurrency=0"):
        load_config(None, {"max_concurrency": 0})
