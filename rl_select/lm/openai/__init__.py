"""An OpenAI-compatible HTTP backend: label log-probs from a ``/v1/completions`` endpoint.

* :mod:`~rl_select.lm.openai.scorer`: :class:`OpenAICompletionsScorer`, the scorer (batching,
  concurrency, style fallback, list-refusal detection, the score cache).
* :mod:`~rl_select.lm.openai.wire`: request bodies and response parsing for each log-prob style.
* :mod:`~rl_select.lm.openai.transport`: HTTP (httpx) with retries (tenacity), no redirects, the API key.
"""

from rl_select.lm.openai.scorer import OpenAICompletionsScorer
from rl_select.lm.openai.transport import MAX_RETRY_AFTER, Transport, split_base_url
from rl_select.lm.openai.wire import (
    NO_PROMPT_LOGPROBS,
    SHIFT_PROBE,
    SHIFTED_TOP_LOGPROBS,
    SHIFTED_TOP_LOGPROBS_RETRY,
    echo_continuation,
    vllm_continuation,
)

__all__ = [
    "MAX_RETRY_AFTER",
    "NO_PROMPT_LOGPROBS",
    "SHIFTED_TOP_LOGPROBS",
    "SHIFTED_TOP_LOGPROBS_RETRY",
    "SHIFT_PROBE",
    "OpenAICompletionsScorer",
    "Transport",
    "echo_continuation",
    "split_base_url",
    "vllm_continuation",
]
