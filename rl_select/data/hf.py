"""Load a task's examples from the Hugging Face hub (``datasets``), offline-aware."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rl_select.data.files import _to_example
from rl_select.errors import DataError
from rl_select.tasks import TaskSpec
from rl_select.types import Example


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
