"""An ablation's ``results.csv``: its columns, rows read back (a line cut by a kill dropped), rows appended, an
older header migrated, the resume keys."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rl_select.errors import DataError
from rl_select.experiments.ablate.grid import GRID_KEYS

COLUMNS = (
    "cell_id", "cell", "seed", "selector", "status", "error", "test_acc", "val_acc", "test_rows",
    "train_queries", "select_queries", "eval_queries", "labelled", "seconds", "train_seconds",
    "select_cache_hits", "eval_cache_hits", "train_cache_hits", "est_train_queries", "est_select_queries",
    "demos", *GRID_KEYS,
)
"""``results.csv`` columns (the grid keys hold each row's resolved settings)."""


def read_rows(path: Path) -> list[dict[str, Any]]:
    """``results.csv``'s complete rows (a line cut by a kill is dropped), values parsed back; a row run again
    (``--retry-failed``) replaces the earlier one of its key, in the earlier one's place."""
    if not path.is_file():
        return []
    out: dict[tuple[str, int, str], dict[str, Any]] = {}
    with path.open(newline="") as fh:
        for raw in csv.DictReader(fh):
            if raw.get("status") not in ("ok", "failed") or not raw.get("selector"):
                continue
            row = {k: _parse(v) for k, v in raw.items() if k is not None}
            out[row_key(row)] = row
    return list(out.values())


def done_keys(rows: Sequence[Mapping[str, Any]], *, retry_failed: bool = False) -> set[tuple[str, int, str]]:
    """The keys a resumed run skips: every row's, or with ``retry_failed`` the ``ok`` rows' only."""
    return {row_key(r) for r in rows if r["status"] == "ok" or not retry_failed}


def _parse(v: str | None) -> Any:
    if v is None or v == "":
        return None
    try:
        return json.loads(v)
    except ValueError:
        return v


def row_key(row: Mapping[str, Any]) -> tuple[str, int, str]:
    """The resume key of a row: ``(cell_id, seed, selector)``."""
    return str(row["cell_id"]), int(row["seed"]), str(row["selector"])


def _migrate(path: Path) -> None:
    """Rewrite ``results.csv`` under today's :data:`COLUMNS` if its header is an older one.

    A row written under the old header keeps its values by name; a row already written under today's
    columns (appended after a column was added) is read by position. Nothing is dropped: a column
    today's schema no longer has is refused with one line.
    """
    with path.open(newline="") as fh:
        if next(csv.reader(fh), None) in (None, list(COLUMNS)):
            return
        fh.seek(0)
        lines = list(csv.reader(fh))
    header, cols = lines[0], list(COLUMNS)
    gone = [c for c in header if c not in cols]
    if gone:
        raise DataError(f"{path}: columns {gone} are not results columns any more; expected a subset of {cols}")
    rows = []
    for raw in lines[1:]:
        if len(raw) == len(cols) and len(raw) != len(header):
            rows.append(dict(zip(cols, raw)))
        elif len(raw) == len(header):
            rows.append(dict(zip(header, raw)))
        # anything else is a line cut by a kill: dropped, as read_rows drops it
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _append(path: Path, row: Mapping[str, Any]) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        _migrate(path)
    if not new:  # a line cut by a kill has no newline: end it so the next row starts clean
        with path.open("rb") as fh:
            fh.seek(-1, 2)
            cut = fh.read(1) != b"\n"
        if cut:
            with path.open("a") as fh:
                fh.write("\n")
    with path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: (json.dumps(v) if isinstance(v, (list, dict, bool)) else v) for k, v in row.items()})
        fh.flush()
