"""Queries for a prompt file: a text, a tuple, a mapping or an :class:`~rl_select.types.Example` as the task's
query, and queries read from lines (standard input) or a JSONL / CSV file."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from rl_select.data import read_jsonl_objects, read_table_file
from rl_select.errors import DataError
from rl_select.tasks import TaskSpec
from rl_select.types import Example


def query_example(task: TaskSpec, query: Any, *, where: str = "query") -> Example:
    """A query as an :class:`Example` of ``task`` (label: a placeholder; a prompt never shows it).

    Args:
        task: The task.
        query: A text (single-input tasks), a tuple / list of the task's input texts, a mapping of its input
            fields, or an :class:`Example`.
        where: How errors name the query (``"line 3 of q.jsonl"``).

    Raises:
        DataError: A query of another shape, or one that lacks an input field (named).
    """
    fields = list(task.input_fields)
    if isinstance(query, Example):
        if task.is_pair and query.text2 is None:
            raise DataError(f"{where} lacks input field {fields[1]!r}: task {task.name!r} takes inputs {fields}")
        return query
    if isinstance(query, str):
        if task.is_pair:
            raise DataError(f"{where} is a single text, which lacks input field {fields[1]!r}: task {task.name!r} "
                            f"takes inputs {fields}; expected a JSON object with both (a JSONL file or JSON lines)")
        texts = [query]
    elif isinstance(query, Mapping):
        texts = []
        for name in fields:
            if name not in query:
                raise DataError(f"{where} has no input field {name!r} (task {task.name!r} takes {fields}); fields "
                                f"found: {sorted(map(str, query))}")
            value = query[name]
            if not isinstance(value, str):
                raise DataError(f"{where}: input field {name!r} holds {value!r:.80}; expected a string")
            texts.append(value)
    elif isinstance(query, (tuple, list)) and all(isinstance(s, str) for s in query):
        if len(query) != len(fields):
            missing = f", which lacks input field {fields[1]!r}" if len(query) < len(fields) else ""
            raise DataError(f"{where} has {len(query)} texts{missing}; task {task.name!r} takes inputs {fields}")
        texts = list(query)
    else:
        raise DataError(f"{where} is a {type(query).__name__}; expected a text, a tuple of {fields} or a mapping "
                        "of them")
    return Example(text=texts[0], text2=texts[1] if task.is_pair else None, label=task.labels[0])


def query_fields(task: TaskSpec, ex: Example) -> dict[str, str]:
    """A query's input fields by the task's names (``{"text": ...}``), as the prompt command writes them."""
    out = {task.input_fields[0]: ex.text}
    if task.is_pair:
        out[task.input_fields[1]] = ex.text2 or ""
    return out


def parse_query_lines(task: TaskSpec, lines: Iterable[str], *, source: str) -> Iterator[tuple[str, Example]]:
    """Queries, one per non-blank line: a JSON object of the input fields, or (single-input tasks) plain text.

    A line that starts with ``{`` is read as JSON; a bad one names its line.

    Yields:
        ``(where, example)``, e.g. ``("line 3 of standard input", Example(...))``.
    """
    for lineno, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if text.strip():
            where = f"line {lineno} of {source}"
            yield where, parse_query(task, text, where=where)


def parse_query(task: TaskSpec, text: str, *, where: str = "query") -> Example:
    """One query given as text: a JSON object of the input fields when it starts with ``{``, else the text itself.

    Raises:
        DataError: Bad JSON, or a query that does not fit the task (named by ``where``).
    """
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where} is not valid JSON ({exc.msg} at column {exc.colno}); expected an "
                            f"object of the input fields {list(task.input_fields)}") from None
        return query_example(task, obj, where=where)
    return query_example(task, text, where=where)


def read_query_file(task: TaskSpec, path: str | Path) -> list[tuple[str, Example]]:
    """Queries from a ``.jsonl`` file (one object of the task's input fields a line) or a ``.csv`` file.

    Returns:
        ``(where, example)`` per query, in file order.

    Raises:
        DataError: Missing or empty file, another suffix, a bad line or row (named), a missing input field.
    """
    path = Path(path)
    if not path.is_file():
        said = "is a folder" if path.is_dir() else "not found"
        raise DataError(f"query file {str(path)!r} {said}; expected a .jsonl or .csv file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        out = [(where, query_example(task, obj, where=where)) for _, where, obj in read_jsonl_objects(path)]
    elif suffix == ".csv":
        frame = read_table_file(path, "query file")
        columns = [str(c) for c in frame.columns]
        for name in task.input_fields:
            if name not in columns:
                raise DataError(f"query file {str(path)!r} has no column {name!r} (task {task.name!r} takes "
                                f"{list(task.input_fields)}); columns found: {columns}")
        out = [(f"row {i} of {path}", query_example(task, rec, where=f"row {i} of {path}"))
               for i, rec in enumerate(frame[list(task.input_fields)].to_dict("records"), start=1)]
    else:
        raise DataError(f"query file {str(path)!r} has suffix {suffix!r}; expected .jsonl or .csv")
    if not out:
        raise DataError(f"query file {str(path)!r} is empty; expected at least one query")
    return out
