"""Load a task's examples (JSONL / CSV / Parquet / Hugging Face hub) and split them, seeded.

Typical use::

    spec = get_task("trec")
    train, test = load_task(spec)                        # local copy if present, else the hub
    splits = make_splits(train, test, n_pool=100, n_val=64, seed=0, stratify=True)

Modules by job: :mod:`~rl_select.data.files` (one file or a folder of files -> examples),
:mod:`~rl_select.data.hf` (the hub), :mod:`~rl_select.data.splits` (seeded pool / val / rest / test);
:func:`load_task` picks the source. Every name is importable from here. Every problem with the input is a
one-line :class:`~rl_select.errors.DataError` naming the file, the line or row, and the offending value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rl_select.data.files import SUFFIXES, load_examples, load_folder, read_jsonl_objects, read_table_file
from rl_select.data.hf import load_hf
from rl_select.data.splits import Splits, balanced_counts, label_counts, make_splits
from rl_select.errors import DataError
from rl_select.tasks import DATA_ENV_VAR, TaskSpec, default_data_root
from rl_select.types import Example

__all__ = [
    "DATA_ENV_VAR", "SUFFIXES", "Splits", "balanced_counts", "default_data_root", "label_counts", "load_examples",
    "load_folder", "load_hf", "load_task", "make_splits", "read_jsonl_objects", "read_table_file",
]


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
