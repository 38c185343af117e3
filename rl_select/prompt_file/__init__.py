"""Offline prompt construction: a prompt file a user can ship, and its Python API.

A user chooses demonstrations once, with any selector (a trained policy or a baseline), and ships the
result. :func:`select_prompt` runs the selection and returns a :class:`PromptFile`; ``save`` writes it
as JSON with the rendered demonstration prefix beside it as plain text; ``load`` reads it back and
:meth:`PromptFile.render` gives the prompt for a query with no LM: the very text the scorer scored
(:func:`rl_select.prompts.render_prompt`), so a shipped prompt is the measured one::

    pf = PromptFile.load("prompt.json")
    pf.render("a gorgeous, witty film")      # '...Review: a gorgeous, witty film\\nSentiment:'
    pf.verbalizers                           # {'negative': 'negative', 'positive': 'positive'}

The file (``format_version`` 2)::

    {"format": "rl_select.prompt", "format_version": 2,
     "kind": "fixed" | "per_query",
     "task": {...TaskSpec.to_dict()},
     "demos": [{"uid": "train.jsonl:17", "fields": {"text": "..."}, "label": "positive"}, ...],
     "per_query": null | {"method": "knn", "k": 4, "embedder": "minilm", "exclude_same_text": true,
                          "order": "...", "pool": [demo, ...]},
     "prefix": "<instruction and demos, each followed by the separator>" | null,
     "query_template": "Review: {text}\\nSentiment:",
     "labels": [...], "label_words": [...],
     "selector": {"name": "random_search", "args": {"n_prompts": 8}, "k": 4, "seed": 0, ...},
     "source": {"data": ..., "pool": "train" | "<file>", "n_pool": 16, "n_val": 32, "seed": 0},
     "validation": {"n_val": 32, "accuracy": 0.81 | null},
     "scorer": {...ScorerSpec.to_dict()} | null,
     "lm_calls": {"select": {...ScorerStats}, "validate": {...ScorerStats}},
     "created": "2025-01-01T00:00:00Z", "rl_select_version": "0.1.0",
     "sha256": "<hash of all the other fields>"}

``demos`` are in prompt order; ``fields`` are keyed by the task's input fields. A ``fixed`` prompt is
``prefix + query_template.format(text=..., text2=...)``. A ``per_query`` file (kNN) has no fixed prefix:
it holds the rule (the pool, ``k``, the embedder) and :meth:`PromptFile.render` runs it for each query
(the MiniLM or hashing embedder, never the LM). ``prefix``, ``query_template``, ``labels`` and
``label_words`` are derived (for readers without rl_select) and checked on load.

Integrity: ``sha256`` is the hash of the whole document but itself (the canonical JSON text of
:func:`rl_select.types.document_sha256`), written by :meth:`PromptFile.save` and checked by
:meth:`PromptFile.load`: a file edited by hand, even into another valid prompt, is refused with one line
saying it was edited or corrupted. Files of ``format_version`` 1 (written before the hash, so an edit
could not be told) are refused: select the prompt again. Where the data is at hand (``evaluate
--prompt-file``, :func:`~rl_select.experiments.prompt_runs.evaluate_prompt_file`),
:meth:`PromptFile.check_uids` also refuses a demonstration whose uid is not a row of the train data its pool
was drawn from; ``prompt`` reads no data, so it renders the stored demonstrations.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rl_select.data import read_jsonl_objects
from rl_select.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    SelectionError,
    TaskError,
    not_utf8,
    utf8_position,
)
from rl_select.lm.base import grouped_logprobs
from rl_select.lm.spec import ScorerSpec
from rl_select.metrics import label_ids
from rl_select.prompts import render_demo, render_prefix, render_prompt, template_parts
from rl_select.tasks import TaskSpec
from rl_select.types import Example, document_sha256, is_int

FORMAT_NAME = "rl_select.prompt"
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


# --- the file ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerQuery:
    """How a per-query prompt file gives each query its demonstrations.

    ``"knn"`` stores the rule (kNN, as at selection time) and runs it for any query without the LM. A trained
    per-query policy needs the LM's zero-shot features to choose, so its file (``"policy"``) stores each
    query's chosen demonstrations (:attr:`assigned`) and renders those queries only.

    Attributes:
        pool: The candidate demonstrations.
        k: Demonstrations per query.
        embedder: ``"minilm"`` (the bundled all-MiniLM-L6-v2), ``"hashing"`` / ``"hashing:<dim>"`` (the
            model-free hashing embedder), or a sentence-transformers model id or folder.
        exclude_same_text: Rank pool items whose text equals the query's last.
        method: ``"knn"`` or ``"policy"``.
        assigned: ``"policy"`` only: ``(query key, pool uids in prompt order)`` per query (:func:`query_key`).
    """

    pool: tuple[Example, ...]
    k: int
    embedder: str = "minilm"
    exclude_same_text: bool = True
    method: str = "knn"
    assigned: tuple[tuple[str, tuple[str, ...]], ...] = ()


PER_QUERY_METHODS: tuple[str, ...] = ("knn", "policy")
"""How a per-query file chooses (see :class:`PerQuery`)."""


def query_key(ex: Example) -> str:
    """The key a ``"policy"`` file stores a query under: its input text(s), a pair joined by a unit separator."""
    return ex.text if ex.text2 is None else f"{ex.text}\x1f{ex.text2}"


@dataclass(frozen=True)
class PromptFile:
    """A chosen prompt: the task, the demonstrations in order (or a per-query rule), and how they were chosen.

    Attributes:
        task: The full task spec (template, verbalisers, separator, instruction).
        demos: The demonstrations in prompt order (empty for a per-query file, or zero-shot).
        per_query: The per-query rule, or ``None`` for one fixed prefix.
        selector: The selector and its settings (``name``, ``args``, ``k``, ``seed``, ...).
        scorer: The scorer spec the selection used (resolved when a scorer was built), or ``None``.
        source: Where the pool came from (``data``, ``pool``, ``n_pool``, ``n_val``, ``seed``).
        val_accuracy: Accuracy on the validation split where it was measured, else ``None``.
        n_val: Validation rows it was measured on (0: not measured).
        lm_calls: LM spend: ``{"select": {...}, "validate": {...}}`` (``ScorerStats.as_dict()``).
        created: UTC time of the selection (ISO 8601).
        origin: The file it was loaded from (``""`` when built in memory); errors name it. Not saved.

    Raises:
        PromptFileError: A demonstration whose label the task lacks, or that lacks one of its input
            fields; a per-query rule that does not fit its pool.
    """

    task: TaskSpec
    demos: tuple[Example, ...] = ()
    per_query: PerQuery | None = None
    selector: Mapping[str, Any] = field(default_factory=dict)
    scorer: ScorerSpec | None = None
    source: Mapping[str, Any] = field(default_factory=dict)
    val_accuracy: float | None = None
    n_val: int = 0
    lm_calls: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    origin: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "demos", tuple(self.demos))
        _check_examples(self.task, self.demos, "demos")
        pq = self.per_query
        if pq is not None:
            if self.demos:
                raise PromptFileError("a per-query prompt holds no fixed demos; expected demos=() with per_query")
            if pq.method not in PER_QUERY_METHODS:
                raise PromptFileError(f"per_query.method={pq.method!r}; expected one of {list(PER_QUERY_METHODS)}")
            if (pq.method == "policy") != bool(pq.assigned):
                raise PromptFileError(f"per_query.method={pq.method!r} with {len(pq.assigned)} assigned queries; "
                                      "expected assigned queries exactly for method 'policy'")
            uids = {d.uid for d in pq.pool}
            for key, chosen in pq.assigned:
                bad = [u for u in chosen if u not in uids]
                if bad or len(chosen) != pq.k:
                    raise PromptFileError(f"per_query.assigned: query {key[:60]!r} has demos {list(chosen)!r:.120}; "
                                          f"expected k={pq.k} uids of the stored pool")
            if not is_int(pq.k) or not 0 <= pq.k <= len(pq.pool):
                raise PromptFileError(f"per_query.k={pq.k!r}; expected 0 <= k <= the pool's {len(pq.pool)} examples")
            if pq.embedder == "scorer" or not isinstance(pq.embedder, str) or not pq.embedder:
                raise PromptFileError(
                    f"per_query.embedder={pq.embedder!r}: a prompt file renders without the LM; expected 'minilm', "
                    "'hashing' or a sentence-transformers model")
            _check_examples(self.task, pq.pool, "per_query.pool")

    # --- what a user reads ----------------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """``"fixed"`` (one prefix for every query) or ``"per_query"``."""
        return "fixed" if self.per_query is None else "per_query"

    @property
    def verbalizers(self) -> dict[str, str]:
        """Label -> the word the LLM should answer with."""
        return {lab: self.task.verbalizers[lab] for lab in self.task.labels}

    @property
    def labels(self) -> tuple[str, ...]:
        """The task's labels, in the order of :attr:`label_words`."""
        return tuple(self.task.labels)

    @property
    def label_words(self) -> tuple[str, ...]:
        """The answer words, in label order (the LLM's completion after the prompt, minus the leading space)."""
        return tuple(self.task.verbalizers[lab] for lab in self.task.labels)

    @property
    def prefix(self) -> str | None:
        """The instruction and demonstrations, each followed by the separator; ``None`` for a per-query file."""
        return render_prefix(self.task, self.demos) if self.per_query is None else None

    @property
    def query_template(self) -> str:
        """The text after the prefix: the template up to the label, with ``{text}`` (and ``{text2}``)."""
        return template_parts(self.task).head

    @property
    def k(self) -> int:
        """Demonstrations per prompt."""
        return len(self.demos) if self.per_query is None else self.per_query.k

    def example(self, query: Example | str | Sequence[str] | Mapping[str, Any], *, where: str = "query") -> Example:
        """A query as an :class:`Example` of this task (see :func:`query_example`)."""
        return query_example(self.task, query, where=where)

    def demos_for(self, queries: Sequence[Example | str | Sequence[str] | Mapping[str, Any]]) -> list[list[Example]]:
        """The demonstrations in prompt order for each query (the same list for every query of a fixed prompt)."""
        examples = [self.example(q, where=f"query {i + 1}") for i, q in enumerate(queries)]
        if self.per_query is None:
            return [list(self.demos) for _ in examples]
        if self.per_query.method == "policy":
            return _assigned_demos(self.per_query, examples, origin=self.origin)
        return _knn_demos(self.per_query, examples)

    def render(self, query: Example | str | Sequence[str] | Mapping[str, Any]) -> str:
        """The whole prompt for one query, ending with the label cue (``"...\\nSentiment:"``); no LM.

        Args:
            query: A text (single-input tasks), a tuple of the task's inputs, a mapping of its input fields
                (``{"text": ...}``), or an :class:`Example` (its label is ignored).

        Raises:
            DataError: A query that does not fit the task (names the missing input field).
        """
        return self.render_many([query])[0]

    def render_many(self, queries: Sequence[Example | str | Sequence[str] | Mapping[str, Any]]) -> list[str]:
        """:meth:`render` for many queries (a per-query file embeds them in one batch)."""
        examples = [self.example(q, where=f"query {i + 1}") for i, q in enumerate(queries)]
        lists = self.demos_for(examples)
        return [render_prompt(self.task, demos, ex) for demos, ex in zip(lists, examples)]

    # --- the document ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON document :meth:`save` writes (see the module docstring), ``sha256`` included."""
        pq = self.per_query
        doc = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "task": self.task.to_dict(),
            "demos": [_demo_doc(self.task, d) for d in self.demos],
            "per_query": None if pq is None else {
                "method": pq.method, "k": pq.k, "embedder": pq.embedder, "exclude_same_text": pq.exclude_same_text,
                "order": KNN_ORDER if pq.method == "knn" else POLICY_ORDER,
                "pool": [_demo_doc(self.task, d) for d in pq.pool],
                **({"assigned": [{"query": key, "demos": list(chosen)} for key, chosen in pq.assigned]}
                   if pq.method == "policy" else {}),
            },
            "prefix": self.prefix,
            "query_template": self.query_template,
            "labels": list(self.labels),
            "label_words": list(self.label_words),
            "selector": _jsonable(self.selector, "selector"),
            "source": _jsonable(self.source, "source"),
            "validation": {"n_val": self.n_val, "accuracy": self.val_accuracy},
            "scorer": None if self.scorer is None else self.scorer.to_dict(),
            "lm_calls": _jsonable(self.lm_calls, "lm_calls"),
            "created": self.created,
            "rl_select_version": _version(),
        }
        doc[HASH_FIELD] = document_sha256(doc, exclude=HASH_FIELD)
        return doc

    @classmethod
    def from_dict(cls, doc: Any, *, where: str = "prompt file") -> PromptFile:
        """Rebuild a prompt file from :meth:`to_dict`'s output, checking it.

        The ``sha256`` field is not checked here (:meth:`load` checks a file's).

        Raises:
            PromptFileError: Another format or version, a missing or bad field (named), or derived fields
                (``prefix``, ``query_template``, ``label_words``) that do not match the task and demos.
        """
        _check_format(doc, where)
        missing = [key for key in _REQUIRED if key not in doc]
        if missing:
            raise PromptFileError(f"{where} lacks the fields {missing}; expected all of {list(_REQUIRED)}")
        try:
            task = TaskSpec.from_dict(doc["task"])
        except TaskError as exc:
            raise PromptFileError(f"{where}: field 'task': {exc}") from None
        if doc["kind"] not in ("fixed", "per_query"):
            raise PromptFileError(f"{where}: kind={doc['kind']!r}; expected 'fixed' or 'per_query'")
        demos = _read_demos(task, doc["demos"], where=where, key="demos")
        pq_doc = doc["per_query"]
        if (pq_doc is None) != (doc["kind"] == "fixed"):
            raise PromptFileError(f"{where}: kind={doc['kind']!r} but per_query is "
                                  f"{'null' if pq_doc is None else 'set'}; expected per_query set only for "
                                  "kind 'per_query'")
        per_query = None
        if pq_doc is not None:
            if not isinstance(pq_doc, dict) or not {"k", "embedder", "pool"} <= set(pq_doc):
                raise PromptFileError(f"{where}: field 'per_query' is {pq_doc!r:.120}; expected an object with "
                                      "'method', 'k', 'embedder', 'exclude_same_text' and 'pool'")
            per_query = PerQuery(pool=tuple(_read_demos(task, pq_doc["pool"], where=where, key="per_query.pool")),
                                 k=pq_doc["k"], embedder=pq_doc["embedder"],
                                 exclude_same_text=bool(pq_doc.get("exclude_same_text", True)),
                                 method=pq_doc.get("method", "knn"), assigned=_read_assigned(pq_doc, where))
        scorer = None
        if doc["scorer"] is not None:
            try:
                scorer = ScorerSpec.from_dict(doc["scorer"], where="field 'scorer'")
            except ConfigError as exc:
                raise PromptFileError(f"{where}: {exc}") from None
        validation = doc.get("validation") or {}
        if not isinstance(validation, dict):
            raise PromptFileError(f"{where}: field 'validation' is {validation!r:.80}; expected an object")
        for key in ("selector", "source", "lm_calls"):
            if not isinstance(doc.get(key) or {}, dict):
                raise PromptFileError(f"{where}: field {key!r} is {doc.get(key)!r:.80}; expected an object")
        try:
            pf = cls(task=task, demos=tuple(demos), per_query=per_query, selector=dict(doc["selector"] or {}),
                     scorer=scorer, source=dict(doc.get("source") or {}), val_accuracy=validation.get("accuracy"),
                     n_val=int(validation.get("n_val") or 0), lm_calls=dict(doc.get("lm_calls") or {}),
                     created=str(doc.get("created") or ""))
        except PromptFileError as exc:
            raise PromptFileError(f"{where}: {exc}") from None
        for key, value in (("prefix", pf.prefix), ("query_template", pf.query_template),
                           ("label_words", list(pf.label_words))):
            if key in doc and doc[key] != value:
                raise PromptFileError(f"{where}: field {key!r} does not match the task and demos it holds (edited "
                                      f"by hand?); expected {value!r:.120}")
        return pf

    def text(self) -> str:
        """What :meth:`save` writes beside the JSON file: the prefix, or for a per-query file its rule."""
        if self.per_query is None:
            return self.prefix or ""
        pq = self.per_query
        if pq.method == "policy":
            by_uid = {d.uid: d for d in pq.pool}
            blocks = [f"# rl_select per-query prompts (a trained per-query policy): {len(pq.assigned)} queries, "
                      f"each with its own k={pq.k} demonstrations ({POLICY_ORDER}).", ""]
            for key, chosen in pq.assigned:
                ex = Example(text=key.split("\x1f")[0], text2=key.split("\x1f")[1] if "\x1f" in key else None,
                             label=self.task.labels[0])
                blocks += [render_prompt(self.task, [by_uid[u] for u in chosen], ex), "", "# ---", ""]
            return "\n".join(blocks)
        pool = "".join(render_demo(self.task, d) + self.task.separator for d in pq.pool)
        head = [
            f"# rl_select per-query prompt ({pq.method}): there is no fixed demonstration prefix.",
            f"# For each query, its demonstrations are {KNN_ORDER.replace('the k', f'the k={pq.k}')}, with the "
            f"{pq.embedder!r} embedder",
            "# (the query's and each pool example's input text, sentence pairs joined by a space"
            + ("; pool texts equal to the query's rank last" if pq.exclude_same_text else "") + ").",
            "# The prompt is the instruction and those demonstrations, each followed by the separator, then the "
            "query:",
            "# render it with `rl-select prompt --prompt-file FILE` or PromptFile.load(FILE).render(query).",
            f"# Instruction: {self.task.instruction!r}; separator: {self.task.separator!r}; query template: "
            f"{self.query_template!r}.",
            f"# The pool ({len(pq.pool)} examples), each as it is rendered when chosen:",
            "",
        ]
        return "\n".join(head) + pool

    # --- save / load ----------------------------------------------------------------------------------

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the JSON file and, beside it, ``<stem>.txt`` (:meth:`text`), each atomically.

        Args:
            path: The ``.json`` file (parent folders are created).
            overwrite: Replace existing files; by default an existing one is refused.

        Returns:
            The JSON file's path.

        Raises:
            PromptFileError: Not a ``.json`` path, or a file that exists and ``overwrite`` is not set.
        """
        path = Path(path)
        check_writable(path, overwrite=overwrite)
        doc = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        _write_atomic(path, doc)
        _write_atomic(text_path(path), self.text())
        return path

    @classmethod
    def load(cls, path: str | Path) -> PromptFile:
        """Read a prompt file written by :meth:`save` (or ``rl-select select``).

        A file must match its ``sha256`` (see the module docstring); version 1 files (no hash) are refused.

        Raises:
            PromptFileError: Missing, not JSON, another format or version, edited or corrupted (its
                contents do not match their ``sha256``), or malformed (one line naming the field).
        """
        path = Path(path)
        where = f"prompt file {str(path)!r}"
        if not path.is_file():
            raise PromptFileError(f"{where} not found; expected a .json file written by rl-select select")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise PromptFileError(not_utf8(where, utf8_position(path.read_bytes()))) from None
        except json.JSONDecodeError as exc:
            raise PromptFileError(f"{where} is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                                  "expected a prompt file written by rl-select select") from None
        except OSError as exc:
            raise PromptFileError(f"cannot read {where}: {exc.strerror or exc}") from None
        _check_format(doc, where)
        version = doc["format_version"]
        if version == FORMAT_VERSION or HASH_FIELD in doc:  # a legacy version never wrote one
            if version != FORMAT_VERSION or doc.get(HASH_FIELD) != document_sha256(doc, exclude=HASH_FIELD):
                raise PromptFileError(f"{where} was edited or corrupted: its contents do not match their recorded "
                                      f"{HASH_FIELD}; select the prompt again")
        return dataclasses.replace(cls.from_dict(doc, where=where), origin=str(path))

    def check_uids(self, rows: Iterable[Example], *, data: str = "the data") -> None:
        """Refuse demonstrations (or per-query pool rows) that are not rows of ``rows``: a uid the data lacks,
        or one that names a row with another text or label.

        Args:
            rows: The rows the demonstrations were drawn from (e.g. the task's train rows).
            data: How messages name them (``"the train data of task 'sst2'"``).

        Raises:
            PromptFileError: One line naming the uid, the file and what was expected.
        """
        by_uid = {ex.uid: ex for ex in rows}
        where = f"prompt file {self.origin!r}" if self.origin else "the prompt"
        demos = self.demos if self.per_query is None else self.per_query.pool
        key = "demos" if self.per_query is None else "per_query.pool"
        for i, demo in enumerate(demos):
            row = by_uid.get(demo.uid)
            if row is None:
                like = f" (like {next(iter(by_uid))!r})" if by_uid else ", which has none"
                raise PromptFileError(f"{where}: {key}[{i}] has uid {demo.uid!r}, not a row of {data}; expected a uid "
                                      f"of its rows{like}")
            if row.content() != demo.content():
                raise PromptFileError(f"{where}: {key}[{i}] (uid {demo.uid!r}) differs in text or label from that row "
                                      f"of {data}; expected the row it was selected from")

    @classmethod
    def from_policy(cls, policy: Any, pool: Sequence[Example], *, scorer: Any, val: Sequence[Example],
                    k: int | None = None, force: bool = False, measure: bool = False) -> PromptFile:
        """Select once with a trained policy (a :class:`~rl_select.mdp.policy.SelectorPolicy` or its file).

        See :func:`select_prompt`; ``measure`` also scores the choice on ``val``.
        """
        from rl_select.mdp.policy import SelectorPolicy

        if not isinstance(policy, SelectorPolicy):
            path = str(policy)
            policy = SelectorPolicy.load(path)
            args = {"path": path}
        else:
            args = {}
        return select_prompt(policy, task=policy.task, pool=pool, val=val, k=k or policy.k, scorer=scorer,
                             measure=measure, args=args, force=force)


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


# --- queries ----------------------------------------------------------------------------------------


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
        raise DataError(f"query file {str(path)!r} not found; expected a .jsonl or .csv file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        out = [(where, query_example(task, obj, where=where)) for _, where, obj in read_jsonl_objects(path)]
    elif suffix == ".csv":
        import pandas as pd

        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise DataError(f"query file {str(path)!r} is empty; expected a header and rows") from None
        except UnicodeDecodeError:
            raise DataError(not_utf8(f"query file {str(path)!r}", utf8_position(path.read_bytes()))) from None
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"cannot read query file {str(path)!r}: {msg}") from None
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


# --- selecting ----------------------------------------------------------------------------------------


def embedder_name(embedder: Any) -> str:
    """The name a prompt file stores for a kNN embedder (see :class:`PerQuery`).

    Raises:
        PromptFileError: ``"scorer"`` (the LM's own states: a prompt file renders without the LM) or an
            embedder object it cannot name.
    """
    from rl_select.embeddings import HashingEmbedder, MiniLMEmbedder

    if embedder is None or embedder == "minilm":
        return "minilm"
    if isinstance(embedder, (str, Path)):
        name = str(embedder)
        if name == "scorer":
            raise PromptFileError("knn with embedder='scorer' needs the LM per query, and a prompt file renders "
                                  "without it; expected embedder 'minilm', 'hashing' or a sentence-transformers model")
        return name
    if isinstance(embedder, HashingEmbedder):
        return "hashing" if embedder.dim == 256 else f"hashing:{embedder.dim}"
    if isinstance(embedder, MiniLMEmbedder):
        return embedder.model or "minilm"
    raise PromptFileError(f"knn embedder {embedder!r} cannot be stored in a prompt file; expected 'minilm', "
                          "'hashing[:dim]' or a sentence-transformers model")


def embedder_from_name(name: str) -> Any:
    """The embedder a stored name stands for: MiniLM, the hashing embedder, or a sentence-transformers model."""
    from rl_select.embeddings import HashingEmbedder, MiniLMEmbedder

    if name == "minilm":
        return MiniLMEmbedder()
    if name == "hashing" or name.startswith("hashing:"):
        dim = name.partition(":")[2]
        if dim and not dim.isdigit():
            raise PromptFileError(f"embedder {name!r}; expected 'hashing' or 'hashing:<dim>'")
        return HashingEmbedder(int(dim) if dim else 256)
    embedder_name(name)  # refuses "scorer"
    return MiniLMEmbedder(name)


def make_baseline(name: str, args: Mapping[str, Any] | None = None) -> Any:
    """A registered baseline selector; kNN's ``embedder`` may also name the hashing embedder (``"hashing"``).

    Raises:
        SelectionError: An unknown name or bad arguments (one line).
        PromptFileError: kNN with ``embedder="scorer"`` (a prompt file renders without the LM).
    """
    from rl_select.selectors import make_selector

    args = dict(args or {})
    base = name.split(":")[0]
    if base == "policy":
        raise SelectionError("selector 'policy' is a trained policy; expected --policy FILE (or "
                             "PromptFile.from_policy) instead")
    if base == "knn" and isinstance(args.get("embedder"), str):
        args["embedder"] = embedder_from_name(args["embedder"])  # refuses "scorer": files render without the LM
    return make_selector(base, **args)


def _read_assigned(pq_doc: Mapping[str, Any], where: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    items = pq_doc.get("assigned", [])
    if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("query"), str) and isinstance(i.get("demos"), list)
            for i in items):
        raise PromptFileError(f"{where}: field 'per_query.assigned' is {items!r:.80}; expected a list of "
                              "{'query': text, 'demos': [uid, ...]}")
    return tuple((i["query"], tuple(str(u) for u in i["demos"])) for i in items)


def _assigned_demos(pq: PerQuery, queries: Sequence[Example], *, origin: str = "") -> list[list[Example]]:
    by_uid = {d.uid: d for d in pq.pool}
    table = dict(pq.assigned)
    out = []
    for i, q in enumerate(queries):
        chosen = table.get(query_key(q))
        if chosen is None:
            where = f"prompt file {origin!r}" if origin else "this prompt file"
            raise PromptFileError(f"query {i + 1} ({q.text[:30]!r}) is not one of the {len(table)} queries {where} "
                                  "holds; a per-query policy needs the LM to choose for a new query (select --policy)")
        out.append([by_uid[u] for u in chosen])
    return out


def select_per_query_prompt(
    policy: Any, *, task: TaskSpec, pool: Sequence[Example], queries: Sequence[Example], scorer: Any,
    val: Sequence[Example] = (), seed: int = 0, measure: bool = True, args: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None, scorer_spec: ScorerSpec | None = None, force: bool = False,
    embedder: Any = None,
) -> PromptFile:
    """A per-query policy's choices for ``queries`` as a ``"policy"`` per-query prompt file.

    Args:
        policy: A :class:`~rl_select.mdp.per_query_policy.PerQueryPolicy`.
        task: The task.
        pool: Labelled candidates (at least the policy's ``M``).
        queries: The queries to choose for (labels unused).
        scorer: The frozen LM (zero-shot features; the policy's training scorer unless ``force``).
        val: Validation rows; with ``measure``, the policy chooses for them too and their accuracy is stored.
        seed, args, source, scorer_spec: Recorded in the file.
        embedder: The neighbourhoods' embedder (the bundled MiniLM, as in training, by default).

    Raises:
        PolicyError, SelectionError: As :meth:`PerQueryPolicy.select_for` (one line).
    """
    from rl_select.embeddings import MiniLMEmbedder
    from rl_select.lm.base import grouped_logprobs
    from rl_select.metrics import label_ids

    emb = embedder or MiniLMEmbedder()
    before = scorer.stats.copy()
    lists = policy.select_for(pool, queries, labels=task.labels, embedder=emb, scorer=scorer, force=force)
    select_stats = scorer.stats - before
    assigned = dict.fromkeys(query_key(q) for q in queries)
    for q, demos in zip(queries, lists):
        assigned[query_key(q)] = tuple(d.uid for d in demos)
    used = {u for chosen in assigned.values() for u in chosen}
    per_query = PerQuery(pool=tuple(d for d in pool if d.uid in used), k=policy.k, embedder="minilm",
                         method="policy", assigned=tuple(assigned.items()))
    acc, lm_calls = None, {"select": select_stats.as_dict()}
    if measure and val:
        before = scorer.stats.copy()
        val_lists = policy.select_for(pool, val, labels=task.labels, embedder=emb, scorer=scorer, force=force)
        pred = grouped_logprobs(scorer, val_lists, list(val)).argmax(axis=1)
        acc = float(np.mean(pred == label_ids(task.labels, val)))
        lm_calls["validate"] = (scorer.stats - before).as_dict()
    spec = getattr(scorer, "scorer_spec", None) or scorer_spec
    return PromptFile(task=task, per_query=per_query, scorer=spec, source=dict(source or {}),
                      selector={"name": "policy_pq", "args": dict(args or {}), "k": policy.k, "seed": seed,
                                "m": policy.m, "feature_set": policy.feature_set},
                      val_accuracy=acc, n_val=len(val) if acc is not None else 0, lm_calls=lm_calls,
                      created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


def _knn_demos(pq: PerQuery, queries: Sequence[Example]) -> list[list[Example]]:
    from rl_select.selectors import KNNSelector, SelectionContext

    knn = KNNSelector(embedder_from_name(pq.embedder), exclude_same_text=pq.exclude_same_text)
    ctx = SelectionContext(pool=pq.pool, val=(), k=pq.k, scorer=None, rng=np.random.default_rng(0))  # type: ignore[arg-type]
    return knn.select_for(ctx, list(queries))


def select_prompt(
    selector: Any,
    *,
    task: TaskSpec,
    pool: Sequence[Example],
    val: Sequence[Example] = (),
    k: int,
    scorer: Any = None,
    seed: int = 0,
    measure: bool = True,
    name: str | None = None,
    args: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    scorer_spec: ScorerSpec | None = None,
    force: bool = False,
) -> PromptFile:
    """Choose demonstrations with any selector and return them as a :class:`PromptFile` (not yet saved).

    The selection is the evaluation harness's: the selector sees ``SelectionContext(pool, val, k, scorer,
    numpy.random.default_rng(seed))``, so with the harness's seeded pool and val it picks what the
    harness's row for that seed picks. A per-query selector (kNN) is stored as its rule.

    Args:
        selector: A selector name (see :func:`make_baseline`), a :class:`~rl_select.selectors.Selector`, or a
            :class:`~rl_select.mdp.policy.SelectorPolicy`.
        task: The task (the file's template and verbalisers).
        pool: The candidate demonstrations.
        val: Labelled validation rows (search selectors' score; the policy's state features; measurement).
        k: Demonstrations to choose.
        scorer: The LM; ``None`` is allowed for selectors that need none (zero_shot, random, knn) with
            ``measure=False``.
        seed: The selector's random seed.
        measure: Also measure the choice's accuracy on ``val`` (LM calls; kNN per val row).
        name: The selector's name in the file (default: the registry name, or ``"policy"``).
        args: Its settings, recorded (and, for a name, passed to it).
        source: Where ``pool`` and ``val`` came from, recorded.
        scorer_spec: The scorer spec to record when ``scorer`` carries none (e.g. no LM was loaded).
        force: Use a policy with a scorer other than its training one.

    Raises:
        PromptFileError, SelectionError, PolicyError: One line naming the problem.
    """
    from rl_select.mdp.policy import SelectorPolicy
    from rl_select.selectors import KNNSelector, SelectionContext, Selector, check_k

    args = dict(args or {})
    pool, val = tuple(pool), tuple(val)
    record: dict[str, Any] = {}
    if isinstance(selector, str):
        name = name or selector
        selector = make_baseline(selector, args)
    if isinstance(selector, SelectorPolicy):
        name = name or "policy"
        record = {"agent": selector.agent, "feature_set": selector.feature_spec.kind,
                  "tensors_sha256": selector.describe().get("tensors_sha256")}
    elif not isinstance(selector, Selector):
        raise SelectionError(f"selector {selector!r:.80} is neither a selector name, a Selector nor a SelectorPolicy")
    else:  # its effective settings (defaults included), as far as they are plain values
        settings = {key: v for key, v in vars(selector).items() if not key.startswith("_") and key != "policy"}
        args = {**settings, **args}
    name = name or getattr(selector, "name", type(selector).__name__)
    tags = getattr(selector, "tags", None)  # its declaration: kNN (MiniLM / hashing embedder) needs no LM
    needs_lm = isinstance(selector, SelectorPolicy) or tags is None or tags.lm
    if scorer is None and (needs_lm or (measure and val)):
        why = " to measure val accuracy" if measure and val and not needs_lm else ""
        raise SelectionError(f"selector {name!r} needs the LM (a scorer){why}; expected scorer=...")
    if scorer is not None and getattr(scorer, "spec", task) != task:
        raise SelectionError(f"the scorer is for task {scorer.spec.name!r}, the prompt for task {task.name!r}; "
                             "expected a scorer built for the prompt's task")
    stats = getattr(scorer, "stats", None)
    before = stats.copy() if stats is not None else None
    ctx = SelectionContext(pool=pool, val=val, k=k, scorer=scorer, rng=np.random.default_rng(seed))
    per_query = None
    demos: list[Example] = []
    if isinstance(selector, SelectorPolicy):
        demos = selector.select(pool, scorer=scorer, val=val, k=k, force=force)
    elif selector.per_query:
        if not isinstance(selector, KNNSelector):
            raise PromptFileError(f"selector {name!r} chooses per query in a way a prompt file cannot store; "
                                  "expected knn or a selector with one prompt")
        check_k(ctx)
        per_query = PerQuery(pool=pool, k=k, embedder=embedder_name(selector.embedder),
                             exclude_same_text=selector.exclude_same_text)
        args["embedder"] = per_query.embedder
    else:
        demos = selector.select(ctx)
    mid = stats.copy() if stats is not None else None
    val_acc = None
    if measure and val:
        lists = [demos] * len(val) if per_query is None else _knn_demos(per_query, val)
        val_acc = float(np.mean(grouped_logprobs(scorer, lists, val).argmax(1) == label_ids(scorer.spec.labels, val)))
    after = stats.copy() if stats is not None else None
    lm_calls = {"select": (mid - before).as_dict(), "validate": (after - mid).as_dict()} if stats is not None \
        else {}
    if isinstance(selector, SelectorPolicy):
        lm_calls["policy_lm_queries"] = (selector.last_selection_info or {}).get("lm_queries")
    spec = getattr(scorer, "scorer_spec", None) or scorer_spec
    return PromptFile(
        task=task, demos=tuple(demos), per_query=per_query,
        selector={"name": name, "args": _plain(args), "k": k, "seed": seed, **record},
        scorer=spec, source=dict(source or {}), val_accuracy=val_acc,
        n_val=len(val) if val_acc is not None else 0, lm_calls=lm_calls,
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _plain(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v))
            for k, v in args.items()}


class SavedPromptSelector:
    """A prompt file as a per-query selector for the evaluation harness's ``run_one``: its stored rule per query.

    (Fixed prompt files are evaluated as explicit demonstrations; this is for per-query files.)
    """

    per_query = True
    name = "prompt_file"

    def __init__(self, prompt: PromptFile) -> None:
        self.prompt = prompt

    def select(self, ctx: Any) -> list[Example]:
        if self.prompt.per_query is not None:
            raise SelectionError("a per-query prompt file has no single demonstration list; expected select_for")
        return list(self.prompt.demos)

    def select_for(self, ctx: Any, queries: Sequence[Example]) -> list[list[Example]]:
        return self.prompt.demos_for(list(queries))


__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "PerQuery", "PromptFile", "PromptFileError",
    "SavedPromptSelector", "check_writable", "embedder_from_name", "embedder_name", "make_baseline",
    "parse_query", "parse_query_lines", "query_example", "query_fields", "read_query_file", "select_prompt",
    "text_path",
]
