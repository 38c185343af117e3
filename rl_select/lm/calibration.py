"""Contextual calibration (Zhao et al. 2021): divide out the label bias a prompt shows on content-free
inputs such as "N/A", "" and "[MASK]"."""

from __future__ import annotations

import numpy as np


def normalise(logprobs: np.ndarray) -> np.ndarray:
    """Renormalise label log-probs over the label set. Shape preserved: ``(..., n_labels)``."""
    return logprobs - np.logaddexp.reduce(logprobs, axis=-1, keepdims=True)


def calibrate(logprobs: np.ndarray, content_free: np.ndarray) -> np.ndarray:
    """Calibrated label log-probs.

    Args:
        logprobs: Raw label log-probs of the real queries, ``(n_queries, n_labels)``.
        content_free: Raw label log-probs of the content-free queries under the same prompt,
            ``(n_content_free, n_labels)``.

    Returns:
        ``log(softmax(logprobs) / p_cf)`` renormalised, where ``p_cf`` is the mean normalised
        distribution of the content-free queries. Shape ``(n_queries, n_labels)``.
    """
    p_cf = np.exp(normalise(content_free)).mean(axis=0)
    return normalise(normalise(logprobs) - np.log(np.clip(p_cf, 1e-12, None)))
