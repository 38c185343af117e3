"""Task specifications: fields, labels, verbalisers and the prompt template.

A template holds ``{text}`` (and ``{text2}`` for sentence-pair tasks) and ends with ``{label}``; only
whitespace may follow ``{label}``. The text before ``{label}`` is the query prompt; the verbaliser is
scored as its continuation, e.g. ``"Review: {text}\\nSentiment: {label}"`` scores ``" positive"``
after ``"...\\nSentiment:"``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from rl_select.errors import TaskError


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
        if not self.labels:
            raise TaskError(f"task {self.name!r} has no labels; expected at least two")
        missing = [lab for lab in self.labels if lab not in self.verbalizers]
        if missing:
            raise TaskError(f"task {self.name!r}: labels {missing} have no verbaliser")
        if "{label}" not in self.template or self.template.rstrip().endswith("{label}") is False:
            raise TaskError(
                f"task {self.name!r}: template {self.template!r} must end with '{{label}}'"
            )
        if "{text}" not in self.template:
            raise TaskError(f"task {self.name!r}: template {self.template!r} lacks '{{text}}'")
        if len(self.input_fields) == 2 and "{text2}" not in self.template:
            raise TaskError(f"task {self.name!r}: a pair task's template needs '{{text2}}'")
        if not 1 <= len(self.input_fields) <= 2:
            raise TaskError(f"task {self.name!r}: input_fields {self.input_fields} must be 1 or 2 names")

    @property
    def is_pair(self) -> bool:
        return len(self.input_fields) == 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (round-trips through :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskSpec:
        d = dict(d)
        hf = d.pop("hf", None)
        for key in ("labels", "input_fields"):
            if key in d:
                d[key] = tuple(d[key])
        if hf is not None:
            hf = dict(hf)
            for key in ("text_columns", "label_names"):
                if hf.get(key) is not None:
                    hf[key] = tuple(hf[key])
            hf = HFSource(**hf)
        try:
            return cls(hf=hf, **d)
        except TypeError as exc:
            raise TaskError(f"bad task spec {json.dumps(d)[:200]}: {exc}") from None

    def digest_fields(self) -> dict[str, Any]:
        """The fields that change the prompt (part of every cache key)."""
        return {
            "labels": list(self.labels),
            "verbalizers": [self.verbalizers[lab] for lab in self.labels],
            "template": self.template,
            "separator": self.separator,
            "instruction": self.instruction,
        }


BUILTIN_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a spec to the built-in registry (used by ``get_task``)."""
    BUILTIN_TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The built-in spec called ``name``; raises :class:`TaskError` naming the known ones."""
    try:
        return BUILTIN_TASKS[name]
    except KeyError:
        raise TaskError(
            f"unknown task {name!r}; expected one of {sorted(BUILTIN_TASKS)}"
        ) from None


# --- built-in specs -------------------------------------------------------------------------------

register_task(
    TaskSpec(
        name="sst2",
        labels=("negative", "positive"),
        verbalizers={"negative": "negative", "positive": "positive"},
        template="Review: {text}\nSentiment: {label}",
        hf=HFSource(
            path="stanfordnlp/sst2", test_split="validation", text_columns=("sentence",),
            label_names=("negative", "positive"),
        ),
    )
)
