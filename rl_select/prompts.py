"""Render ordered demonstrations and queries into prompt text.

Direct scoring (the default) asks for ``P(verbaliser | prefix + query)``: the prefix is the instruction
and the rendered demonstrations, each followed by the separator; the query is the template up to
``{label}`` with trailing spaces moved into the label continuation (``"Sentiment:"`` + ``" positive"``),
so that the continuation tokenises as it would inside a demonstration.

Channel scoring (Min et al. 2022) asks for ``P(input | prefix + label line)``: demonstrations put the
label line first (``"Sentiment: positive\\nReview: ..."``) and the scored continuation is the query's
input part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rl_select.tasks import TaskSpec
from rl_select.types import Example

#: Scoring modes: P(label | input) or P(input | label).
Mode = Literal["direct", "channel"]

#: Content-free inputs for contextual calibration (Zhao et al. 2021).
CONTENT_FREE_INPUTS: tuple[str, ...] = ("N/A", "", "[MASK]")


@dataclass(frozen=True)
class TemplateParts:
    """A template cut at ``{label}``.

    Attributes:
        head: Text before ``{label}`` with trailing spaces removed (holds ``{text}``/``{text2}``).
        gap: The spaces removed from ``head``; they start every label continuation.
        tail: Whitespace after ``{label}``.
        input_part: For channel scoring: the lines of ``head`` before the label line.
        label_line: For channel scoring: the label line up to ``{label}`` (``"Sentiment: "``).
    """

    head: str
    gap: str
    tail: str
    input_part: str
    label_line: str


def template_parts(spec: TaskSpec) -> TemplateParts:
    """Cut ``spec.template`` into the pieces the scorers need."""
    before, _, tail = spec.template.rpartition("{label}")
    head = before.rstrip(" \t")
    gap = before[len(head):]
    if "\n" in before:
        input_part, _, label_line = before.rpartition("\n")
    else:
        input_part, label_line = before, ""
    return TemplateParts(head=head, gap=gap, tail=tail, input_part=input_part, label_line=label_line)


def _fields(example: Example) -> dict[str, str]:
    return {"text": example.text, "text2": example.text2 or ""}


def render_demo(spec: TaskSpec, demo: Example, *, channel: bool = False) -> str:
    """One demonstration with its label word, e.g. ``"Review: great\\nSentiment: positive"``."""
    parts = template_parts(spec)
    word = spec.verbalizers[demo.label]
    if channel:
        return f"{parts.label_line}{word}\n{parts.input_part.format(**_fields(demo))}".rstrip(" ")
    return f"{parts.head.format(**_fields(demo))}{parts.gap}{word}{parts.tail}"


def render_prefix(spec: TaskSpec, demos: Sequence[Example], *, channel: bool = False) -> str:
    """Instruction and demonstrations, each followed by the separator ('' with no demos/instruction)."""
    pieces = [spec.instruction] if spec.instruction else []
    pieces += [render_demo(spec, d, channel=channel) for d in demos]
    return "".join(p + spec.separator for p in pieces)


def render_query(spec: TaskSpec, query: Example) -> str:
    """The query as the LM sees it before the label, e.g. ``"Review: great\\nSentiment:"``."""
    return template_parts(spec).head.format(**_fields(query))


def label_continuations(spec: TaskSpec) -> list[str]:
    """Per label (in ``spec.labels`` order), the continuation scored in direct mode (``" positive"``)."""
    gap = template_parts(spec).gap
    return [gap + spec.verbalizers[lab] for lab in spec.labels]


def channel_contexts(spec: TaskSpec) -> list[str]:
    """Per label, the channel-mode context that precedes the scored input (``"Sentiment: positive\\n"``)."""
    parts = template_parts(spec)
    return [f"{parts.label_line}{spec.verbalizers[lab]}\n" for lab in spec.labels]


def channel_target(spec: TaskSpec, query: Example) -> str:
    """The query text scored in channel mode (``"Review: great"``)."""
    return template_parts(spec).input_part.format(**_fields(query))


def render_prompt(spec: TaskSpec, demos: Sequence[Example], query: Example) -> str:
    """The whole direct-mode prompt for one query, ready for the LLM to complete with a label word."""
    return render_prefix(spec, demos) + render_query(spec, query)


def content_free_queries(spec: TaskSpec) -> list[Example]:
    """Content-free queries (every input field set to the same content-free string)."""
    label = spec.labels[0]
    return [
        Example(text=s, text2=s if spec.is_pair else None, label=label, uid=f"content-free:{i}")
        for i, s in enumerate(CONTENT_FREE_INPUTS)
    ]


def scoring_texts(
    spec: TaskSpec, demos: Sequence[Example], queries: Sequence[Example], *, mode: Mode = "direct"
) -> list[list[tuple[str, str]]]:
    """For each query and label, the ``(context, continuation)`` texts whose log-prob is the label score.

    Direct: ``(prefix + query, label continuation)``; channel: ``(prefix + label line, query input)``.
    Backends that score whole texts (the reference scorer, a completions server) use this; the fast HF
    scorer splits the same texts into a shared prefix and per-row pieces.

    Returns:
        ``texts[i][j]`` for query ``i`` and label ``j`` (``spec.labels`` order).
    """
    channel = mode == "channel"
    prefix = render_prefix(spec, demos, channel=channel)
    if channel:
        contexts = [prefix + c for c in channel_contexts(spec)]
        return [[(ctx, channel_target(spec, q)) for ctx in contexts] for q in queries]
    conts = label_continuations(spec)
    return [[(prefix + render_query(spec, q), c) for c in conts] for q in queries]
