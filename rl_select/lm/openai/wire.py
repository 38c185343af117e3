"""Wire formats of ``/v1/completions`` log-probs: request bodies, response parsing, style detection.

Four response styles are understood. One reads the NEXT token's distribution after the prompt:

* ``"next_token"`` (vLLM, SGLang, llama.cpp's ``llama-server``, llama-cpp-python, OpenAI completions
  models): the prompt is the context alone (demonstrations + query, no label) and the request asks
  for ``max_tokens: 1, logprobs: N, temperature: 0``; the first generated token's top-``N``
  log-probs (:func:`next_token_logprobs`) hold each label whose continuation (``" positive"``) is ONE
  token, keyed by the token's text. The text must equal the continuation exactly, leading space
  included (:func:`label_logprobs`); a label that is not there is never read as zero (the scorer asks
  again with more, or scores it with an echo style). One request per query, and since the prompt
  carries no label and asks no prompt log-probs, servers with prefix caching reuse the shared
  demonstration prefix. Two layouts are parsed: OpenAI's legacy ``{"top_logprobs": [{token: lp}]}``
  and llama-server's ``{"content": [{"top_logprobs": [{"token", "logprob"}]}]}``.

Three read the log-probs the server gives the prompt's OWN tokens, for a prompt
``context + continuation`` (any continuation, several tokens included):

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
  ``i + 1``, and the true log-prob of a continuation token is read there. :func:`looks_late` and
  :func:`confirms_late` tell such a server from a correct one.

For a one-token continuation ``"next_token"`` and the echo styles read the same number,
``log P(token | context)``; they differ only by the server's floating-point noise.

**Which tokens are the continuation's** (echo styles). A token belongs to the continuation when it ends after the
context does (``end > len(context)``) and starts before the prompt's end. So a token that straddles
the context/continuation boundary (BPE merged the context's last characters with the continuation's
first ones) is counted, with its whole log-prob: that is the only choice that scores every character
of the continuation, and it is what a token-level scorer would see; the count for length
normalisation includes it too. With the templates of :mod:`rl_select.prompts` the boundary falls before
a space or after a newline, where BPE tokenisers split anyway, so a straddle is rare.

Every echo-style parser returns ``(sum of log-probs, continuation tokens, prompt tokens)`` and raises
:class:`NoPromptLogprobs` when the response holds no prompt log-probs (the caller may try another
style), or :class:`~rl_select.errors.ModelError` when it holds them but they cannot score the prompt.
The next-token parser raises :class:`NoNextLogprobs` when the response holds no top log-probs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rl_select.errors import ModelError

#: A concrete prompt-log-prob (echo) style: ``"auto"`` resolves to one of these when ``"next_token"`` does
#: not apply (the labels are several tokens, channel mode, a server without next-token log-probs).
Style = Literal["echo", "echo_shifted", "vllm"]
#: Echo styles ``"auto"`` tries, in order (``"echo"`` may turn out to be ``"echo_shifted"``).
AUTO_STYLES: tuple[Style, ...] = ("echo", "vllm")
#: ``(summed log-prob of a continuation, its token count, prompt tokens scored)``.
Parsed = tuple[float, int, int]

#: The message for a server without prompt log-probs (a chat-only API; llama.cpp's ``llama-server``, which does
#: not echo; vLLM, llama-cpp-python's server and OpenAI completions models have them).
NO_PROMPT_LOGPROBS = "no prompt log-probs in the answer; expected /v1/completions with echo or prompt_logprobs"

#: The message for a server without next-token log-probs (vLLM, SGLang, llama.cpp's ``llama-server``,
#: llama-cpp-python's server and OpenAI completions models have them; chat-only APIs do not).
NO_NEXT_TOKEN_LOGPROBS = "no next-token log-probs in the answer; expected /v1/completions with integer logprobs"

#: Tokens generated per request: 1 is accepted everywhere (vLLM refuses 0); the token is ignored.
MAX_TOKENS = 1
#: ``logprobs`` asked for in echo style: llama.cpp reads 0 as "none", so 1.
ECHO_TOP_LOGPROBS = 1
#: Top log-probs asked for per token in the ``"echo_shifted"`` style (where continuation log-probs are read).
SHIFTED_TOP_LOGPROBS = 50
#: A prompt whose continuation is not among those is asked again, alone, with this many.
SHIFTED_TOP_LOGPROBS_RETRY = 1000
#: Top log-probs asked for the next token in the ``"next_token"`` style: vLLM's default cap (``--max-logprobs``).
NEXT_TOKEN_TOP_LOGPROBS = 20
#: A query whose label is not among those is asked again, alone, with this many (a server that caps
#: ``logprobs`` lower answers HTTP 400; the label is then scored with an echo style).
NEXT_TOKEN_TOP_LOGPROBS_RETRY = 1000
#: A prompt whose greedy continuation differs from the token that ends it (" 9" after ","): it tells a
#: server that echoes log-probs one position late from one that does not.
SHIFT_PROBE = "1, 2, 3, 4, 5, 6, 7, 8,"
#: Characters of a server's error body kept when it has no message field.
ERROR_BODY_CHARS = 400
#: Characters of a server's own words quoted in one of our messages (:func:`clip`).
QUOTE_CHARS = 70


@dataclass(frozen=True)
class Overflow:
    """A server's answer that a prompt is longer than its context window (:func:`context_overflow`).

    Attributes:
        prompt_tokens: The prompt's tokens, as the server counted them (``None``: not said).
        window: The server's context window in tokens (``None``: not said).
    """

    prompt_tokens: int | None = None
    window: int | None = None


class NoPromptLogprobs(Exception):
    """A response without prompt log-probs (triggers the style fallback)."""


class NotInTop(ModelError):
    """A continuation token outside the top log-probs a late-echo server gave (``"echo_shifted"``)."""


class NoNextLogprobs(Exception):
    """A response without the generated token's top log-probs (``"next_token"`` style)."""


class ChoiceCountError(ModelError):
    """A response with another number of choices than prompts (a server that takes no list of prompts)."""


# --- requests -------------------------------------------------------------------------------------


def request_body(style: Style, model: str, prompts: Sequence[str], *, top: int = SHIFTED_TOP_LOGPROBS
                 ) -> dict[str, Any]:
    """The JSON body that asks for the prompt log-probs of ``prompts`` in ``style``.

    Args:
        style: The response style to ask for.
        model: Model name as the server knows it.
        prompts: Full prompt texts, ``context + continuation``.
        top: Top log-probs asked per token in the ``"echo_shifted"`` style.

    Returns:
        A completions request: one greedy token per prompt plus the style's log-prob options.
    """
    body: dict[str, Any] = {"model": model, "prompt": list(prompts), "max_tokens": MAX_TOKENS, "temperature": 0}
    if style == "echo":
        body.update(echo=True, logprobs=ECHO_TOP_LOGPROBS)
    elif style == "echo_shifted":
        body.update(echo=True, logprobs=top)
    else:
        body.update(prompt_logprobs=0)
    return body


def next_token_body(model: str, prompts: Sequence[str], *, top: int = NEXT_TOKEN_TOP_LOGPROBS) -> dict[str, Any]:
    """The JSON body that asks for the top-``top`` log-probs of the token after each prompt.

    Args:
        model: Model name as the server knows it.
        prompts: The contexts alone (demonstrations + query, no label).
        top: Top log-probs asked for (the completions API's integer ``logprobs``).

    Returns:
        A greedy one-token completions request without ``echo``.
    """
    return {"model": model, "prompt": list(prompts), "max_tokens": MAX_TOKENS, "temperature": 0, "logprobs": top}


# --- responses ------------------------------------------------------------------------------------


def clip(text: str, n: int = QUOTE_CHARS) -> str:
    """``text`` on one line, cut to ``n`` characters (``"..."`` at the end when cut), so a message stays short."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def error_text(body: Any) -> str:
    """The message of an error body: OpenAI's ``{"error": {"message"}}``, ``{"detail"}``, or plain text."""
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            for field in ("message", "detail", "msg"):
                if err.get(field):
                    return str(err[field])
            return json.dumps(err)[:ERROR_BODY_CHARS]
        if body.get("message"):
            return str(body["message"])
        return str(err)
    return str(body)


def ordered_choices(response: Any, n: int) -> list[Mapping[str, Any]]:
    """The response's choices in prompt order (matched by ``index`` when every choice has one).

    Raises:
        ChoiceCountError: when there are not ``n`` choices.
        ModelError: on an error object or a malformed response.
    """
    if not isinstance(response, Mapping):
        raise ModelError("malformed JSON response: the top level is not an object")
    if "choices" not in response and "error" in response:
        raise ModelError(f"the server returned an error: {clip(error_text(response))}")
    choices = response.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, Mapping) for c in choices):
        raise ModelError("malformed JSON response: no 'choices' list of objects")
    if len(choices) != n:
        raise ChoiceCountError(f"the server returned {len(choices)} choices for {n} prompts; expected one each "
                               f"(try batch_size=1)")
    if not all("index" in c for c in choices):
        return list(choices)
    ordered: list[Mapping[str, Any] | None] = [None] * n
    for c in choices:
        i = c["index"]
        if not isinstance(i, int) or not 0 <= i < n or ordered[i] is not None:
            raise ModelError(f"malformed JSON response: bad or repeated choice index {i!r}")
        ordered[i] = c
    return ordered  # type: ignore[return-value]


def continuation(style: Style, choice: Mapping[str, Any], prompt: str, n_context: int) -> Parsed:
    """Parse one choice in ``style``: see :func:`echo_continuation` and its siblings."""
    if style == "echo":
        return echo_continuation(choice.get("logprobs"), prompt, n_context, echoed_text=choice.get("text"))
    if style == "echo_shifted":
        return shifted_echo_continuation(choice.get("logprobs"), prompt, n_context)
    return vllm_continuation(choice.get("prompt_logprobs"), prompt, n_context)


def _is_special(token: Any) -> bool:
    return isinstance(token, str) and len(token) > 2 and token.startswith("<") and token.endswith(">")


def _offsets(logprobs: Mapping[str, Any]) -> list[int]:
    """The ``text_offset`` list as ints."""
    offsets = logprobs.get("text_offset")
    if not isinstance(offsets, list) or not offsets:
        raise NoPromptLogprobs
    try:
        return [int(o) for o in offsets]
    except (TypeError, ValueError):
        raise NoPromptLogprobs from None


def _prompt_token_spans(starts: list[int], prompt: str) -> list[tuple[int, int, int]]:
    """``(index, start, end)`` character spans of the echoed prompt tokens (generated ones dropped)."""
    spans = []
    for k, start in enumerate(starts):
        if 0 <= start < len(prompt):
            end = starts[k + 1] if k + 1 < len(starts) else len(prompt)
            spans.append((k, start, min(end, len(prompt))))
    return spans


def echo_continuation(logprobs: Any, prompt: str, n_context: int, *, echoed_text: Any = None) -> Parsed:
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
        NoPromptLogprobs: when the object holds no prompt tokens' log-probs.
        ModelError: when the continuation would start at the prompt's first token (no log-prob exists).
    """
    if not isinstance(logprobs, Mapping):
        raise NoPromptLogprobs
    lps, tokens = logprobs.get("token_logprobs"), logprobs.get("tokens")
    starts = _offsets(logprobs)
    if not isinstance(lps, list) or len(lps) != len(starts):
        raise NoPromptLogprobs
    if isinstance(echoed_text, str) and not echoed_text.startswith(prompt):
        raise NoPromptLogprobs  # the server did not echo the prompt
    if len(lps) <= MAX_TOKENS:
        raise NoPromptLogprobs  # generated token(s) only: the prompt was not scored
    if isinstance(tokens, list) and len(tokens) == len(starts) and len(starts) > 1 \
            and _is_special(tokens[0]) and not prompt.startswith(tokens[0]):
        starts = [s - starts[1] for s in starts]
    spans = _prompt_token_spans(starts, prompt)
    total, n_cont = 0.0, 0
    for k, start, end in spans:
        if end <= n_context:
            continue
        lp = lps[k]
        if lp is None:
            if k == 0 or start == 0:
                raise ModelError("the scored continuation starts at the prompt's first token, which has no log-prob")
            raise NoPromptLogprobs
        if not isinstance(lp, (int, float)):
            raise NoPromptLogprobs
        total += float(lp)
        n_cont += 1
    if n_cont == 0:
        raise NoPromptLogprobs
    return total, n_cont, len(spans)


def shifted_echo_continuation(logprobs: Any, prompt: str, n_context: int) -> Parsed:
    """Like :func:`echo_continuation`, for a server whose echo is one position late (``"echo_shifted"``).

    The log-prob of prompt token ``k`` is ``top_logprobs[k - 1][tokens[k]]``: the distribution reported
    at token ``k - 1`` is the one that predicts token ``k``.

    Raises:
        NoPromptLogprobs: when there are no prompt tokens or top log-probs.
        NotInTop: when a continuation token is not among the top log-probs of its position.
        ModelError: when the continuation starts at the prompt's first token.
    """
    if not isinstance(logprobs, Mapping):
        raise NoPromptLogprobs
    tokens, tops = logprobs.get("tokens"), logprobs.get("top_logprobs")
    spans = _prompt_token_spans(_offsets(logprobs), prompt)
    if not isinstance(tokens, list) or not isinstance(tops, list) or len(tokens) != len(tops) or len(spans) < 2:
        raise NoPromptLogprobs
    total, n_cont = 0.0, 0
    for k, _start, end in spans:
        if end <= n_context:
            continue
        prev = tops[k - 1] if k >= 1 else None
        if not isinstance(prev, Mapping):
            raise ModelError("the scored continuation starts at the prompt's first tokens, which have no log-prob "
                             "on this server")
        lp = prev.get(tokens[k])
        if not isinstance(lp, (int, float)):
            raise NotInTop(f"continuation token {clip(repr(tokens[k]), 24)} not among the {len(prev)} top log-probs "
                           f"of its late echo (llama-cpp-python); raise shifted_top_logprobs or use vLLM")
        total += float(lp)
        n_cont += 1
    if n_cont == 0:
        raise NoPromptLogprobs
    return total, n_cont, len(spans)


def vllm_continuation(prompt_logprobs: Any, prompt: str, n_context: int) -> Parsed:
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
        NoPromptLogprobs: when there are no prompt log-probs.
        ModelError: when an entry lacks its decoded token, or the continuation reaches the first token.
    """
    if not isinstance(prompt_logprobs, list) or len(prompt_logprobs) < 2:
        raise NoPromptLogprobs
    end = len(prompt)
    total, n_cont = 0.0, 0
    for k in range(len(prompt_logprobs) - 1, -1, -1):
        if end <= n_context:
            break
        entry = prompt_logprobs[k]
        if entry is None:
            if k == 0:
                raise ModelError("the scored continuation starts at the prompt's first token, which has no log-prob")
            raise NoPromptLogprobs
        if not isinstance(entry, Mapping) or not entry:
            raise NoPromptLogprobs
        info = next(iter(entry.values()))
        if not isinstance(info, Mapping) or not isinstance(info.get("logprob"), (int, float)):
            raise NoPromptLogprobs
        decoded = info.get("decoded_token")
        if not isinstance(decoded, str):
            raise ModelError("vLLM prompt_logprobs lack 'decoded_token'; use logprob_style='echo' with this server")
        total += float(info["logprob"])
        n_cont += 1
        end -= len(decoded)
    if n_cont == 0:
        raise NoPromptLogprobs
    return total, n_cont, len(prompt_logprobs)


# --- the next token's distribution ---------------------------------------------------------------


def _logprob(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def next_token_logprobs(choice: Mapping[str, Any]) -> dict[str, float]:
    """Token text -> log-prob, from the first generated token's top log-probs in one choice.

    Reads OpenAI's legacy layout (``logprobs.top_logprobs[0]``, a ``{token: logprob}`` object) and
    llama.cpp's ``llama-server`` layout (``logprobs.content[0].top_logprobs``, a list of
    ``{"token", "logprob"}``). Two entries with the same text keep the larger log-prob.

    Returns:
        The distribution's top entries; ``{}`` when the server generated no token (it stopped at the
        end of text at once: llama-cpp-python then reports no log-probs).

    Raises:
        NoNextLogprobs: when the choice holds no top log-probs at all.
    """
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, Mapping):
        raise NoNextLogprobs
    out: dict[str, float] = {}

    def keep(token: Any, value: Any) -> None:
        lp = _logprob(value)
        if isinstance(token, str) and lp is not None and lp > out.get(token, float("-inf")):
            out[token] = lp

    if isinstance(logprobs.get("top_logprobs"), list):  # OpenAI legacy completions, vLLM, SGLang, llama-cpp-python
        tops = logprobs["top_logprobs"]
        if not tops:
            tokens = logprobs.get("tokens")
            if isinstance(tokens, list) and not tokens:
                return out  # no token generated
            raise NoNextLogprobs
        first = tops[0]
        if not isinstance(first, Mapping):
            raise NoNextLogprobs
        for token, value in first.items():
            keep(token, value)
    elif isinstance(logprobs.get("content"), list):  # llama.cpp's llama-server
        content = logprobs["content"]
        if not content:
            return out
        first = content[0]
        if not isinstance(first, Mapping) or not isinstance(first.get("top_logprobs"), list):
            raise NoNextLogprobs
        for entry in first["top_logprobs"]:
            if isinstance(entry, Mapping):
                keep(entry.get("token"), entry.get("logprob"))
    else:
        raise NoNextLogprobs
    if not out:
        raise NoNextLogprobs
    return out


def label_logprobs(top: Mapping[str, float], continuations: Sequence[str]) -> list[float | None]:
    """Each continuation's log-prob in ``top`` (a next-token distribution), ``None`` where absent.

    Matching is exact: the token text must equal the whole continuation, leading space included
    (``" positive"`` matches ``" positive"``, never ``"positive"``: those are different tokens).
    """
    return [top.get(c) for c in continuations]


def prefix_token(top: Mapping[str, float], continuation: str) -> str | None:
    """A top token that is a proper prefix of ``continuation`` (``" pos"`` of ``" positive"``), else ``None``.

    Evidence that the continuation is several tokens on the server's tokenizer (whitespace-only
    tokens are no evidence: they prefix every continuation that starts with a space).
    """
    best = None
    for token in top:
        if token.strip() and token != continuation and continuation.startswith(token):
            if best is None or len(token) > len(best):
                best = token
    return best


# --- detecting a one-token-late echo --------------------------------------------------------------


def top1_at_prompt_end(choice: Mapping[str, Any], prompt: str) -> tuple[str | None, str]:
    """``(top-1 token string at the prompt's last token, generated text)`` of an echo choice.

    ``(None, "")`` when the choice holds no echoed prompt with top log-probs.
    """
    lp, text = choice.get("logprobs"), choice.get("text")
    if not isinstance(lp, Mapping) or not isinstance(text, str) or not text.startswith(prompt):
        return None, ""
    try:
        spans = _prompt_token_spans(_offsets(lp), prompt)
    except NoPromptLogprobs:
        return None, ""
    tops = lp.get("top_logprobs")
    if not spans or not isinstance(tops, list) or spans[-1][0] >= len(tops):
        return None, ""
    top = tops[spans[-1][0]]
    if not isinstance(top, Mapping) or not top:
        return None, ""
    best = max(top.items(), key=lambda kv: kv[1] if isinstance(kv[1], (int, float)) else float("-inf"))[0]
    return str(best), text[len(prompt):]


def _top1_is_generated(choice: Mapping[str, Any], prompt: str) -> bool:
    top, generated = top1_at_prompt_end(choice, prompt)
    return bool(top) and top == generated


def looks_late(choices: Sequence[Mapping[str, Any]], prompts: Sequence[str]) -> bool:
    """Whether echo choices look one position late: at every prompt's last token the top-1 entry is the
    greedy continuation (a late echo reports the distribution AFTER that token there)."""
    return all(_top1_is_generated(c, p) for c, p in zip(choices, prompts))


def probe_body(model: str) -> dict[str, Any]:
    """The request that confirms a late echo: :data:`SHIFT_PROBE` in echo style."""
    return request_body("echo", model, [SHIFT_PROBE])


def confirms_late(choice: Mapping[str, Any]) -> bool:
    """Whether the answer to :func:`probe_body` is late: its last token (",") is not its greedy
    continuation (" 9"), so only a late echo shows the generated token as top-1 there."""
    return _top1_is_generated(choice, SHIFT_PROBE)


# --- the context window ---------------------------------------------------------------------------

#: An error that says the prompt does not fit the server's context window, in each server's words:
#: llama.cpp's ``llama-server`` (``exceed_context_size_error``: "request (N tokens) exceeds the available
#: context size (M tokens)"), vLLM ("This model's maximum context length is M tokens. However, you requested
#: N tokens ...", "The decoder prompt (length N) is longer than the maximum model length of M"), OpenAI
#: (``context_length_exceeded``), llama-cpp-python ("Requested tokens (N) exceed context window of M", or
#: OpenAI's words), SGLang ("The input (N tokens) is longer than the model's context length (M tokens)") and
#: text-generation-inference ("`inputs` tokens + `max_new_tokens` must be <= M").
OVERFLOW_RE = re.compile(
    r"context_length_exceeded|exceed_context_size|maximum context length|exceeds? the available context size"
    r"|exceeds? context window|maximum model length|longer than the model's context length"
    r"|is too long and exceeds limit|`inputs` tokens \+ `max_new_tokens` must be",
    re.IGNORECASE,
)
_WINDOW_RES = [re.compile(p, re.IGNORECASE) for p in (
    r"maximum context length is (\d+)", r"available context size \((\d+)", r"context window of (\d+)",
    r"maximum model length of (\d+)", r"context length \((\d+) tokens", r"exceeds limit of (\d+)",
    r"must be <= (\d+)",
)]
_PROMPT_RES = [re.compile(p, re.IGNORECASE) for p in (
    r"\((\d+) in (?:the messages|your prompt|the prompt)", r"(\d+) input tokens", r"request \((\d+) tokens\)",
    r"requested tokens \((\d+)\)", r"prompt \(length (\d+)\)", r"input \((\d+) tokens\)",
    r"given: (\d+) `inputs` tokens", r"you requested (\d+) tokens",
)]


def _first_number(patterns: Sequence[re.Pattern[str]], text: str) -> int | None:
    for pattern in patterns:
        found = pattern.search(text)
        if found:
            return int(found.group(1))
    return None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def context_overflow(body: Any) -> Overflow | None:
    """What an error body says about a prompt over the server's context window, or ``None`` when it is another error.

    Matches :data:`OVERFLOW_RE` in the body's message, ``code`` and ``type``, and reads the numbers from
    llama.cpp's ``n_prompt_tokens`` / ``n_ctx`` fields, else from the message.
    """
    text = json.dumps(body) if isinstance(body, Mapping) else str(body)
    if not OVERFLOW_RE.search(text):
        return None
    err = body.get("error", body) if isinstance(body, Mapping) else None
    fields = err if isinstance(err, Mapping) else {}
    message = error_text(body)
    return Overflow(prompt_tokens=_count(fields.get("n_prompt_tokens")) or _first_number(_PROMPT_RES, message),
                    window=_count(fields.get("n_ctx")) or _first_number(_WINDOW_RES, message))


def props_window(body: Any) -> int | None:
    """The context window of one slot from llama.cpp's ``GET /props``: ``default_generation_settings.n_ctx``,
    else a top-level ``n_ctx``."""
    if not isinstance(body, Mapping):
        return None
    settings = body.get("default_generation_settings")
    found = _count(settings.get("n_ctx")) if isinstance(settings, Mapping) else None
    return found or _count(body.get("n_ctx"))


def models_window(body: Any, model: str) -> int | None:
    """The context window of ``model`` from vLLM's ``GET /v1/models`` (``max_model_len`` of its entry, or of the
    only entry)."""
    data = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(data, list):
        return None
    entries = [d for d in data if isinstance(d, Mapping)]
    mine = [d for d in entries if d.get("id") == model] or (entries if len(entries) == 1 else [])
    return _count(mine[0].get("max_model_len")) if mine else None


#: ``POST /tokenize`` bodies by server: llama.cpp's ``llama-server`` reads ``content``, vLLM ``prompt``.
TOKENIZE_SHAPES = ("llama_server", "vllm")


def tokenize_body(shape: str, model: str, text: str) -> dict[str, Any]:
    """The ``POST /tokenize`` body for ``text`` in ``shape`` (:data:`TOKENIZE_SHAPES`), special tokens added as a
    completion request adds them."""
    if shape == "llama_server":
        return {"content": text, "add_special": True}
    return {"model": model, "prompt": text, "add_special_tokens": True}


def token_count(body: Any) -> int | None:
    """The number of tokens in a ``POST /tokenize`` answer (vLLM's ``count``, else the ``tokens`` list's length)."""
    if not isinstance(body, Mapping):
        return None
    tokens = body.get("tokens")
    if _count(body.get("count")) is not None:
        return body["count"]
    return len(tokens) if isinstance(tokens, list) and tokens else None
