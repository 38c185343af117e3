"""An OpenAI-compatible HTTP backend: label log-probs from a ``/v1/completions`` endpoint.

* :mod:`~rl_select.lm.openai.scorer`: :class:`OpenAICompletionsScorer`, the scorer (the next-token
  path for one-token labels, one request per query; the echo path otherwise; batching, concurrency,
  style fallback, list-refusal detection, the score cache).
* :mod:`~rl_select.lm.openai.wire`: request bodies and response parsing for each log-prob style.
* :mod:`~rl_select.lm.openai.transport`: HTTP (httpx) with retries (tenacity), no redirects, the API key.
"""

from rl_select.lm.openai.scorer import LOGPROB_STYLES, OpenAICompletionsScorer
from rl_select.lm.openai.transport import MAX_RETRY_AFTER, Transport, split_base_url
from rl_select.lm.openai.wire import (
    NEXT_TOKEN_TOP_LOGPROBS,
    NEXT_TOKEN_TOP_LOGPROBS_RETRY,
    NO_NEXT_TOKEN_LOGPROBS,
    NO_PROMPT_LOGPROBS,
    SHIFT_PROBE,
    SHIFTED_TOP_LOGPROBS,
    SHIFTED_TOP_LOGPROBS_RETRY,
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
    "OpenAICompletionsScorer",
    "Transport",
    "echo_continuation",
    "next_token_logprobs",
    "split_base_url",
    "vllm_continuation",
]
