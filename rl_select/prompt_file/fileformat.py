"""The prompt file on disk: its format constants and error, the format / version check, demonstrations as JSON
records and back, and atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from rl_select.errors import PROMPT_FORMAT, ArtifactError
from rl_select.tasks import TaskSpec
from rl_select.types import Example, is_int

FORMAT_NAME = PROMPT_FORMAT
"""The ``format`` field of a prompt file."""

FORMAT_VERSION = 2
"""The ``format_version`` this code writes (2: the whole-document ``sha256``)."""

LEGACY_VERSIONS: tuple[int, ...] = ()
"""Older versions still read: none (version 1 had no whole-document hash, so an edit could not be told)."""

HASH_FIELD = "sha256"
"""The field that holds the hash of the rest of the document."""

KNN_ORDER = "the k pool examples nearest the query by cosine similarity, least similar first (most similar last)"
"""What ``per_query.order`` says for kNN files."""

POLICY_ORDER = "chosen per query by a trained per-query policy from the query's M nearest pool examples"
"""What ``per_query.order`` says for per-query policy files."""

_REQUIRED = ("format", "format_version", "kind", "task", "demos", "per_query", "selector", "scorer")


class PromptFileError(ArtifactError):
    """A prompt file is missing, not rl_select's, of another format version, malformed, or would be overwritten."""


def text_path(path: str | Path) -> Path:
    """The plain-text file written beside a prompt file (``prompt.json`` -> ``prompt.txt``)."""
    return Path(path).with_suffix(".txt")


def check_writable(path: str | Path, *, overwrite: bool = False) -> None:
    """Refuse a prompt-file path that is not ``.json``, or whose JSON or text file exists (unless ``overwrite``).

    Raises:
        PromptFileError: One line naming the file.
    """
    path = Path(path)
    if path.suffix.lower() != ".json":
        raise PromptFileError(f"prompt file {str(path)!r} must end in .json (its prefix is written beside it as "
                              ".txt)")
    for p in (path, text_path(path)):
        if p.is_dir():
            raise PromptFileError(f"prompt file {str(p)!r} is a folder; expected a file path")
    if overwrite:
        return
    for p in (path, text_path(path)):
        if p.exists():
            raise PromptFileError(f"{str(p)!r} exists; expected a new file (pass --overwrite, or overwrite=True, "
                                  "to replace it)")


def _check_format(doc: Any, where: str) -> None:
    """Refuse a document that is not an object, not a prompt file, or of a version this code cannot read."""
    if not isinstance(doc, dict):
        raise PromptFileError(f"{where} holds a JSON {type(doc).__name__}; expected an object written by "
                              "rl-select select")
    if doc.get("format") != FORMAT_NAME:
        raise PromptFileError(f"{where} has format {doc.get('format')!r}; expected {FORMAT_NAME!r} (a prompt "
                              "file written by rl-select select)")
    version = doc.get("format_version")
    if not is_int(version) or (version != FORMAT_VERSION and version not in LEGACY_VERSIONS):
        legacy = "".join(f" or {v}" for v in LEGACY_VERSIONS)
        raise PromptFileError(f"{where} has format_version {version!r}; expected {FORMAT_VERSION}{legacy} (written "
                              "by another rl_select version: select the prompt again)")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _version() -> str:
    """This rl_select's version (from the installed distribution; the package may load as a namespace)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rl-select")
    except PackageNotFoundError:
        return "unknown"


def _jsonable(value: Mapping[str, Any], key: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(value)))
    except (TypeError, ValueError) as exc:
        raise PromptFileError(f"field {key!r} is not JSON-serialisable ({exc}); expected plain values") from None


def _demo_doc(task: TaskSpec, demo: Example) -> dict[str, Any]:
    fields = {task.input_fields[0]: demo.text}
    if task.is_pair:
        fields[task.input_fields[1]] = demo.text2 or ""
    return {"uid": demo.uid, "fields": fields, "label": demo.label}


def _read_demos(task: TaskSpec, items: Any, *, where: str, key: str) -> list[Example]:
    if not isinstance(items, list):
        raise PromptFileError(f"{where}: field {key!r} is {items!r:.80}; expected a list of demonstrations")
    out = []
    for i, item in enumerate(items):
        at = f"{where}: {key}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("fields"), dict) or "label" not in item:
            raise PromptFileError(f"{at} is {item!r:.120}; expected {{'uid', 'fields', 'label'}}")
        uid = str(item.get("uid", ""))
        label = item["label"]
        if label not in task.labels:
            raise PromptFileError(f"{at} (uid {uid!r}) has label {label!r}, which task {task.name!r} lacks; "
                                  f"expected one of {list(task.labels)}")
        texts = []
        for name in task.input_fields:
            value = item["fields"].get(name)
            if not isinstance(value, str):
                raise PromptFileError(f"{at} (uid {uid!r}) lacks input field {name!r} of task {task.name!r} "
                                      f"(fields found: {sorted(item['fields'])}); expected a string")
            texts.append(value)
        out.append(Example(text=texts[0], text2=texts[1] if task.is_pair else None, label=label, uid=uid))
    return out


def _check_examples(task: TaskSpec, examples: Iterable[Example], key: str) -> None:
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise PromptFileError(f"{key}[{i}] is a {type(ex).__name__}; expected an Example")
        if ex.label not in task.labels:
            raise PromptFileError(f"{key}[{i}] (uid {ex.uid!r}) has label {ex.label!r}, which task {task.name!r} "
                                  f"lacks; expected one of {list(task.labels)}")
        if task.is_pair and ex.text2 is None:
            raise PromptFileError(f"{key}[{i}] (uid {ex.uid!r}) lacks input field {task.input_fields[1]!r} of "
                                  f"pair task {task.name!r}")


def _read_assigned(pq_doc: Mapping[str, Any], where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    items = pq_doc.get("assigned", [])
    if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("query"), str) and isinstance(i.get("demos"), list)
            for i in items):
        raise PromptFileError(f"{where}: field 'per_query.assigned' is {items!r:.80}; expected a list of "
                              "{'query': text, 'demos': [uid, ...]}")
    return tuple((i["query"], tuple(str(u) for u in i["demos"])) for i in items)
