"""One exception family whose messages are single lines naming the bad value and what was expected.

The CLI catches :class:`RLSelectError` and prints ``error: <message>`` and exits with status 2.
"""

from __future__ import annotations


class RLSelectError(Exception):
    """Base class: a user-facing error with a one-line message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class DataError(RLSelectError):
    """A data file is missing, unreadable, malformed, or lacks a column / label."""


class TaskError(RLSelectError):
    """An unknown task name or an inconsistent task specification."""


class SelectionError(RLSelectError):
    """A selector cannot run as asked (k larger than the pool, empty split, ...)."""


class ModelError(RLSelectError):
    """The LM cannot be loaded, or a prompt does not fit its context window."""


class CacheError(RLSelectError):
    """The on-disk score cache is corrupt or unusable."""


class ConfigError(RLSelectError):
    """A run configuration holds an unknown key or a bad value."""


class ArtifactError(RLSelectError):
    """A saved artifact (policy, agent checkpoint) is missing, not rl_select's, of another kind, or corrupt."""


class PolicyError(ArtifactError):
    """An exported selector policy file is missing, corrupt, tampered with, or for another LM / feature set."""
