"""Fast tests (no model) for task specs, data loading and seeded splits."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from rl_select.data import (
    Splits,
    balanced_counts,
    label_counts,
    load_examples,
    load_folder,
    load_hf,
    load_task,
    make_splits,
)
from rl_select.errors import MAX_MESSAGE, DataError, TaskError
from rl_select.tasks import BUILTIN_TASKS, HFSource, TaskSpec, get_task, load_task_spec
from rl_select.types import Example

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LOCAL_TASKS = ("sst2", "agnews", "trec", "subj", "rte", "cb")
needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no offline data at {SHARED_DATA}")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _sst2_rows(n: int = 6) -> list[dict]:
    return [{"text": f"review number {i}", "label": ("negative", "positive")[i % 2]} for i in range(n)]


def _synthetic(n: int, labels: tuple[str, ...], prefix: str = "t") -> list[Example]:
    return [Example(text=f"{prefix}{i}", label=labels[i % len(labels)], uid=f"x:{i}") for i in range(n)]


# --- task specs ------------------------------------------------------------------------------------


def test_builtin_tasks_present_and_round_trip() -> None:
    expected = {"sst2", "agnews", "trec", "subj", "rte", "cb", "amazon", "mr", "cr", "dbpedia"}
    assert expected <= set(BUILTIN_TASKS)
    for name, spec in BUILTIN_TASKS.items():
        assert spec.name == name
        assert spec.hf is not None and len(spec.hf.text_columns) == len(spec.input_fields)
        again = TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec
        assert again.digest_fields() == spec.digest_fields()


def test_builtin_verbalisers() -> None:
    assert get_task("agnews").verbalizers["Sci/Tech"] == "Technology"
    assert get_task("trec").verbalizers["human"] == "Person"
    assert get_task("rte").verbalizers == {"entailment": "yes", "not_entailment": "no"}
    assert get_task("cb").verbalizers["neutral"] == "maybe"
    assert get_task("rte").is_pair and not get_task("sst2").is_pair


@needs_shared
def test_builtin_labels_match_shared_tasks_json() -> None:
    """Every shared task resolves, built in or through the task.toml its folder carries (the extra training tasks),
    to the labels and pair-ness tasks.json lists."""
    summary = json.loads((SHARED_DATA / "tasks.json").read_text())
    assert {"sst2", "agnews", "trec", "subj"} <= {entry["task"] for entry in summary}
    for entry in summary:
        spec_file = SHARED_DATA / entry["task"] / "task.toml"
        spec = load_task_spec(spec_file) if spec_file.is_file() else get_task(entry["task"])
        assert set(spec.labels) == set(entry["labels"])
        assert spec.is_pair == entry["pair"]


def test_get_task_unknown_names_known() -> None:
    with pytest.raises(TaskError, match="'nope'.*sst2"):
        get_task("nope")


def test_spec_validation() -> None:
    with pytest.raises(TaskError, match="at least two"):
        TaskSpec(name="x", labels=("a",), verbalizers={"a": "a"}, template="{text} {label}")
    with pytest.raises(TaskError, match="end with"):
        TaskSpec(name="x", labels=("a", "b"), verbalizers={"a": "a", "b": "b"}, template="{label} {text}")
    with pytest.raises(TaskError, match="hf.label_names"):
        TaskSpec(
            name="x", labels=("a", "b"), verbalizers={"a": "a", "b": "b"}, template="{text} {label}",
            hf=HFSource(path="p", label_names=("a", "c")),
        )
    with pytest.raises(TaskError, match="bogus"):
        TaskSpec.from_dict({**get_task("sst2").to_dict(), "hf": {"path": "p", "bogus": 1}})


def test_load_task_spec_json_and_toml(tmp_path: Path) -> None:
    spec = get_task("cb")
    js = tmp_path / "cb.json"
    js.write_text(json.dumps(spec.to_dict()))
    assert load_task_spec(js) == spec
    toml = tmp_path / "spam.toml"
    toml.write_text(
        'name = "spam"\nlabels = ["ham", "spam"]\ntemplate = "Message: {text}\\nType: {label}"\n'
        '[verbalizers]\nham = "normal"\nspam = "spam"\n'
    )
    got = load_task_spec(toml)
    assert got.labels == ("ham", "spam") and got.template.endswith("Type: {label}")


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ('name = "x"\nlabels = ["a", "b"]\n', ["missing fields verbalizers, template",
                                                "required: name, labels, verbalizers, template"]),
        ('name = "x"\nlabels = ["a", "b"]\ntemplate = "{text} {label}"\nlabelz = 1\n[verbalizers]\na = "a"\nb = "b"\n',
         ["unknown field 'labelz'", "expected some of labels, name, verbalizers, template, input_fields"]),
        ('name = "x"\nlabels = ["a", "b"]\ntemplate = "{text} {label}"\n[verbalizers]\na = "a"\nb = "b"\n'
         '[hf]\npath = "p"\ntext_column = ["t"]\n', ["[hf]: unknown field 'text_column'", "text_columns"]),
    ],
)
def test_task_spec_fields_are_named_against_the_valid_ones(tmp_path: Path, content: str, needles: list[str]) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(content)
    with pytest.raises(TaskError) as info:
        load_task_spec(path)
    msg = str(info.value)
    assert "\n" not in msg and "__init__" not in msg and len(msg.replace(str(tmp_path), "")) < MAX_MESSAGE, msg
    for needle in [str(path), *needles]:
        assert needle in msg, msg


def test_a_task_spec_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_bytes(b'{"name": "x",\n "labels": ["caf\xe9", "b"]}')
    with pytest.raises(TaskError, match=r"spec.json' is not UTF-8 text at line 2, column 17 \(byte 0xe9\)"):
        load_task_spec(path)


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("bad.toml", "name = [", "bad.toml"),
        ("bad.json", "{", "bad.json"),
        ("bad.yaml", "a: 1", ".yaml"),
        ("miss.json", json.dumps({"name": "x"}), "miss.json"),
    ],
)
def test_load_task_spec_bad_files(tmp_path: Path, name: str, content: str, needle: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TaskError, match=needle) as info:
        load_task_spec(path)
    assert "\n" not in str(info.value)
    with pytest.raises(TaskError, match="not found"):
        load_task_spec(tmp_path / "absent.toml")


# --- loading ---------------------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("task", LOCAL_TASKS)
def test_load_shared_tasks(task: str) -> None:
    spec = get_task(task)
    summary = {e["task"]: e for e in json.loads((SHARED_DATA / "tasks.json").read_text())}[task]
    train, test = load_task(spec, shared_root=SHARED_DATA)
    assert len(train) == summary["train_rows"] and len(test) == summary["test_rows"]
    assert label_counts(train) == dict(sorted(summary["train_label_counts"].items()))
    assert train[0].uid == "train.jsonl:1" and test[-1].uid.startswith("test.jsonl:")
    assert all((ex.text2 is not None) == spec.is_pair for ex in train[:50])


@needs_shared
def test_load_task_data_argument_overrides(tmp_path: Path) -> None:
    spec = get_task("sst2")
    _write_jsonl(tmp_path / "train.jsonl", _sst2_rows(8))
    _write_jsonl(tmp_path / "test.jsonl", _sst2_rows(3))
    train, test = load_task(spec, data=tmp_path, shared_root=SHARED_DATA)
    assert (len(train), len(test)) == (8, 3)
    train, test = load_task(spec, data=(tmp_path / "test.jsonl", tmp_path / "train.jsonl"))
    assert (len(train), len(test)) == (3, 8)
    with pytest.raises(DataError, match="single file"):
        load_task(spec, data=tmp_path / "train.jsonl")


def test_jsonl_fields_uids_and_int_labels(tmp_path: Path) -> None:
    rows = [{"text": "p", "text2": "h", "label": 2}, {"text": "q", "text2": "g", "label": "entailment"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    got = load_examples(path, spec=get_task("cb"))
    assert got == [Example("p", "neutral", "h"), Example("q", "entailment", "g")]
    assert [e.uid for e in got] == ["pairs.jsonl:1", "pairs.jsonl:3"]


def test_csv_and_parquet(tmp_path: Path) -> None:
    spec = get_task("agnews")
    frame = pd.DataFrame({"text": ["a, quoted \"b\"", "c", "d"], "label": ["World", "Sci/Tech", "Sports"]})
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.assign(label=[0, 3, 1]).to_parquet(tmp_path / "test.parquet")
    train, test = load_folder(tmp_path, spec=spec)
    assert [e.label for e in train] == ["World", "Sci/Tech", "Sports"] == [e.label for e in test]
    assert train[0].text == 'a, quoted "b"' and train[1].uid == "train.csv:2"
    # integer ids in a CSV map through hf.label_names too
    frame.assign(label=[0, 3, 1]).to_csv(tmp_path / "ids.csv", index=False)
    assert [e.label for e in load_examples(tmp_path / "ids.csv", spec=spec)] == ["World", "Sci/Tech", "Sports"]


# --- bad input -------------------------------------------------------------------------------------


def _raises_one_line(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file_and_folder(tmp_path: Path) -> None:
    spec = get_task("sst2")
    _raises_one_line("nothere.jsonl", load_examples, tmp_path / "nothere.jsonl", spec=spec)
    _raises_one_line("no train.jsonl", load_folder, tmp_path, spec=spec)
    _raises_one_line("absent", load_folder, tmp_path / "absent", spec=spec)
    (tmp_path / "x.txt").write_text("hi")
    _raises_one_line("'.txt'", load_examples, tmp_path / "x.txt", spec=spec)


def test_malformed_jsonl_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(_sst2_rows(1)[0]) + "\n" + '{"text": "x", "label": \n')
    msg = _raises_one_line("line 2", load_examples, path, spec=get_task("sst2"))
    assert "train.jsonl" in msg and "not valid JSON" in msg
    path.write_text('["a list"]\n')
    _raises_one_line("line 1.*expected an object", load_examples, path, spec=get_task("sst2"))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path, suffix: str) -> None:
    """Past the reader's first chunk, so a byte offset within a chunk would point elsewhere."""
    good = [{"text": f"fine film number {i}", "label": "positive"} for i in range(400)]
    if suffix == ".jsonl":
        body = b"".join(json.dumps(r).encode() + b"\n" for r in good) + b'{"text": "caf\xe9", "label": "negative"}\n'
        column = 14
    else:
        body = b"text,label\n" + b"".join(f"{r['text']},positive\n".encode() for r in good) + b"caf\xe9,negative\n"
        column = 4
    path = tmp_path / f"train{suffix}"
    path.write_bytes(body)
    msg = _raises_one_line("not UTF-8", load_examples, path, spec=get_task("sst2"))
    assert f"line {401 + (suffix == '.csv')}, column {column} (byte 0xe9)" in msg, msg
    assert "position" not in msg and str(path) in msg and len(msg.replace(str(tmp_path), "")) < MAX_MESSAGE


def test_missing_column(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "train.jsonl", [{"sentence": "x", "label": "positive"}])
    msg = _raises_one_line("'text'", load_examples, path, spec=get_task("sst2"))
    assert "sentence" in msg and "line 1" in msg
    pd.DataFrame({"sentence": ["x"], "label": ["positive"]}).to_csv(tmp_path / "t.csv", index=False)
    msg = _raises_one_line("no column 'text'", load_examples, tmp_path / "t.csv", spec=get_task("sst2"))
    assert "['sentence', 'label']" in msg
    pd.DataFrame({"text": ["x"], "label": ["positive"]}).to_parquet(tmp_path / "t.parquet")
    _raises_one_line("no column 'text2'", load_examples, tmp_path / "t.parquet", spec=get_task("rte"))


def test_unknown_label(tmp_path: Path) -> None:
    rows = [*_sst2_rows(2), {"text": "meh", "label": "neutral"}]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    msg = _raises_one_line("'neutral'", load_examples, path, spec=get_task("sst2"))
    assert "line 3" in msg and "['negative', 'positive']" in msg
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    msg = _raises_one_line("'neutral'", load_examples, tmp_path / "train.csv", spec=get_task("sst2"))
    assert "row 3" in msg
    _write_jsonl(path, [{"text": "x", "label": 7}])
    _raises_one_line("label id 7", load_examples, path, spec=get_task("sst2"))


def test_empty_value_and_wrong_type(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "train.jsonl", [{"text": "", "label": "positive"}])
    _raises_one_line("line 1.*'text' is empty", load_examples, path, spec=get_task("sst2"))
    _write_jsonl(path, [{"text": 5, "label": "positive"}])
    _raises_one_line("'text' holds 5", load_examples, path, spec=get_task("sst2"))


def test_empty_files(tmp_path: Path) -> None:
    spec = get_task("sst2")
    (tmp_path / "e.jsonl").write_text("\n\n")
    _raises_one_line("e.jsonl.*empty", load_examples, tmp_path / "e.jsonl", spec=spec)
    (tmp_path / "e.csv").write_text("")
    _raises_one_line("e.csv.*empty", load_examples, tmp_path / "e.csv", spec=spec)
    (tmp_path / "h.csv").write_text("text,label\n")
    _raises_one_line("h.csv.*empty", load_examples, tmp_path / "h.csv", spec=spec)


def test_split_size_errors() -> None:
    train, test = _synthetic(10, ("a", "b")), _synthetic(4, ("a", "b"), "q")
    _raises_one_line("8 \\+ 5 = 13 exceeds the 10", make_splits, train, test, n_pool=8, n_val=5, seed=0)
    msg = _raises_one_line("n_test=9", make_splits, train, test, n_pool=2, n_val=2, n_test=9, seed=0)
    assert "expected 1..4, or 0 for the whole test split" in msg and "None" not in msg, msg  # as --n-test's help
    assert make_splits(train, test, n_pool=2, n_val=2, n_test=0, seed=0).test == tuple(test)
    _raises_one_line("train split is empty", make_splits, [], test, n_pool=1, n_val=0, seed=0)
    _raises_one_line("test split is empty", make_splits, train, [], n_pool=1, n_val=0, seed=0)
    _raises_one_line("n_pool=0", make_splits, train, test, n_pool=0, n_val=1, seed=0)


# --- hub -------------------------------------------------------------------------------------------


def test_hub_offline_gives_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # The libraries read these variables at import time; set their constants too so it cannot hang.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    msg = _raises_one_line("stanfordnlp/sst2", load_hf, get_task("sst2"), cache_dir=tmp_path)
    assert "--data DIR" in msg and "network" in msg


def test_hub_loader_maps_columns_and_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
         "label": datasets.ClassLabel(names=["entailment", "not_entailment"])}
    )

    def fake_load(path: str, name: str | None = None, **kwargs) -> object:
        assert (path, name) == ("nyu-mll/glue", "rte")
        split = {"sentence1": ["p1", "p2"], "sentence2": ["h1", "h2"], "label": [1, 0]}
        return datasets.DatasetDict(
            {s: datasets.Dataset.from_dict(split, features=features) for s in ("train", "validation")}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    train, test = load_hf(get_task("rte"))
    assert train == [Example("p1", "not_entailment", "h1"), Example("p2", "entailment", "h2")]
    assert test[0].uid == "nyu-mll/glue/validation:0"
    assert len(load_hf(get_task("rte"), max_rows=1)[0]) == 1
    # a ClassLabel supplies names when the spec has none (case-insensitive match)
    spec = TaskSpec.from_dict(
        {**get_task("rte").to_dict(), "hf": {**get_task("rte").to_dict()["hf"], "label_names": None}}
    )
    assert [e.label for e in load_hf(spec)[0]] == ["not_entailment", "entailment"]


def test_hub_loader_missing_split(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(
        datasets, "load_dataset",
        lambda *a, **k: datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": ["a"]})}),
    )
    _raises_one_line("no split 'validation'.*\\['train'\\]", load_hf, get_task("sst2"))


# --- splits ----------------------------------------------------------------------------------------


def _uids(split: tuple[Example, ...]) -> list[str]:
    return [e.uid for e in split]


def test_splits_deterministic_and_seed_dependent() -> None:
    train, test = _synthetic(200, ("a", "b", "c")), _synthetic(50, ("a", "b", "c"), "q")
    one = make_splits(train, test, n_pool=20, n_val=30, n_test=10, seed=3)
    # same seed, shuffled input order -> the same splits (stable ordering)
    two = make_splits(list(reversed(train)), test[::-1], n_pool=20, n_val=30, n_test=10, seed=3)
    assert isinstance(one, Splits) and one == two
    other = make_splits(train, test, n_pool=20, n_val=30, n_test=10, seed=4)
    assert _uids(one.pool) != _uids(other.pool) and _uids(one.val) != _uids(other.val)
    assert one.sizes() == {"pool": 20, "val": 30, "rest": 150, "test": 10}
    # val does not depend on n_pool; the whole test split is kept in order when n_test is None
    bigger = make_splits(train, test, n_pool=40, n_val=30, seed=3)
    assert bigger.val == one.val and bigger.pool[:20] == one.pool
    assert list(bigger.test) == test


@pytest.mark.parametrize("stratify", [False, True])
def test_splits_disjoint_and_cover(stratify: bool) -> None:
    train, test = _synthetic(97, ("a", "b", "c", "d")), _synthetic(5, ("a",), "q")
    s = make_splits(train, test, n_pool=13, n_val=21, seed=0, stratify=stratify)
    pool, val, rest = set(_uids(s.pool)), set(_uids(s.val)), set(_uids(s.rest))
    assert len(pool) == 13 and len(val) == 21 and len(rest) == 97 - 34
    assert not pool & val and not pool & rest and not val & rest
    assert pool | val | rest == {e.uid for e in train}


def test_stratified_balances_rare_class() -> None:
    labels = ("abbreviation", "description", "entity", "human", "location", "number")
    rows = [Example(f"q{i}", "abbreviation", uid=f"r{i}") for i in range(5)]
    rows += [Example(f"q{i}", labels[1 + i % 5], uid=f"r{i}") for i in range(5, 505)]
    s = make_splits(rows, rows[:3], n_pool=30, n_val=12, seed=1, stratify=True)
    assert label_counts(s.val) == dict.fromkeys(labels, 2)
    pool = label_counts(s.pool)
    assert pool["abbreviation"] == 3  # all that is left after val took 2
    assert sorted(pool.values()) == [3, 5, 5, 5, 6, 6]
    plain = make_splits(rows, rows[:3], n_pool=30, n_val=12, seed=1)
    assert label_counts(plain.pool).get("abbreviation", 0) < 3


@needs_shared
def test_stratified_trec_real_data() -> None:
    train, test = load_folder(SHARED_DATA / "trec", spec=get_task("trec"))
    s = make_splits(train, test, n_pool=96, n_val=60, seed=0, stratify=True)
    assert set(label_counts(s.pool).values()) == {16}
    assert set(label_counts(s.val).values()) == {10}


def test_balanced_counts_water_filling() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    got = balanced_counts({"a": 1, "b": 10, "c": 10, "d": 0}, 12, rng)
    assert got["a"] == 1 and got["d"] == 0 and sorted([got["b"], got["c"]]) == [5, 6]
    assert balanced_counts({"a": 3, "b": 3}, 6, rng) == {"a": 3, "b": 3}
    with pytest.raises(DataError, match="cannot draw 7"):
        balanced_counts({"a": 3, "b": 3}, 7, rng)


def test_a_shared_task_folder_with_a_task_toml_resolves_by_name(tmp_path, monkeypatch):
    from rl_select.tasks import resolve_task

    folder = tmp_path / "spam"
    folder.mkdir()
    (folder / "task.toml").write_text('name = "spam"\nlabels = ["ham", "spam"]\n'
                                      'template = "Message: {text}\\nType: {label}"\n'
                                      '[verbalizers]\nham = "normal"\nspam = "spam"\n')
    monkeypatch.setenv("RL_SELECT_DATA", str(tmp_path))
    assert resolve_task("spam").labels == ("ham", "spam")
    with pytest.raises(Exception, match="unknown task 'eggs'"):
        resolve_task("eggs")
