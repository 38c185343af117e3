"""rl_select: choose few-shot demonstrations for a frozen LLM by reinforcement learning.

The public API, importable from the package itself (each name loads its module on first use, so
``import rl_select`` stays light)::

    from rl_select import PerQueryPolicy, PromptFile, make_selector, resolve_task, load_task

The package map and its one-way dependency order are in ``docs/design.md``; the test
``tests/test_layers.py`` keeps them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API: dict[str, str] = {
    # tasks and data
    "Example": "rl_select.types", "TaskSpec": "rl_select.tasks", "resolve_task": "rl_select.tasks",
    "load_task_spec": "rl_select.tasks", "load_task": "rl_select.data", "load_examples": "rl_select.data",
    "make_splits": "rl_select.data", "Splits": "rl_select.data",
    # the frozen LM
    "ScorerSpec": "rl_select.lm.spec", "CachedScorer": "rl_select.lm.base", "open_cache": "rl_select.lm.cache",
    "MiniLMEmbedder": "rl_select.embeddings",
    # selectors
    "SELECTORS": "rl_select.selectors", "make_selector": "rl_select.selectors",
    "SelectionContext": "rl_select.selectors", "Selector": "rl_select.selectors",
    # trained policies
    "PerQueryPolicy": "rl_select.mdp.per_query_policy", "SelectorPolicy": "rl_select.mdp.policy",
    # prompt files
    "PromptFile": "rl_select.prompt_file", "select_prompt": "rl_select.prompt_file",
    "select_per_query_prompt": "rl_select.prompt_file",
    # errors
    "RLSelectError": "rl_select.errors",
}

__all__ = [
    "__version__",
    "Example", "TaskSpec", "resolve_task", "load_task_spec", "load_task", "load_examples", "make_splits", "Splits",
    "ScorerSpec", "CachedScorer", "open_cache", "MiniLMEmbedder", "SELECTORS", "make_selector", "SelectionContext",
    "Selector", "PerQueryPolicy", "SelectorPolicy", "PromptFile", "select_prompt", "select_per_query_prompt",
    "RLSelectError",
]
"""The public names (:data:`_API` says which module defines each)."""

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from rl_select.data import Splits, load_examples, load_task, make_splits
    from rl_select.embeddings import MiniLMEmbedder
    from rl_select.errors import RLSelectError
    from rl_select.lm.base import CachedScorer
    from rl_select.lm.cache import open_cache
    from rl_select.lm.spec import ScorerSpec
    from rl_select.mdp.per_query_policy import PerQueryPolicy
    from rl_select.mdp.policy import SelectorPolicy
    from rl_select.prompt_file import PromptFile, select_per_query_prompt, select_prompt
    from rl_select.selectors import SELECTORS, SelectionContext, Selector, make_selector
    from rl_select.tasks import TaskSpec, load_task_spec, resolve_task
    from rl_select.types import Example


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rl_select' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
