"""Frozen-LM scorers: label log-probabilities for (ordered demonstrations, queries)."""

from rl_select.lm.base import Scorer, ScorerStats

__all__ = ["Scorer", "ScorerStats"]
