"""One exception family whose messages are single lines naming the bad value and what was expected.

The CLI catches :class:`RLSelectError` and prints ``error: <message>`` and exits with status 2.
"""

from __future__ import annotations

import difflib
import json
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


def read_utf8(path: str | os.PathLike, where: str, error: type[RLSelectError], *,
              expected: str = "a UTF-8 text file") -> str:
    """The text of a UTF-8 file; raises ``error`` naming what a binary file looks like (:func:`not_text`), else the
    line of the first byte that is not UTF-8.

    Raises:
        error: The file is binary, not UTF-8 text, or cannot be read (one line starting with ``where``).
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise error(f"cannot read {where}: {exc.strerror or exc}") from None
    if utf8_position(raw) is not None:
        raise error(not_text(where, raw, expected))
    return raw.decode("utf-8")


def not_text(where: str, raw: bytes, expected: str = "a UTF-8 text file") -> str:
    """The one-line message for a file whose bytes ``raw`` are not UTF-8: binary content says what it looks like
    (:func:`binary_kind`) and what was ``expected``; text says where its first byte that is not UTF-8 is."""
    kind = binary_kind(raw)
    if kind is not None:
        return f"{where} is {kind}, not text; expected {expected}"
    return not_utf8(where, utf8_position(raw))


def not_utf8(where: str, position: str | None) -> str:
    """The one-line message for a file that is not UTF-8 text at ``position`` (see :func:`utf8_position`)."""
    return f"{where} is not UTF-8 text at {position or 'some byte'}; expected UTF-8 (save the file as UTF-8)"


# --- what a path holds, for a message about a path of the wrong kind --------------------------------

_MAGIC = (
    (b"SQLite format 3\x00", "an SQLite database (a score cache?)"),
    (b"GGUF", "a GGUF model file"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"PAR1", "a Parquet file"),
    (b"\x89PNG", "a PNG image"),
    (b"%PDF", "a PDF document"),
    *((bytes([0x80, v]), "a pickle file (a PyTorch checkpoint?)") for v in (2, 3, 4, 5)),
)
_ARTIFACT_KINDS = {"policy": "a policy file (.safetensors)", "per_query_policy": "a per-query policy file "
                   "(.safetensors)", "agent": "an agent checkpoint (.safetensors)"}
PROMPT_FORMAT = "rl_select.prompt"
"""The ``format`` field of a prompt file (:mod:`rl_select.prompt_file`), by which :func:`path_kind` knows one."""


def _safetensors_kind(raw: bytes) -> str | None:
    """``raw`` as a safetensors file: an rl_select artifact by its kind, else a weights file; ``None`` if not one."""
    if len(raw) < 10 or raw[8:9] != b"{":
        return None
    n = int.from_bytes(raw[:8], "little")
    if n > len(raw) - 8:
        return None
    try:
        header = json.loads(raw[8 : 8 + n])
        doc = json.loads((header.get("__metadata__") or {}).get("rl_select") or "{}")
    except (ValueError, AttributeError, TypeError):
        return "a .safetensors file"
    kind = doc.get("kind") if isinstance(doc, dict) else None
    return _ARTIFACT_KINDS.get(kind, "a .safetensors file") if isinstance(kind, str) else "a .safetensors file"


def binary_kind(raw: bytes) -> str | None:
    """What binary bytes look like: ``"a policy file (.safetensors)"``, ``"an SQLite database (a score cache?)"``,
    ``"a zip archive"``, ..., else ``"binary content"`` (a NUL byte, or many bytes that are no text); ``None`` for
    text (UTF-8 or not)."""
    for magic, kind in _MAGIC:
        if raw.startswith(magic):
            return kind
    found = _safetensors_kind(raw)
    if found is not None:
        return found
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None  # UTF-16 text: not UTF-8, but text (the UTF-8 message says where and what to do)
    head = raw[:8192]
    if b"\x00" in head:
        return "binary content"
    text = head.decode("utf-8", "replace")
    odd = sum(c == "\ufffd" or (c < " " and c not in "\t\n\r\f\v") for c in text)
    return "binary content" if text and odd > 0.3 * len(text) else None


def path_kind(path: str | os.PathLike) -> str:
    """What is at ``path``, for a message about a path of the wrong kind: ``"a folder"``, a binary file's kind
    (:func:`binary_kind`), ``"a prompt file"``, ``"a JSON file"``, ``"a text file"``, or ``"nothing"``."""
    p = Path(path)
    if p.is_dir():
        return "a folder"
    if not p.exists():
        return "nothing"
    try:
        with p.open("rb") as f:
            raw = f.read(1 << 20)
    except OSError:
        return "a file"
    found = binary_kind(raw)
    if found is not None:
        return found
    try:
        doc = json.loads(raw)
    except ValueError:
        return "a text file"
    if isinstance(doc, dict) and doc.get("format") == PROMPT_FORMAT:
        return "a prompt file"
    return "a JSON file"


def not_a_run_folder(path: str | os.PathLike, inside: str, expected: str) -> str:
    """The one-line message for a file given where a run folder was expected: the run's own ``inside`` file (e.g.
    ``results.json``) names its folder; any other file says what it looks like (:func:`path_kind`)."""
    p = Path(path)
    if p.name == inside:
        return f"{str(p)!r} is a run's {inside}; expected the run folder, {str(p.parent)!r}"
    return f"{str(p)!r} is {path_kind(p)}, not a run folder; expected {expected}"
