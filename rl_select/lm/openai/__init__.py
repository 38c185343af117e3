"""An OpenAI-compatible HTTP backend: label log-probs from a ``/v1/completions`` endpoint.

* :mod:`~rl_select.lm.openai.scorer`: :class:`OpenAICompletionsScorer`, the scorer: its settings, and one
  prompt turned into requests and back into label log-probs (the score cache). It is assembled from one
  part per job, each a module:

  * :mod:`~rl_select.lm.openai.server_window`: the context-window rule (:mod:`rl_select.lm.window`) on a
    server: its window and token counts asked for, refusals of an over-long prompt reacted to;
  * :mod:`~rl_select.lm.openai.next_token`: the next-token path (one-token labels, one request per query);
  * :mod:`~rl_select.lm.openai.echo`: the echo path (any label; style fallback, late-echo detection);
  * :mod:`~rl_select.lm.openai.batching`: lists of prompts, concurrency, list-refusal detection.
* :mod:`~rl_select.lm.openai.wire`: request bodies and response parsing for each log-prob style, and the
  servers' words for a prompt over the context window.
* :mod:`~rl_select.lm.openai.transport`: HTTP (httpx) with retries (tenacity), no redirects, the API key.
"""

from rl_select.lm.openai.scorer import LOGPROB_STYLES, OpenAICompletionsScorer
from rl_select.lm.openai.transport import MAX_RETRY_AFTER, ContextOverflow, Transport, split_base_url
from rl_select.lm.openai.wire import (
    NEXT_TOKEN_TOP_LOGPROBS,
    NEXT_TOKEN_TOP_LOGPROBS_RETRY,
    NO_NEXT_TOKEN_LOGPROBS,
    NO_PROMPT_LOGPROBS,
    SHIFT_PROBE,
    SHIFTED_TOP_LOGPROBS,
    SHIFTED_TOP_LOGPROBS_RETRY,
    Overflow,
    context_overflow,
    echo_continuation,
    next_token_logprobs,
    vllm_continuation,
)

__all__ = [
    "LOGPROB_STYLES",
    "MAX_RETRY_AFTER",
    "NEXT_TOKEN_TOP_LOGPROBS",
    "NEXT_TOKEN_TOP_LOGPROBS_RETRY",
    "NO_NEXT_TOKEN_LOGPROBS",
    "NO_PROMPT_LOGPROBS",
    "SHIFTED_TOP_LOGPROBS",
    "SHIFTED_TOP_LOGPROBS_RETRY",
    "SHIFT_PROBE",
    "ContextOverflow",
    "OpenAICompletionsScorer",
    "Overflow",
    "Transport",
    "context_overflow",
    "echo_continuation",
    "next_token_logprobs",
    "split_base_url",
    "vllm_continuation",
]
