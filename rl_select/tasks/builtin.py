"""The built-in task registry: ``sst2``, ``agnews``, ``trec``, ``subj``, ``rte``, ``cb`` (offline copies exist in
``shared/data``) and the hub-only ``amazon``, ``mr``, ``cr``, ``dbpedia``."""

from __future__ import annotations

from rl_select.errors import TaskError
from rl_select.tasks.spec import HFSource, TaskSpec

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

_SENTIMENT = ("negative", "positive")
_SENTIMENT_WORDS = {"negative": "negative", "positive": "positive"}
_REVIEW = "Review: {text}\nSentiment: {label}"
_PAIR = "Premise: {text}\nHypothesis: {text2}\nAnswer: {label}"

register_task(
    TaskSpec(
        name="sst2",
        labels=_SENTIMENT,
        verbalizers=dict(_SENTIMENT_WORDS),
        template=_REVIEW,
        hf=HFSource(
            path="stanfordnlp/sst2", test_split="validation", text_columns=("sentence",),
            label_names=_SENTIMENT,
        ),
    )
)

register_task(
    TaskSpec(
        name="agnews",
        labels=("World", "Sports", "Business", "Sci/Tech"),
        verbalizers={"World": "World", "Sports": "Sports", "Business": "Business", "Sci/Tech": "Technology"},
        template="Article: {text}\nTopic: {label}",
        hf=HFSource(path="fancyzhx/ag_news", label_names=("World", "Sports", "Business", "Sci/Tech")),
    )
)

register_task(
    TaskSpec(
        name="trec",
        labels=("abbreviation", "description", "entity", "human", "location", "number"),
        verbalizers={
            "abbreviation": "Abbreviation",
            "description": "Description",
            "entity": "Entity",
            "human": "Person",
            "location": "Location",
            "number": "Number",
        },
        template="Question: {text}\nAnswer type: {label}",
        # The hub's ClassLabel order is ABBR, ENTY, DESC, HUM, LOC, NUM.
        hf=HFSource(
            path="CogComp/trec", label_column="coarse_label",
            label_names=("abbreviation", "entity", "description", "human", "location", "number"),
        ),
    )
)

register_task(
    TaskSpec(
        name="subj",
        labels=("subjective", "objective"),
        verbalizers={"subjective": "subjective", "objective": "objective"},
        template="Input: {text}\nType: {label}",
        hf=HFSource(path="SetFit/subj", label_column="label_text"),
    )
)

register_task(
    TaskSpec(
        name="rte",
        labels=("entailment", "not_entailment"),
        verbalizers={"entailment": "yes", "not_entailment": "no"},
        template=_PAIR,
        input_fields=("text", "text2"),
        hf=HFSource(
            path="nyu-mll/glue", name="rte", test_split="validation",
            text_columns=("sentence1", "sentence2"), label_names=("entailment", "not_entailment"),
        ),
    )
)

register_task(
    TaskSpec(
        name="cb",
        labels=("entailment", "contradiction", "neutral"),
        verbalizers={"entailment": "yes", "contradiction": "no", "neutral": "maybe"},
        template=_PAIR,
        input_fields=("text", "text2"),
        hf=HFSource(
            path="aps/super_glue", name="cb", test_split="validation",
            text_columns=("premise", "hypothesis"), label_names=("entailment", "contradiction", "neutral"),
        ),
    )
)

# --- hub-only specs (no offline copy) --------------------------------------------------------------

register_task(
    TaskSpec(
        name="amazon",
        labels=_SENTIMENT,
        verbalizers=dict(_SENTIMENT_WORDS),
        template=_REVIEW,
        hf=HFSource(path="fancyzhx/amazon_polarity", text_columns=("content",), label_names=_SENTIMENT),
    )
)

register_task(
    TaskSpec(
        name="mr",
        labels=_SENTIMENT,
        verbalizers=dict(_SENTIMENT_WORDS),
        template=_REVIEW,
        hf=HFSource(path="cornell-movie-review-data/rotten_tomatoes", label_names=_SENTIMENT),
    )
)

register_task(
    TaskSpec(
        name="cr",
        labels=_SENTIMENT,
        verbalizers=dict(_SENTIMENT_WORDS),
        template=_REVIEW,
        hf=HFSource(path="SetFit/CR", label_column="label_text"),
    )
)

_DBPEDIA = {
    "Company": "Company",
    "EducationalInstitution": "School",
    "Artist": "Artist",
    "Athlete": "Athlete",
    "OfficeHolder": "Politician",
    "MeanOfTransportation": "Transportation",
    "Building": "Building",
    "NaturalPlace": "Nature",
    "Village": "Village",
    "Animal": "Animal",
    "Plant": "Plant",
    "Album": "Album",
    "Film": "Film",
    "WrittenWork": "Book",
}

register_task(
    TaskSpec(
        name="dbpedia",
        labels=tuple(_DBPEDIA),
        verbalizers=dict(_DBPEDIA),
        template="Article: {text}\nCategory: {label}",
        hf=HFSource(path="fancyzhx/dbpedia_14", text_columns=("content",), label_names=tuple(_DBPEDIA)),
    )
)
