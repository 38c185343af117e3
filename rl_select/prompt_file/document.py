"""The prompt file as a document: :class:`PromptFile` (render, JSON document, save / load with its hash check,
uid check) and :class:`PerQuery`, a per-query file's rule."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rl_select.errors import ConfigError, TaskError, binary_kind, not_utf8, utf8_position
from rl_select.lm.spec import ScorerSpec
from rl_select.prompt_file.fileformat import (
    _REQUIRED,
    FORMAT_NAME,
    FORMAT_VERSION,
    HASH_FIELD,
    KNN_ORDER,
    POLICY_ORDER,
    PromptFileError,
    _check_examples,
    _check_format,
    _demo_doc,
    _jsonable,
    _read_assigned,
    _read_demos,
    _version,
    _write_atomic,
    check_writable,
    text_path,
)
from rl_select.prompt_file.knn_rule import _knn_demos
from rl_select.prompt_file.queries import query_example
from rl_select.prompts import render_demo, render_prefix, render_prompt, template_parts
from rl_select.tasks import TaskSpec
from rl_select.types import Example, document_sha256, is_int


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
        expected = "a .json file written by rl-select select"
        if path.is_dir():
            raise PromptFileError(f"{where} is a folder; expected {expected}")
        if not path.is_file():
            raise PromptFileError(f"{where} not found; expected {expected}")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raw = path.read_bytes()
            kind = binary_kind(raw)
            if kind is not None:
                raise PromptFileError(f"{where} is {kind}, not a prompt file; expected {expected}") from None
            raise PromptFileError(not_utf8(where, utf8_position(raw))) from None
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
        from rl_select.prompt_file.selection import select_prompt

        if not isinstance(policy, SelectorPolicy):
            path = str(policy)
            policy = SelectorPolicy.load(path)
            args = {"path": path}
        else:
            args = {}
        return select_prompt(policy, task=policy.task, pool=pool, val=val, k=k or policy.k, scorer=scorer,
                             measure=measure, args=args, force=force)


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
