"""One exception family whose messages are single lines naming the bad value and what was expected.

The CLI catches :class:`RLSelectError` and prints ``error: <message>`` and exits with status 2.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path


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


# --- message parts ---------------------------------------------------------------------------------

MAX_MESSAGE = 200
"""Every user-facing message stays under this many characters (a list of names is cut, see :func:`one_of`)."""


def one_of(valid: Iterable[str], given: str | None = None, *, width: int = 100) -> str:
    """The valid names for a message, ``"a, b, c"``, cut to about ``width`` characters.

    The names closest to ``given`` (a likely typo) come first; past ``width`` the rest is counted,
    ``"... (12 more)"``, so the message stays one short line.
    """
    names = [str(v) for v in valid]
    close = difflib.get_close_matches(str(given), names, n=3, cutoff=0.6) if given is not None else []
    ordered = close + [n for n in names if n not in close]
    shown: list[str] = []
    for name in ordered:
        if shown and len(", ".join([*shown, name])) > width:
            break
        shown.append(name)
    rest = len(ordered) - len(shown)
    return ", ".join(shown) + (f", ... ({rest} more)" if rest else "")


def utf8_position(raw: bytes) -> str | None:
    """Where ``raw`` stops being UTF-8, ``"line 3, column 7 (byte 0xe9)"``; ``None`` when it all decodes."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        return f"line {line}, column {column} (byte 0x{raw[exc.start]:02x})"
    return None


def read_utf8(path: str | os.PathLike, where: str, error: type[RLSelectError]) -> str:
    """The text of a UTF-8 file; raises ``error`` naming the line of the first byte that is not UTF-8.

    Raises:
        error: The file is not UTF-8 text, or cannot be read (one line starting with ``where``).
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"cannot read {where}: {exc.strerror or exc}") from None
    bad = utf8_position(raw)
    if bad is not None:
        raise error(not_utf8(where, bad))
    return raw.decode("utf-8")


def not_utf8(where: str, position: str | None) -> str:
    """The one-line message for a file that is not UTF-8 text at ``position`` (see :func:`utf8_position`)."""
    return f"{where} is not UTF-8 text at {position or 'some byte'}; expected UTF-8 (save the file as UTF-8)"
