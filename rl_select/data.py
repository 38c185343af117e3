"""Load a task's examples (JSONL / CSV / Parquet / Hugging Face hub) and split them, seeded.

Typical use::

    spec = get_task("trec")
    train, test = load_task(spec)                        # local copy if present, else the hub
    splits = make_splits(train, test, n_pool=100, n_val=64, seed=0, stratify=True)

Every problem with the input is a one-line :class:`~rl_select.errors.DataError` that names the file,
the line or row, and the offending value with what was expected.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rl_select.errors import DataError, not_text
from rl_select.tasks import DATA_ENV_VAR, TaskSpec, default_data_root  # noqa: F401 (re-exported)
from rl_select.types import Example

SUFFIXES: tuple[str, ...] = (".jsonl", ".csv", ".parquet")
"""File types :func:`load_examples` reads, in the order :func:`load_folder` prefers them."""

"""Environment variable naming the folder that holds ``<task>/train.jsonl`` copies."""

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


# --- folders, the hub, and the default choice ------------------------------------------------------


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


def load_hf(
    spec: TaskSpec, *, cache_dir: str | Path | None = None, max_rows: int | None = None
) -> tuple[list[Example], list[Example]]:
    """Download (or reuse the cached copy of) the task's hub dataset with ``datasets``.

    Args:
        spec: A task with an ``hf`` source.
        cache_dir: The ``datasets`` cache folder (default: its own default).
        max_rows: If set, a split longer than this is cut to a seeded random subset of this many
            rows (``shuffle(seed=0)``), so huge sets (amazon: 3.6 M rows) stay cheap; ``None`` keeps
            every row.

    Returns:
        ``(train, test)`` lists of examples; ``uid`` is ``"<dataset id>/<split>:<row>"``.

    Raises:
        DataError: No hub source, no network / dataset not found (one line naming the dataset id),
            a missing split or column, or a label that is not one of ``spec.labels``.
    """
    hf = spec.hf
    if hf is None:
        raise DataError(
            f"task {spec.name!r} has no hub source (spec.hf); pass local files with --data DIR "
            "(train.jsonl and test.jsonl)"
        )
    dataset_id = hf.path if hf.name is None else f"{hf.path} ({hf.name})"
    try:
        import datasets
    except ImportError:
        raise DataError(f"loading {dataset_id!r} needs the 'datasets' package; pip install datasets") from None
    from contextlib import nullcontext

    from rl_select.hub import forced_offline, hub_unreachable, offline_env

    # Offline asked for, or no network: the local cache only, at once (not after ~25 s of retries).
    offline = offline_env(datasets=True)
    unreachable = None if offline or os.path.exists(hf.path) else hub_unreachable()
    try:
        with forced_offline() if offline or unreachable else nullcontext():
            loaded = datasets.load_dataset(hf.path, hf.name, cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as exc:  # datasets raises ConnectionError, DatasetNotFoundError, FileNotFoundError, ...
        if (offline or unreachable) and isinstance(exc, ConnectionError | FileNotFoundError):  # not cached
            why = f"{offline} is set" if offline else unreachable
            raise DataError(
                f"cannot load dataset {dataset_id!r}: {why}; not cached; expected --data DIR or network access to "
                "the hub" + (f" (unset {offline.split('=')[0]})" if offline else "")
            ) from None
        detail = " ".join(str(exc).split())[:60] or type(exc).__name__
        raise DataError(
            f"cannot load dataset {dataset_id!r} from the hub ({type(exc).__name__}: {detail}); expected --data DIR "
            "(train.jsonl, test.jsonl) or network access"
        ) from None
    for split in (hf.train_split, hf.test_split):
        if split not in loaded:
            raise DataError(f"dataset {dataset_id!r} has no split {split!r}; splits found: {list(loaded)}")
    return (
        _hf_split(loaded, hf.train_split, spec=spec, dataset_id=dataset_id, max_rows=max_rows),
        _hf_split(loaded, hf.test_split, spec=spec, dataset_id=dataset_id, max_rows=max_rows),
    )


def _hf_split(loaded: Any, split: str, *, spec: TaskSpec, dataset_id: str, max_rows: int | None) -> list[Example]:
    """Examples of one split of a loaded ``DatasetDict``."""
    assert spec.hf is not None
    hf = spec.hf
    ds = loaded[split]
    for column in (*hf.text_columns, hf.label_column):
        if column not in ds.column_names:
            raise DataError(
                f"dataset {dataset_id!r} split {split!r} has no column {column!r}; "
                f"columns found: {ds.column_names}"
            )
    if max_rows is not None and len(ds) > max_rows:
        ds = ds.shuffle(seed=0).select(range(max_rows))
    if len(ds) == 0:
        raise DataError(f"dataset {dataset_id!r} split {split!r} is empty; expected at least one example")
    # Integer labels: the spec's names first, else the ClassLabel feature's names matched to ours.
    id_names = hf.label_names
    if id_names is None:
        feature_names = getattr(ds.features.get(hf.label_column), "names", None)
        if feature_names:
            id_names = tuple(_match_label(str(n), spec) or str(n) for n in feature_names)
    columns = {c: ds[c] for c in (*hf.text_columns, hf.label_column)}
    examples = []
    for i in range(len(ds)):
        row = {field: columns[col][i] for field, col in zip(spec.input_fields, hf.text_columns)}
        raw = columns[hf.label_column][i]
        row[spec.label_field] = (_match_label(raw, spec) or raw) if isinstance(raw, str) else raw
        where = f"row {i + 1} of {dataset_id} split {split!r}"
        examples.append(_to_example(row, where=where, uid=f"{hf.path}/{split}:{i}", spec=spec, id_names=id_names))
    return examples


def _match_label(value: str, spec: TaskSpec) -> str | None:
    """The spec label equal to ``value`` ignoring case and surrounding space, else ``None``."""
    key = value.strip().casefold()
    return next((lab for lab in spec.labels if lab.casefold() == key), None)


def load_task(
    spec: TaskSpec,
    *,
    data: str | Path | Sequence[str | Path] | None = None,
    shared_root: str | Path | None = None,
    max_hub_rows: int | None = None,
) -> tuple[list[Example], list[Example]]:
    """A task's ``(train, test)`` examples from the best available source.

    Order: ``data`` if given (a folder with ``train.*`` / ``test.*``, or a ``(train_file, test_file)``
    pair); else the local copy ``<root>/<spec.name>/`` where ``root`` is ``shared_root``, else
    ``$RL_SELECT_DATA``, else ``../shared/data`` relative to the working directory; else the hub.

    Args:
        spec: The task.
        data: A folder, or two files (train, test).
        shared_root: Folder of offline task copies (see :func:`default_data_root`).
        max_hub_rows: Passed to :func:`load_hf` as ``max_rows`` when the hub is used.

    Returns:
        ``(train, test)`` lists of examples.

    Raises:
        DataError: The given data is bad, or no local copy exists and the hub cannot be reached.
    """
    if data is not None:
        if isinstance(data, (str, Path)):
            path = Path(data)
            if path.is_file():
                raise DataError(
                    f"--data {str(path)!r} is a single file; expected a folder with train and test files "
                    "or a (train, test) pair of files"
                )
            return load_folder(path, spec=spec)
        files = list(data)
        if len(files) != 2:
            raise DataError(f"data {[str(f) for f in files]} has {len(files)} files; expected (train, test)")
        return load_examples(files[0], spec=spec), load_examples(files[1], spec=spec)
    root = default_data_root(shared_root)
    if root is not None and (root / spec.name).is_dir():
        return load_folder(root / spec.name, spec=spec)
    return load_hf(spec, max_rows=max_hub_rows)


# --- splits ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Splits:
    """The seeded splits of one task.

    Attributes:
        pool: Candidate demonstrations (labelled), length ``n_pool``.
        val: Reward / validation queries (labelled), length ``n_val``; disjoint from ``pool``.
        rest: The rest of the train file, unused as demos or val (for unlabelled uses, e.g. features).
        test: Held-out evaluation queries, the whole test file or a seeded subsample.
    """

    pool: tuple[Example, ...]
    val: tuple[Example, ...]
    rest: tuple[Example, ...]
    test: tuple[Example, ...]

    def sizes(self) -> dict[str, int]:
        """``{"pool": n, "val": n, "rest": n, "test": n}``."""
        return {"pool": len(self.pool), "val": len(self.val), "rest": len(self.rest), "test": len(self.test)}


def make_splits(
    train: Sequence[Example],
    test: Sequence[Example],
    *,
    n_pool: int,
    n_val: int,
    n_test: int | None = None,
    seed: int,
    stratify: bool = False,
) -> Splits:
    """Draw the pool, the validation set and (optionally) a test subsample, seeded.

    Both inputs are first put in a stable order (sorted by content), so the result depends only on
    the data, the sizes and ``seed``, not on file order or machine. ``val`` is drawn first and
    ``pool`` from what remains, so changing ``n_pool`` keeps ``val`` fixed (comparable rewards), and
    without ``stratify`` a smaller pool is a prefix of a larger one. The test subsample uses its own
    random stream: it does not change with ``n_pool`` / ``n_val`` and is never stratified; with
    ``n_test=None`` (or ``0``) the test split is kept whole, in its given order.

    Args:
        train: Labelled examples to draw pool and val from.
        test: Held-out examples.
        n_pool: Pool size (>= 1).
        n_val: Validation size (>= 0).
        n_test: Test subsample size; ``None`` or ``0`` keeps the whole test split.
        seed: Seed for ``numpy.random.default_rng``.
        stratify: Balance labels in pool and val as evenly as the data allows (a rare class gives
            all it has; the others fill the rest).

    Returns:
        The :class:`Splits`.

    Raises:
        DataError: An empty split, a negative size, or sizes larger than the data (with the numbers).
    """
    if not train:
        raise DataError("train split is empty; expected at least one example")
    if not test:
        raise DataError("test split is empty; expected at least one example")
    if n_pool < 1 or n_val < 0:
        raise DataError(f"n_pool={n_pool}, n_val={n_val}; expected n_pool >= 1 and n_val >= 0")
    if n_pool + n_val > len(train):
        raise DataError(
            f"n_pool + n_val = {n_pool} + {n_val} = {n_pool + n_val} exceeds the {len(train)} train examples"
        )
    if n_test == 0:
        n_test = None  # the run config's "0: the whole test file"
    if n_test is not None and not 1 <= n_test <= len(test):
        raise DataError(f"n_test={n_test} but the test split has {len(test)} rows; expected 1..{len(test)}, or 0 for "
                        "the whole test split")
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    ordered = _stable_order(train)
    if stratify:
        val_idx = _draw_stratified(ordered, range(len(ordered)), n_val, train_rng)
        left = sorted(set(range(len(ordered))) - set(val_idx))
        pool_idx = _draw_stratified(ordered, left, n_pool, train_rng)
        used = set(val_idx) | set(pool_idx)
        rest_idx = [int(i) for i in train_rng.permutation(len(ordered)) if i not in used]
    else:
        perm = [int(i) for i in train_rng.permutation(len(ordered))]
        val_idx, pool_idx, rest_idx = perm[:n_val], perm[n_val : n_val + n_pool], perm[n_val + n_pool :]
    test_kept = list(test)
    if n_test is not None:
        stable = _stable_order(test)
        test_kept = [stable[int(i)] for i in test_rng.permutation(len(stable))[:n_test]]
    return Splits(
        pool=tuple(ordered[i] for i in pool_idx),
        val=tuple(ordered[i] for i in val_idx),
        rest=tuple(ordered[i] for i in rest_idx),
        test=tuple(test_kept),
    )


def _stable_order(examples: Sequence[Example]) -> list[Example]:
    """Examples sorted by (text, text2, label, uid): independent of file order and machine."""
    return sorted(examples, key=lambda e: (e.text, e.text2 or "", e.label, e.uid))


def _draw_stratified(
    examples: Sequence[Example], candidates: Iterable[int], n: int, rng: np.random.Generator
) -> list[int]:
    """Indices of ``n`` label-balanced examples from ``candidates``, in random order.

    Args:
        examples: All examples (indexed by ``candidates``).
        candidates: Indices that may be drawn, in a stable order.
        n: How many to draw (<= number of candidates).
        rng: The random stream.

    Returns:
        ``n`` distinct indices, shuffled.
    """
    by_label: dict[str, list[int]] = {}
    for i in candidates:
        by_label.setdefault(examples[i].label, []).append(i)
    labels = sorted(by_label)
    quota = balanced_counts({lab: len(by_label[lab]) for lab in labels}, n, rng)
    drawn: list[int] = []
    for lab in labels:
        members = by_label[lab]
        drawn.extend(members[int(j)] for j in rng.permutation(len(members))[: quota[lab]])
    return [drawn[int(j)] for j in rng.permutation(len(drawn))]


def balanced_counts(available: Mapping[str, int], n: int, rng: np.random.Generator) -> dict[str, int]:
    """Split ``n`` draws over labels as evenly as ``available`` allows ("water filling").

    A label with fewer examples than its fair share gives all of them and the others share the rest;
    when ``n`` does not divide evenly, the extra draws go to labels chosen by ``rng``.

    Args:
        available: Label -> number of examples available.
        n: Total draws, at most ``sum(available.values())``.
        rng: Breaks ties for the remainder.

    Returns:
        Label -> draws, summing to ``n``; each at most its availability, and any two labels that are
        not at their availability differ by at most one.
    """
    if n > sum(available.values()):
        raise DataError(f"cannot draw {n} examples from {sum(available.values())} ({dict(available)})")
    counts = {lab: 0 for lab in available}
    active = sorted(lab for lab, a in available.items() if a > 0)
    remaining = n
    while remaining > 0:
        share, extra = divmod(remaining, len(active))
        capped = [lab for lab in active if available[lab] - counts[lab] <= share]
        if capped:
            for lab in capped:
                remaining -= available[lab] - counts[lab]
                counts[lab] = available[lab]
            active = [lab for lab in active if lab not in capped]
            continue
        for lab in active:
            counts[lab] += share
        for j in rng.choice(len(active), size=extra, replace=False):
            counts[active[int(j)]] += 1
        remaining = 0
    return counts


def label_counts(examples: Iterable[Example]) -> dict[str, int]:
    """Label -> number of examples, sorted by label name."""
    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex.label] = counts.get(ex.label, 0) + 1
    return dict(sorted(counts.items()))
