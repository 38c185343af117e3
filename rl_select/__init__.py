"""rl_select: choose few-shot demonstrations for a frozen LLM by reinforcement learning.

The package map and its one-way dependency order are in ``docs/design.md``; the test
``tests/test_layers.py`` keeps them.
"""

__version__ = "0.1.0"
