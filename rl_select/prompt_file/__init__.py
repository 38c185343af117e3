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

Modules by job: :mod:`~rl_select.prompt_file.document` (:class:`PromptFile`, :class:`PerQuery`),
:mod:`~rl_select.prompt_file.fileformat` (format constants, version check, JSON records, atomic writes),
:mod:`~rl_select.prompt_file.queries` (queries from text, lines or files), :mod:`~rl_select.prompt_file.knn_rule`
(a kNN file's embedder and rule), :mod:`~rl_select.prompt_file.selection` (:func:`select_prompt`,
:func:`select_per_query_prompt`, :func:`make_baseline`) and :mod:`~rl_select.prompt_file.saved`
(:class:`SavedPromptSelector`); their names are importable from here.
"""

from __future__ import annotations

from rl_select.prompt_file.document import PER_QUERY_METHODS, PerQuery, PromptFile, query_key
from rl_select.prompt_file.fileformat import (
    FORMAT_NAME,
    FORMAT_VERSION,
    HASH_FIELD,
    KNN_ORDER,
    LEGACY_VERSIONS,
    POLICY_ORDER,
    PromptFileError,
    check_writable,
    text_path,
)
from rl_select.prompt_file.knn_rule import embedder_from_name, embedder_name
from rl_select.prompt_file.queries import parse_query, parse_query_lines, query_example, query_fields, read_query_file
from rl_select.prompt_file.saved import SavedPromptSelector
from rl_select.prompt_file.selection import make_baseline, select_per_query_prompt, select_prompt

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "HASH_FIELD", "KNN_ORDER", "LEGACY_VERSIONS", "PER_QUERY_METHODS", "POLICY_ORDER",
    "PerQuery", "PromptFile", "PromptFileError", "SavedPromptSelector", "check_writable", "embedder_from_name",
    "embedder_name", "make_baseline", "parse_query", "parse_query_lines", "query_example", "query_fields", "query_key",
    "read_query_file", "select_per_query_prompt", "select_prompt", "text_path",
]
