"""Task specifications: fields, labels, verbalisers and the prompt template; a user's spec file.

A template holds ``{text}`` (and ``{text2}`` for sentence-pair tasks) and ends with ``{label}``; only
whitespace may follow ``{label}``. The text before ``{label}`` is the query prompt; the verbaliser is
scored as its continuation, e.g. ``"Review: {text}\\nSentiment: {label}"`` scores ``" positive"``
after ``"...\\nSentiment:"``. A user's own task is a JSON or TOML file read by :func:`load_task_spec`.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from rl_select.errors import TaskError, one_of, read_utf8


@dataclass(frozen=True)
class HFSource:
    """Where a task lives on the Hugging Face hub (for users with a network).

    Attributes:
        path: Dataset id, e.g. ``"stanfordnlp/sst2"``.
        name: Dataset config name, if any.
        train_split / test_split: Split names used as train and test.
        text_columns: Source columns for ``text`` (and ``text2``), in order.
        label_column: Source column holding the label.
        label_names: For integer labels, the canonical label name of each id; ``None`` when the
            column already holds names (or a ``ClassLabel`` feature supplies them).
    """

    path: str
    name: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    label_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TaskSpec:
    """How to read and prompt one classification task.

    Attributes:
        name: Short task name (``"sst2"``).
        labels: Canonical label names, in the order of the scorer's output columns.
        verbalizers: Label name -> the word the LM must produce for it.
        template: Demo/query template with ``{text}``, optional ``{text2}``, ending in ``{label}``.
        input_fields: Columns of a local file that hold ``text`` (and ``text2``).
        label_field: Column of a local file that holds the label.
        separator: String placed between demonstrations (and before the query).
        instruction: Optional text placed before the first demonstration.
        hf: Hub source, for users with a network.
    """

    name: str
    labels: tuple[str, ...]
    verbalizers: dict[str, str]
    template: str
    input_fields: tuple[str, ...] = ("text",)
    label_field: str = "label"
    separator: str = "\n\n"
    instruction: str = ""
    hf: HFSource | None = None

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise TaskError(f"task {self.name!r} has labels {list(self.labels)}; expected at least two")
        if len(set(self.labels)) != len(self.labels):
            raise TaskError(f"task {self.name!r}: labels {list(self.labels)} contain duplicates")
        missing = [lab for lab in self.labels if lab not in self.verbalizers]
        if missing:
            raise TaskError(f"task {self.name!r}: labels {missing} have no verbaliser")
        if "{label}" not in self.template or not self.template.rstrip().endswith("{label}"):
            raise TaskError(
                f"task {self.name!r}: template {self.template!r} must end with '{{label}}'"
            )
        if "{text}" not in self.template:
            raise TaskError(f"task {self.name!r}: template {self.template!r} lacks '{{text}}'")
        if not 1 <= len(self.input_fields) <= 2:
            raise TaskError(f"task {self.name!r}: input_fields {self.input_fields} must be 1 or 2 names")
        if len(self.input_fields) == 2 and "{text2}" not in self.template:
            raise TaskError(f"task {self.name!r}: a pair task's template needs '{{text2}}'")
        if self.hf is not None:
            self._check_hf(self.hf)

    def _check_hf(self, hf: HFSource) -> None:
        if len(hf.text_columns) != len(self.input_fields):
            raise TaskError(
                f"task {self.name!r}: hf.text_columns {list(hf.text_columns)} must name "
                f"{len(self.input_fields)} column(s), one per input field {list(self.input_fields)}"
            )
        if hf.label_names is not None:
            unknown = [lab for lab in hf.label_names if lab not in self.labels]
            if unknown:
                raise TaskError(
                    f"task {self.name!r}: hf.label_names {unknown} are not labels; "
                    f"expected names from {list(self.labels)}"
                )

    @property
    def is_pair(self) -> bool:
        return len(self.input_fields) == 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (round-trips through :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "task spec") -> TaskSpec:
        """Build a spec from :meth:`to_dict`'s output (lists are accepted for tuples); ``where`` names it in errors.

        Raises:
            TaskError: A key is unknown or missing (named against the valid ones), or the spec is inconsistent.
        """
        if not isinstance(d, dict):
            raise TaskError(f"bad task spec {d!r:.80}: expected a mapping of fields")
        d = dict(d)
        _check_fields(where, d, cls)
        hf = d.pop("hf", None)
        for key in ("labels", "input_fields"):
            if key in d:
                d[key] = _as_tuple(key, d[key])
        if hf is not None:
            if not isinstance(hf, dict):
                raise TaskError(f"task spec field 'hf' is {hf!r:.60}; expected a table of hub fields")
            hf = dict(hf)
            _check_fields(f"{where} [hf]", hf, HFSource)
            for key in ("text_columns", "label_names"):
                if hf.get(key) is not None:
                    hf[key] = _as_tuple(f"hf.{key}", hf[key])
            hf = HFSource(**hf)
        try:
            return cls(hf=hf, **d)
        except TypeError as exc:  # a value of the wrong kind, e.g. verbalizers given as a list
            raise TaskError(f"bad task spec {d.get('name')!r}: {str(exc)[:120]}") from None

    def digest_fields(self) -> dict[str, Any]:
        """The fields that change the prompt (part of every cache key)."""
        return {
            "labels": list(self.labels),
            "verbalizers": [self.verbalizers[lab] for lab in self.labels],
            "template": self.template,
            "separator": self.separator,
            "instruction": self.instruction,
        }


def _check_fields(where: str, d: dict[str, Any], cls: type) -> None:
    """Refuse unknown and missing keys of a dataclass's mapping, each named against the valid fields."""
    known = [f.name for f in fields(cls)]
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    unknown = [key for key in d if key not in known]
    if unknown:
        raise TaskError(f"{where}: unknown field {unknown[0]!r}; expected some of {one_of(known, unknown[0])}")
    missing = [key for key in required if key not in d]
    if missing:
        raise TaskError(f"{where}: missing field{'s' * (len(missing) > 1)} {', '.join(missing)}; "
                        f"required: {', '.join(required)}")


def _as_tuple(key: str, value: Any) -> tuple[str, ...]:
    """A list/tuple field as a tuple; a bare string is refused (it would split into characters)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TaskError(f"task spec field {key!r} is {value!r:.80}; expected a list of strings")
    return tuple(value)


def load_task_spec(path: str | Path) -> TaskSpec:
    """Read a user's task spec from a ``.json`` or ``.toml`` file.

    The file holds :meth:`TaskSpec.to_dict`'s fields at the top level, or under a ``task`` table.
    A TOML example::

        name = "spam"
        labels = ["ham", "spam"]
        template = "Message: {text}\\nType: {label}"
        [verbalizers]
        ham = "normal"
        spam = "spam"

    Args:
        path: The spec file.

    Returns:
        The validated spec (not registered; call :func:`register_task` to add it).

    Raises:
        TaskError: The file is missing, unparsable, or holds a bad spec (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"task spec file {str(path)!r} not found; expected a .json or .toml file")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise TaskError(f"task spec file {str(path)!r} has suffix {suffix!r}; expected .json or .toml")
    where = f"task spec file {str(path)!r}"
    text = read_utf8(path, where, TaskError, expected="a .json or .toml task spec")
    try:
        raw = json.loads(text) if suffix == ".json" else _parse_toml(text)
    except ValueError as exc:
        raise TaskError(f"cannot parse {where}: {exc}") from None
    if isinstance(raw, dict) and set(raw) == {"task"} and isinstance(raw["task"], dict):
        raw = raw["task"]
    if not isinstance(raw, dict):
        raise TaskError(f"{where} holds {type(raw).__name__}; expected an object")
    try:
        return TaskSpec.from_dict(raw, where=where)
    except TaskError as exc:
        msg = str(exc)
        raise TaskError(msg if msg.startswith(where) else f"{where}: {msg}") from None


def _parse_toml(text: str) -> dict[str, Any]:
    """Parse TOML with ``tomllib`` (Python >= 3.11) or its backport ``tomli``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise TaskError("reading a TOML task spec needs Python >= 3.11 or `pip install tomli`") from None
    return tomllib.loads(text)  # TOMLDecodeError is a ValueError
