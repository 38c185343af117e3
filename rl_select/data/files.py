"""Read a task's examples from files: one JSONL / CSV / Parquet file, or a folder of ``train`` and ``test``.

Every problem with the input is a one-line :class:`~rl_select.errors.DataError` that names the file,
the line or row, and the offending value with what was expected.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rl_select.errors import DataError, not_text
from rl_select.tasks import TaskSpec
from rl_select.types import Example

SUFFIXES: tuple[str, ...] = (".jsonl", ".csv", ".parquet")
"""File types :func:`load_examples` reads, in the order :func:`load_folder` prefers them."""

_Row = tuple[str, Mapping[str, Any]]  # (where, e.g. "line 3 of train.jsonl"; the row's fields)

# --- reading files ---------------------------------------------------------------------------------


def load_examples(path: str | Path, *, spec: TaskSpec) -> list[Example]:
    """Read one ``.jsonl``, ``.csv`` or ``.parquet`` file into examples.

    Columns ``spec.input_fields`` become ``Example.text`` (and ``text2``); ``spec.label_field`` the
    label, stored as the canonical label name. Integer labels (or digit strings) are mapped through
    ``spec.hf.label_names`` when the spec has them.

    Args:
        path: The file.
        spec: The task whose fields and labels the file must hold.

    Returns:
        The examples in file order, length = number of rows; ``uid`` is ``"<file name>:<n>"`` with n
        the 1-based line (JSONL) or data row (CSV / Parquet).

    Raises:
        DataError: Missing or empty file, unknown suffix, malformed line, missing column or value,
            or a label that is not one of ``spec.labels``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found; expected one of {list(SUFFIXES)}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows: Iterable[tuple[int, str, Mapping[str, Any]]] = read_jsonl_objects(path)
    elif suffix in (".csv", ".parquet"):
        rows = _read_table(path, spec=spec)
    else:
        raise DataError(f"data file {str(path)!r} has suffix {suffix!r}; expected one of {list(SUFFIXES)}")
    examples = [
        _to_example(row, where=where, uid=f"{path.name}:{n}", spec=spec) for n, where, row in rows
    ]
    if not examples:
        raise DataError(f"data file {str(path)!r} is empty; expected at least one example")
    return examples


def read_jsonl_objects(path: Path) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
    """Yield ``(line number, where, object)`` per non-blank line; a bad line names itself."""
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"line {lineno} of {path}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where} is not valid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{where} holds a JSON {type(obj).__name__}; expected an object")
                yield lineno, where, obj
    except UnicodeDecodeError:
        raise DataError(not_text(f"data file {str(path)!r}", path.read_bytes(), "JSON lines")) from None
    except OSError as exc:
        raise DataError(f"cannot read data file {str(path)!r}: {exc.strerror or exc}") from None


def read_table_file(path: Path, what: str = "data file") -> Any:
    """A CSV (every cell as text) or Parquet file as a pandas ``DataFrame``; one-line :class:`DataError`s
    naming ``what`` and the file (empty, not UTF-8 with its line, unparsable)."""
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            # Text stays text ("1.0" is not a float); empty cells become "" and are caught by the callers.
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{what} {str(path)!r} is empty; expected a header and rows") from None
    except UnicodeDecodeError:
        raise DataError(not_text(f"{what} {str(path)!r}", path.read_bytes(), "CSV text")) from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {what} {str(path)!r}: {msg}") from None
    except Exception as exc:  # pyarrow's ArrowInvalid etc. are not all ValueErrors
        raise DataError(f"cannot read {what} {str(path)!r}: {type(exc).__name__}: {exc}") from None


def _read_table(path: Path, *, spec: TaskSpec) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
    """Yield ``(row number, where, row)`` for a CSV or Parquet file, after checking its columns."""
    frame = read_table_file(path)
    columns = [str(c) for c in frame.columns]
    wanted = (*spec.input_fields, spec.label_field)
    for column in wanted:
        if column not in columns:
            raise DataError(
                f"data file {str(path)!r} has no column {column!r} (task {spec.name!r}); "
                f"columns found: {columns}"
            )
    records = frame[list(wanted)].to_dict("records")
    for i, record in enumerate(records, start=1):
        yield i, f"row {i} of {path}", record


def _to_example(
    row: Mapping[str, Any],
    *,
    where: str,
    uid: str,
    spec: TaskSpec,
    id_names: Sequence[str] | None = None,
) -> Example:
    """One example from one row's fields (names from ``spec``).

    ``id_names`` maps integer label ids to names; default ``spec.hf.label_names``.
    """
    texts = [_field(row, name, where=where) for name in spec.input_fields]
    for name, value in zip(spec.input_fields, texts):
        if not isinstance(value, str):
            raise DataError(f"{where}: column {name!r} holds {value!r:.80}; expected a string")
    if id_names is None and spec.hf is not None:
        id_names = spec.hf.label_names
    raw = _field(row, spec.label_field, where=where)
    label = _canonical_label(raw, where=where, spec=spec, id_names=id_names)
    return Example(text=texts[0], label=label, text2=texts[1] if spec.is_pair else None, uid=uid)


def _field(row: Mapping[str, Any], name: str, *, where: str) -> Any:
    """``row[name]``, refusing a missing column or an empty value."""
    if name not in row:
        raise DataError(f"{where} has no column {name!r}; columns found: {list(row)}")
    value = row[name]
    if _is_missing(value):
        raise DataError(f"{where}: column {name!r} is empty ({value!r}); expected a value")
    return value


def _is_missing(value: Any) -> bool:
    """True for ``None``, ``""``, NaN and pandas' ``NA`` / ``NaT``."""
    if value is None or (isinstance(value, str) and not value):
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return type(value).__name__ in ("NAType", "NaTType")


def _canonical_label(value: Any, *, where: str, spec: TaskSpec, id_names: Sequence[str] | None) -> str:
    """The canonical label name for a raw label value (a name, an integer id or a digit string)."""
    if isinstance(value, str) and value in spec.labels:
        return value
    label_id = _as_int(value)
    if label_id is not None and id_names is not None:
        if 0 <= label_id < len(id_names) and id_names[label_id] in spec.labels:
            return id_names[label_id]
        raise DataError(
            f"{where}: label id {label_id} does not map to a label of task {spec.name!r}; "
            f"expected an id 0..{len(id_names) - 1} of {list(id_names)} or one of {list(spec.labels)}"
        )
    raise DataError(
        f"{where}: label {value!r} is not a label of task {spec.name!r}; expected one of {list(spec.labels)}"
    )


def _as_int(value: Any) -> int | None:
    """``value`` as an integer id when it is one (3, 3.0, "3", numpy ints), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


# --- folders ---------------------------------------------------------------------------------------


def load_folder(folder: str | Path, *, spec: TaskSpec) -> tuple[list[Example], list[Example]]:
    """Read ``train`` and ``test`` files (``.jsonl``, else ``.csv``, else ``.parquet``) from a folder.

    Args:
        folder: A folder holding ``train.<suffix>`` and ``test.<suffix>``.
        spec: The task whose fields and labels the files must hold.

    Returns:
        ``(train, test)`` lists of examples in file order.

    Raises:
        DataError: The folder or one of the files is missing, or a file is bad.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder {str(folder)!r} not found; expected a folder with train.jsonl and test.jsonl")
    return (
        load_examples(_find_split_file(folder, "train"), spec=spec),
        load_examples(_find_split_file(folder, "test"), spec=spec),
    )


def _find_split_file(folder: Path, stem: str) -> Path:
    """``folder/<stem><suffix>`` for the first suffix in :data:`SUFFIXES` that exists."""
    for suffix in SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    names = [f"{stem}{s}" for s in SUFFIXES]
    raise DataError(f"data folder {str(folder)!r} has no {' / '.join(names)}; expected one of them")
