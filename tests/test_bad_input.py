"""Bad input, every command: exit status 2, one short line, no traceback, and the files already on disk untouched.

Issue 24 item 5. Every case is a row of :data:`CASES` (command line, the regex its one line must match). Each runs
in process (typer's CliRunner) in a fresh folder holding a copy of :func:`originals`: a score cache, a rollout
store with its header, a per-query run's store, a fixed-prompt and a per-query policy, prompt files, and the bad
inputs the cases name. After the case every one of those files is byte-identical, and nothing new was written.
No case reaches a model: every loader (the scorer, the HF model, the MiniLM embedder) is replaced by one that fails
the test, so each refusal is proven to come before the model loads. Real task data: the shared sst2 folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rl_select.cli import app
from rl_select.data import default_data_root
from rl_select.errors import MAX_MESSAGE

ROOT = default_data_root()
ROOT = ROOT.resolve() if ROOT is not None else None
pytestmark = pytest.mark.skipif(ROOT is None, reason="needs the shared task data (../shared/data)")

runner = CliRunner()

ROWS = [{"text": f"{word} film number {i}", "label": label}
        for i in range(12) for word, label in (("good", "positive"), ("bad", "negative"))]


class ModelLoadReached(BaseException):
    """A case reached a model load (a BaseException, so no ``except Exception`` turns it into a message)."""


# --- the files on disk before every case ---------------------------------------------------------------------


def _jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _folder(path: Path, train: list | bytes, test: list | bytes | None = ROWS[:6]) -> None:
    path.mkdir(parents=True)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        if isinstance(rows, bytes):
            (path / name).write_bytes(rows)
        elif rows is not None:
            _jsonl(path / name, rows)


def _fixed_policy(path: Path) -> Path:
    from rl_select.experiments.config import RunConfig
    from rl_select.lm.spec import ScorerSpec
    from rl_select.mdp.features import FeatureSpec
    from rl_select.mdp.policy import SelectorPolicy
    from rl_select.mdp.qnet import CandidateQNet
    from rl_select.tasks import get_task

    torch.manual_seed(0)
    fs = FeatureSpec("active")
    trained = RunConfig().updated(task="sst2", data=str(ROOT / "sst2"), n_pool=8, n_val=4, n_test=4,
                                  seeds=[0]).to_dict()
    return SelectorPolicy(CandidateQNet(fs.state_dim, fs.cand_dim, (8,)), feature_spec=fs, k=2, task=get_task("sst2"),
                          scorer_spec=ScorerSpec(model="bundled", dtype="fp32", calibrate=True),
                          scorer_fingerprint="cached-toy:v1",
                          training={"agent": "dqn", "config": trained}).save(path)


def _edited_policy(src: Path, dst: Path) -> None:
    """``src`` with ``k`` changed in its metadata document, rewritten by safetensors itself (a valid file; the
    recorded hashes kept, as a hand edit would)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from rl_select.mdp.artifacts import METADATA_KEY

    with safe_open(str(src), framework="pt") as f:
        doc = json.loads(f.metadata()[METADATA_KEY])
    doc["k"] = 3
    save_file(load_file(str(src)), str(dst), metadata={METADATA_KEY: json.dumps(doc)})


def _per_query_policy(path: Path) -> Path:
    from rl_select.lm.spec import ScorerSpec
    from rl_select.mdp.per_query import FeatureView
    from rl_select.mdp.per_query_policy import PerQueryPolicy
    from rl_select.mdp.qnet import CandidateQNet

    torch.manual_seed(0)
    return PerQueryPolicy(CandidateQNet(*FeatureView.of("full").dims, (8,)), feature_set="full", m=8, k=2,
                          reward="margin", scorer_spec=ScorerSpec(model="bundled", calibrate=True),
                          training={"tasks": ["trec"]}).save(path)


def _resealed_prompt(src: Path, dst: Path, edit) -> None:
    from rl_select.types import document_sha256

    doc = json.loads(src.read_text())
    edit(doc)
    doc["sha256"] = document_sha256(doc)
    dst.write_text(json.dumps(doc))


def _toy_factory(cfg):
    from rl_select.testing import toy_scorer_factory

    return toy_scorer_factory(cfg)


@pytest.fixture(scope="session")
def originals(tmp_path_factory) -> Path:
    """The folder every case starts from (copied into its own working folder)."""
    from agents.per_query import PerQueryStore
    from rl_select.experiments import harness
    from rl_select.lm.cache import ScoreCache

    base = tmp_path_factory.mktemp("originals")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("RL_SELECT_DATA", str(ROOT))
        mp.setattr(harness, "scorer_factory", _toy_factory)
        mp.setattr(harness, "build_scorer", lambda cfg, spec: pytest.fail("model load while building originals"))
        # a rollout store with its header, and the score cache it filled (the toy scorer: no model)
        res = runner.invoke(app, ["collect", "--task", "sst2", "--n-val", "4", "--n-candidates", "4", "--k", "2",
                                  "--train-pool", "40", "--episodes", "2", "--store", "store.jsonl",
                                  "--cache", "cache.sqlite"])
        assert res.exit_code == 0, (res.output, res.exception)
        # a prompt file of real sst2 rows (random: no LM)
        res = runner.invoke(app, ["select", "--task", "sst2", "--selector", "random", "--no-validate", "--n-pool",
                                  "8", "--k", "2", "--cache", "none", "--out-file", "prompt.json"])
        assert res.exit_code == 0, (res.output, res.exception)
    cache = ScoreCache(base / "cache.sqlite")
    assert len(cache) > 0
    cache.close()
    for leftover in base.glob("cache.sqlite-*"):  # WAL files closed into the database
        leftover.unlink()
    shutil.rmtree(base / "runs", ignore_errors=True)

    # artifacts
    _fixed_policy(base / "policy.safetensors")
    _edited_policy(base / "policy.safetensors", base / "edited.safetensors")
    pq = _per_query_policy(base / "pq.safetensors")
    raw = bytearray(pq.read_bytes())
    at = raw.find(b'\\"k\\": 2,')  # the document is JSON inside the header's JSON
    assert at > 0
    raw[at + 7] = ord("3")
    (base / "pq-edited.safetensors").write_bytes(bytes(raw))
    prompt = base / "prompt.json"
    doc = json.loads(prompt.read_text())
    doc["selector"]["name"] = "greedy"
    (base / "prompt-edited.json").write_text(json.dumps(doc, indent=2))  # valid, but the hash no longer matches
    _resealed_prompt(prompt, base / "prompt-uid.json", lambda d: d["demos"][0].update(uid="train.jsonl:99999"))
    _resealed_prompt(prompt, base / "prompt-other-row.json",
                     lambda d: d["demos"][0].update(uid=d["demos"][1]["uid"]))
    (base / "not-json.json").write_text("{not json")
    (base / "not-sqlite.sqlite").write_bytes(b"this is not a database, just text\n" * 4)
    (base / "folder.sqlite").mkdir()
    (base / "folder.json").mkdir()
    (base / "binary.json").write_bytes(bytes(range(256)) * 4)  # no text at all

    # a per-query run folder with a store (and its header)
    store = PerQueryStore(base / "pq-run" / "stores" / "sst2.jsonl")
    store.check_meta({"task": "sst2", "n_pool": 24})
    _jsonl(store.path, [{"query": "train.jsonl:1", "order": [0, 1], "logprobs": [-0.1, -2.3], "policy": "random"}])

    # data folders
    _folder(base / "d-good", ROWS)
    _folder(base / "d-utf8", b'{"text": "caf\xe9 film", "label": "positive"}\n')
    _folder(base / "d-empty", b"")
    _folder(base / "d-empty-test", ROWS, b"")
    _folder(base / "d-notest", ROWS, None)
    _folder(base / "d-column", [*ROWS[:3], {"sentence": "no text column", "label": "positive"}])
    _folder(base / "d-label", ROWS, [*ROWS[:2], {"text": "meh", "label": "neutral"}])
    _folder(base / "d-json", [json.dumps(r) for r in ROWS[:3]] + ['{"text": "oops", "label": '])
    _folder(base / "d-blank-text", [*ROWS[:3], {"text": "", "label": "positive"}])
    _folder(base / "d-list", [*ROWS[:2], '["a list", "not an object"]'])
    _folder(base / "d-binary", bytes(range(256)) * 4)

    # task specs
    spec = {"name": "spam", "labels": ["ham", "spam"], "template": "Message: {text}\nType: {label}",
            "verbalizers": {"ham": "normal", "spam": "spam"}}
    (base / "task-nofield.json").write_text(json.dumps({k: v for k, v in spec.items() if k != "template"}))
    (base / "task-unknown.json").write_text(json.dumps({**spec, "colour": "blue"}))
    (base / "task-syntax.toml").write_text('name = "spam"\nlabels = ["ham", "spam"\n')
    (base / "task-onelabel.json").write_text(json.dumps({**spec, "labels": ["ham"], "verbalizers": {"ham": "x"}}))
    (base / "task-notemplate.json").write_text(json.dumps({**spec, "template": "Message: {text}"}))
    (base / "task-list.json").write_text(json.dumps([spec]))
    (base / "task-utf8.json").write_bytes(json.dumps(spec).encode().replace(b"normal", b"norm\xe9l"))
    (base / "task-utf16.json").write_bytes(json.dumps(spec).encode("utf-16"))  # text, though not UTF-8
    (base / "task.yaml").write_text("name: spam\n")

    # run configs (TOML)
    (base / "c-syntax.toml").write_text('task = "sst2"\nk = \n')
    (base / "c-unknown.toml").write_text('[run]\ntask = "sst2"\nbogus_knob = 3\n')
    (base / "c-type.toml").write_text('k = "four"\n')
    (base / "c-seeds.toml").write_text("seeds = 3\n")
    (base / "c-section.toml").write_text("[splits]\nn_pol = 4\n")
    (base / "c-mode.toml").write_text('mode = "sideways"\n')
    (base / "c-utf8.toml").write_bytes(b'task = "sst\xe92"\n')
    (base / "c-json.json").write_text('{"task": "sst2"}')
    (base / "c-task-int.toml").write_text("task = 3\n")
    (base / "c-cache-int.toml").write_text("cache = 5\n")
    (base / "c-selectors-str.toml").write_text('[selectors]\nnames = "random"\n')
    (base / "c-policy-int.toml").write_text("policy = 3\n")
    (base / "c-calibrate-str.toml").write_text('[lm]\ncalibrate = "yes"\n')
    (base / "c-args.toml").write_text('[selectors]\nnames = ["random_search"]\n'
                                      '[selectors.args.random_search]\nn_prompts = "x"\n')
    (base / "c-data-int.toml").write_text("data = 7\n")
    (base / "c-hidden-str.toml").write_text('[agent]\nhidden = "64"\n')

    # per-query run configs (JSON)
    (base / "pq-syntax.json").write_text('{"k": 4,')
    (base / "pq-unknown.json").write_text('{"colour": "blue"}')
    (base / "pq-type.json").write_text('{"k": "four"}')
    (base / "pq-list.json").write_text("[1, 2]")
    (base / "pq-negative.json").write_text('{"n_pool": -5}')
    (base / "pq-tasks.json").write_text('{"train_tasks": ["sst2", "nosuch"]}')
    (base / "pq-k-above-m.json").write_text('{"k": 9, "m": 4}')
    (base / "pq-feature-set.json").write_text('{"feature_set": "shiny"}')
    (base / "pq-seeds.json").write_text('{"seeds": "0,1"}')
    (base / "pq-modes.json").write_text('{"modes": ["greedy", "beam"]}')
    (base / "pq-utf8.json").write_bytes(b'{"cache": "caf\xe9"}')

    # ablation grids
    grid = """selectors = ["zero_shot", "random"]
seeds = [0]

[base]
task = "sst2"
cache = "none"
out = "runs"

[base.splits]
n_pool = 5
n_val = 4
n_test = 8

[grid]
"""
    (base / "g-ok.toml").write_text(grid + "k = [1, 2]\n")
    (base / "g-key.toml").write_text(grid + "colour = [1, 2]\n")
    (base / "g-value.toml").write_text(grid + 'feature_set = ["active", "shiny"]\n')
    (base / "g-scalar.toml").write_text(grid + "k = 2\n")
    (base / "g-selector.toml").write_text(grid.replace('"random"]', '"oracle"]') + "k = [1]\n")
    (base / "g-syntax.toml").write_text(grid + "k = [1, 2\n")
    (base / "g-top.toml").write_text("[base]\n[grids]\nk = [1]\n")
    (base / "g-k.toml").write_text(grid + "k = [0]\n")

    # query, pool and demo files
    _jsonl(base / "q-field.jsonl", [{"text": "fine"}, {"sentence": "no text field"}])
    _jsonl(base / "q-json.jsonl", [{"text": "fine"}, '{"text": "oops"'])
    _jsonl(base / "pool-label.jsonl", [*ROWS[:4], {"text": "meh", "label": "neutral"}])
    _jsonl(base / "demos-label.jsonl", [{"text": "meh", "label": "neutral"}])
    (base / "empty.jsonl").write_text("")

    # run folders for report / results
    (base / "r-none").mkdir()
    (base / "r-json").mkdir()
    (base / "r-json" / "results.json").write_text("{not json")
    (base / "r-shape").mkdir()
    (base / "r-shape" / "results.json").write_text('{"rows": []}')
    (base / "r-ablate").mkdir()  # an ablate run folder, given to `report`
    (base / "r-ablate" / "ablate.toml").write_text("[base]\n[grid]\n")
    (base / "r-ablate" / "results.csv").write_text("cell_id,seed,selector\n")
    (base / "r-failed").mkdir()
    (base / "r-failed" / "status.json").write_text(json.dumps({
        "state": "failed", "time": "2024-01-01T00:00:00", "error": "cannot load model 'bundled'"}))
    return base


# --- the cases -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    argv: str
    pattern: str
    usage: bool = False  # a typer usage error (the usage box), not one line
    stdin: str | None = None


def C(id: str, argv: str, pattern: str, **kw) -> Case:
    return Case(id, argv, pattern, **kw)


SPLITS = "--n-pool 8 --n-val 4 --n-test 4 --seeds 0"
B = f"baselines --task sst2 {SPLITS} --cache none"
E = f"evaluate --task sst2 {SPLITS} --cache none"
MDP = "--task sst2 --n-val 4 --n-candidates 4 --k 2 --cache none"
SEL = "select --task sst2 --n-pool 8 --n-val 4 --k 2 --cache none"

CASES: list[Case] = [
    # --- tasks
    C("tasks-extra-argument", "tasks sst2", r"unexpected extra argument", usage=True),
    C("tasks-unknown-option", "tasks --verbose", r"No such option", usage=True),
    # --- baselines: the task
    C("baselines-unknown-task", "baselines --task no_such_task", r"unknown task 'no_such_task'; expected one of"),
    C("baselines-task-file-missing", "baselines --task missing.toml",
      r"task spec file 'missing.toml' not found; expected a \.json or \.toml file"),
    C("baselines-task-missing-field", "baselines --task task-nofield.json --data d-good",
      r"task-nofield\.json.*missing field.*template"),
    C("baselines-task-unknown-field", "baselines --task task-unknown.json --data d-good",
      r"unknown field 'colour'; expected some of"),
    C("baselines-task-syntax", "baselines --task task-syntax.toml --data d-good", r"cannot parse task spec file"),
    C("baselines-task-one-label", "baselines --task task-onelabel.json --data d-good", r"expected at least two"),
    C("baselines-task-no-label-slot", "baselines --task task-notemplate.json --data d-good",
      r"template 'Message: \{text\}' must end with '\{label\}'"),
    C("baselines-task-not-object", "baselines --task task-list.json --data d-good", r"holds list; expected an object"),
    C("baselines-task-not-utf8", "baselines --task task-utf8.json --data d-good", r"is not UTF-8 text at line 1"),
    C("baselines-task-utf16", "baselines --task task-utf16.json --data d-good",
      r"'task-utf16\.json' is not UTF-8 text at line 1, column 1 \(byte 0xff\); expected UTF-8"),
    C("baselines-task-suffix", "baselines --task task.yaml", r"has suffix '\.yaml'; expected \.json or \.toml"),
    # --- baselines: the data
    C("baselines-data-missing", f"{B} --data nowhere", r"data folder 'nowhere' not found"),
    C("baselines-data-not-utf8", f"{B} --data d-utf8", r"train\.jsonl.*not UTF-8 text at line 1, column \d+"),
    C("baselines-data-empty", f"{B} --data d-empty", r"'d-empty/train\.jsonl' is empty; expected at least one example"),
    C("baselines-data-empty-test", f"{B} --data d-empty-test", r"'d-empty-test/test\.jsonl' is empty"),
    C("baselines-data-no-test-file", f"{B} --data d-notest", r"data folder 'd-notest' has no test\.jsonl"),
    C("baselines-data-missing-column", f"{B} --data d-column", r"line 4.*'text'"),
    C("baselines-data-wrong-label", f"{B} --data d-label", r"'neutral'.*test\.jsonl|test\.jsonl.*'neutral'"),
    C("baselines-data-bad-json", f"{B} --data d-json", r"line 4.*JSON|JSON.*line 4"),
    C("baselines-data-empty-text", f"{B} --data d-blank-text",
      r"line 4 of d-blank-text/train\.jsonl: column 'text' is empty"),
    C("baselines-data-not-object", f"{B} --data d-list",
      r"line 3 of d-list/train\.jsonl holds a JSON list; expected an object"),
    # --- baselines: numbers
    C("baselines-k-zero", f"{B} --k 0", r"k=0 for selector 'random'; expected k >= 1"),
    C("baselines-k-negative", f"{B} --k -2", r"k=-2; expected an integer >= 0"),
    C("baselines-k-above-pool", f"{B} --k 50 --selectors random", r"k=50.*\b8\b"),
    C("baselines-k-not-a-number", f"{B} --k four", r"Invalid value for '-k' / '--k'.*valid integer", usage=True),
    C("baselines-n-test-too-large", f"{B} --n-test 999999", r"n_test=999999.*expected 1\.\.1000"),
    C("baselines-n-test-negative", f"{B} --n-test -1", r"splits\.n_test=-1; expected an integer >= 0"),
    C("baselines-seeds-not-integers", f"{B} --seeds a,b", r"--seeds 'a,b' is not a comma-separated list of ints"),
    C("baselines-seeds-float", f"{B} --seeds 0,1.5", r"--seeds '0,1\.5'"),
    C("baselines-n-pool-above-data", "baselines --task sst2 --data d-good --n-pool 100 --n-val 4 --cache none",
      r"n_pool \+ n_val = 100 \+ 4 = 104 exceeds the 24 train examples"),
    C("baselines-n-pool-zero", f"{B} --n-pool 0", r"n_pool=0, n_val=4; expected n_pool >= 1"),
    C("baselines-n-val-negative", f"{B} --n-val -3", r"splits\.n_val=-3; expected an integer >= 0"),
    # --- baselines: names
    C("baselines-unknown-selector", f"{B} --selectors random,psychic", r"'psychic'.*greedy"),
    C("baselines-unknown-mode", f"{B} --mode sideways",
      r"lm\.mode='sideways'; expected one of \['direct', 'channel'\]"),
    C("baselines-unknown-dtype", f"{B} --dtype fp8", r"lm\.dtype='fp8'; expected one of"),
    C("baselines-unknown-backend", f"{B} --backend grpc", r"lm\.backend='grpc'; expected one of \['hf', 'openai'\]"),
    C("baselines-openai-no-url", f"{B} --backend openai", r"--base-url"),
    C("baselines-unknown-executor", f"{B} --executor raay", r"executor\.kind='raay'.*\['local', 'ray'\]"),
    C("baselines-workers-zero", f"{B} --executor ray --workers 0", r"executor\.workers=0.*>= 1"),
    # --- baselines: the cache
    C("baselines-cache-is-a-folder", f"baselines --task sst2 {SPLITS} --cache folder.sqlite",
      r"score cache 'folder\.sqlite' is a folder; expected a file path"),
    C("baselines-cache-unwritable", f"baselines --task sst2 {SPLITS} --cache {{ro}}/scores.sqlite",
      r"the cache folder '.*' is not writable.*--cache none"),
    C("baselines-cache-not-sqlite", f"baselines --task sst2 {SPLITS} --cache not-sqlite.sqlite",
      r"not-sqlite\.sqlite.*not .*SQLite"),
    C("baselines-cache-under-a-file", f"baselines --task sst2 {SPLITS} --cache prompt.json/scores.sqlite",
      r"is a file, not a folder"),
    # --- baselines: config files
    C("baselines-config-missing", "baselines --config nope.toml", r"config file 'nope\.toml' does not exist"),
    C("baselines-config-syntax", "baselines --config c-syntax.toml", r"c-syntax\.toml' is not valid TOML"),
    C("baselines-config-unknown-key", "baselines --config c-unknown.toml",
      r"unknown key 'bogus_knob'; expected one of"),
    C("baselines-config-wrong-type", "baselines --config c-type.toml", r"k='four'; expected an integer"),
    C("baselines-config-seeds-not-list", "baselines --config c-seeds.toml",
      r"seeds=3; expected a non-empty list of integers"),
    C("baselines-config-section-key", "baselines --config c-section.toml",
      r"\[splits\] has unknown key 'n_pol'; expected some of n_pool"),
    C("baselines-config-bad-value", "baselines --config c-mode.toml", r"lm\.mode='sideways'"),
    C("baselines-config-not-utf8", "baselines --config c-utf8.toml", r"not UTF-8 text at line 1"),
    C("baselines-config-json", "baselines --config c-json.json", r"c-json\.json' is not valid TOML"),
    C("baselines-config-task-not-text", "baselines --config c-task-int.toml",
      r"task=3; expected a name or path as text"),
    C("baselines-config-cache-not-text", "baselines --config c-cache-int.toml", r"cache=5; expected a path as text"),
    C("baselines-config-data-not-text", "baselines --config c-data-int.toml", r"data=7; expected a path as text"),
    C("baselines-config-selectors-not-list", "baselines --config c-selectors-str.toml",
      r"selectors\.names='random'; expected a list of selector names"),
    C("baselines-config-policy-not-text", "baselines --config c-policy-int.toml",
      r"policy=3; expected a list of policy file paths"),
    C("baselines-config-calibrate-not-bool", "baselines --config c-calibrate-str.toml", r"calibrate.*'yes'"),
    C("baselines-config-selector-args", f"{B} --config c-args.toml", r"n_prompts='x'"),
    C("baselines-empty-selectors", f"{B} --selectors ,", r"selectors is empty"),
    C("baselines-empty-seeds", f"{B} --seeds ,", r"seeds=\[\]"),
    C("baselines-n-val-above-data", "baselines --task sst2 --data d-good --n-pool 8 --n-val 30 --cache none",
      r"8 \+ 30 = 38 exceeds the 24 train examples"),
    C("baselines-policy-other-task", f"{B} --policy policy.safetensors --task agnews",
      r"trained on task 'sst2' but task 'agnews' was asked"),
    # --- baselines: policies
    C("baselines-policy-missing", f"{B} --policy no/such/policy.safetensors", r"no/such/policy\.safetensors"),
    C("baselines-policy-edited", f"{B} --policy edited.safetensors", r"edited\.safetensors.*edited or corrupted"),
    C("baselines-per-query-policy-other-scorer", f"{B} --policy pq.safetensors --no-calibrate",
      r"per-query policy 'pq\.safetensors'.*calibrate: trained True vs asked False.*--force"),
    C("baselines-per-query-policy-other-k", f"{B} --policy pq.safetensors --k 3",
      r"k=3 but per-query policy 'pq\.safetensors' was trained for k=2"),
    C("baselines-policy-other-scorer", f"{B} --policy policy.safetensors --no-calibrate",
      r"calibrate: trained True vs asked False.*--force"),
    C("baselines-policy-not-safetensors", f"{B} --policy prompt.json",
      r"policy file 'prompt\.json' is a prompt file, not a \.safetensors file; expected one written by rl_select"),
    C("baselines-policy-binary", f"{B} --policy binary.json", r"'binary\.json' is not a readable safetensors file"),
    C("baselines-config-a-policy", "baselines --config policy.safetensors",
      r"config file 'policy\.safetensors' is a policy file \(\.safetensors\), not text; expected a TOML file"),
    C("baselines-data-binary", f"{B} --data d-binary",
      r"train\.jsonl' is binary content, not text; expected JSON lines"),
    C("baselines-task-binary", f"{B} --task binary.json --data d-good",
      r"task spec file 'binary\.json' is binary content, not text; expected a \.json or \.toml task spec"),
    # --- evaluate
    C("evaluate-nothing-to-evaluate", f"{E}", r"give exactly one of --selector NAME, --policy FILE"),
    C("evaluate-two-things", f"{E} --selector random --demos 1,2", r"give exactly one of --selector NAME"),
    C("evaluate-unknown-selector", f"{E} --selector psychic", r"\['psychic'\] are not selectors; expected some of"),
    C("evaluate-demo-rows-out-of-range", f"{E} --demos 1,999999", r"\[999999\].*1\.\.5000"),
    C("evaluate-demo-rows-not-numbers", f"{E} --demos a,b", r"--demos 'a,b' is neither a file nor"),
    C("evaluate-demo-rows-zero", f"{E} --demos 0", r"\[0\]"),
    C("evaluate-demos-file-missing", f"{E} --demos missing.jsonl", r"'missing\.jsonl' not found"),
    C("evaluate-demos-wrong-label", f"{E} --demos demos-label.jsonl",
      r"line 1 of demos-label\.jsonl: label 'neutral' is not a label of task 'sst2'"),
    C("evaluate-demos-on-ray", f"{E} --demos 1,2 --executor ray", r"--demos runs in process"),
    C("evaluate-prompt-file-missing", "evaluate --prompt-file nowhere.json", r"nowhere\.json.*not found"),
    C("evaluate-prompt-file-edited", "evaluate --prompt-file prompt-edited.json",
      r"prompt-edited\.json.*was edited or corrupted"),
    C("evaluate-prompt-file-uid-not-in-data", "evaluate --prompt-file prompt-uid.json --n-test 4",
      r"demos\[0\].*'train\.jsonl:99999'.*not a row of"),
    C("evaluate-prompt-file-other-row", "evaluate --prompt-file prompt-other-row.json --n-test 4",
      r"demos\[0\].*differs in text or label"),
    C("evaluate-prompt-file-wrong-task", "evaluate --prompt-file prompt.json --task agnews",
      r"task 'sst2'.*'agnews'"),
    C("evaluate-prompt-file-not-json", "evaluate --prompt-file not-json.json", r"not-json\.json.*is not JSON"),
    C("evaluate-prompt-file-a-policy", "evaluate --prompt-file policy.safetensors",
      r"prompt file 'policy\.safetensors' is a policy file \(\.safetensors\), not a prompt file; expected a \.json "
      r"file written by rl-select select"),
    C("evaluate-prompt-file-on-ray", "evaluate --prompt-file prompt.json --executor ray",
      r"--prompt-file runs in process"),
    C("evaluate-prompt-file-folder", "evaluate --prompt-file folder.json",
      r"prompt file 'folder\.json' is a folder; expected a \.json file"),
    C("evaluate-policy-edited", f"{E} --policy edited.safetensors", r"'edited\.safetensors' was edited or corrupted"),
    C("evaluate-per-query-policy-edited", f"{E} --policy pq-edited.safetensors",
      r"'pq-edited\.safetensors' was edited or corrupted"),
    C("evaluate-per-query-policy-pool-below-m", f"{E.replace('--n-pool 8', '--n-pool 4')} --policy pq.safetensors",
      r"M=8 neighbours per query but the pool has 4; expected --n-pool >= 8"),
    C("evaluate-k-zero", f"{E} --selector random --k 0", r"k=0 for selector 'random'; expected k >= 1"),
    C("evaluate-demos-k-mismatch", f"{E} --demos 1,2 --k 5", r"k=5 but --demos gives 2 demonstrations"),
    C("evaluate-demos-file-empty", f"{E} --demos empty.jsonl", r"empty\.jsonl.*empty"),
    C("evaluate-prompt-file-other-k", "evaluate --prompt-file prompt.json --k 5 --n-test 4",
      r"k=5 but prompt file 'prompt\.json' holds 2 demonstrations per prompt"),
    # --- collect
    C("collect-unknown-reward", f"collect {MDP} --reward sometimes", r"mdp\.reward='sometimes'; expected one of"),
    C("collect-unknown-feature-set", f"collect {MDP} --feature-set psychic",
      r"mdp\.feature_set='psychic'; expected one of"),
    C("collect-episodes-zero", f"collect {MDP} --episodes 0", r"agent\.episodes=0; expected an integer >= 1"),
    C("collect-episodes-negative", f"collect {MDP} --episodes -4", r"agent\.episodes=-4; expected an integer >= 1"),
    C("collect-candidates-above-pool", f"collect {MDP} --n-candidates 999 --train-pool 40",
      r"n_candidates=999.*expected n_candidates <= \d+"),
    C("collect-k-above-candidates", f"collect {MDP} --k 9", r"k=9; expected .*n_candidates=4"),
    C("collect-min-len-above-k", f"collect {MDP} --allow-stop --min-len 5",
      r"mdp\.min_len=5; expected 0 <= min_len <= k=2"),
    C("collect-n-val-zero", f"collect {MDP} --n-val 0", r"n_val=0"),
    C("collect-unknown-train-task", f"collect {MDP} --train-tasks sst2,nosuch",
      r"unknown task 'nosuch'; expected one of"),
    C("collect-store-other-settings", "collect --task sst2 --n-val 4 --n-candidates 4 --k 3 --train-pool 40 "
      "--episodes 3 --store store.jsonl --cache cache.sqlite", r"store\.jsonl' was collected with k=2; asked for k=3"),
    C("collect-store-is-a-folder", f"collect {MDP} --episodes 1 --store folder.json",
      r"rollout store 'folder\.json' is a folder"),
    C("collect-cache-unwritable", f"collect {MDP.replace('--cache none', '')} --cache {{ro}}/s.sqlite",
      r"the cache folder '.*' is not writable"),
    C("collect-config-unknown-key", "collect --config c-unknown.toml", r"unknown key 'bogus_knob'"),
    C("collect-k-zero", f"collect {MDP} --k 0", r"k=0"),
    C("collect-hidden-in-config-not-list", f"collect {MDP} --config c-hidden-str.toml", r"hidden"),
    # --- train
    C("train-unknown-agent", f"train {MDP} --agent sarsa", r"agent\.name='sarsa'; expected one of"),
    C("train-unknown-feature-set", f"train {MDP} --feature-set psychic",
      r"mdp\.feature_set='psychic'; expected one of"),
    C("train-hidden-not-integers", f"train {MDP} --hidden 64,x",
      r"--hidden '64,x' is not a comma-separated list of ints"),
    C("train-hidden-zero", f"train {MDP} --hidden 0", r"agent\.hidden=\[0\]; expected positive layer widths"),
    C("train-steps-zero", f"train {MDP} --train-steps 0", r"agent\.train_steps=0; expected an integer >= 1"),
    C("train-cql-alpha-negative", f"train {MDP} --cql-alpha -1", r"agent\.cql_alpha=-1\.0; expected a number >= 0"),
    C("train-unknown-q-target", f"train {MDP} --q-target gamma", r"agent\.q_target='gamma'; expected one of"),
    C("train-unknown-return-norm", f"train {MDP} --return-norm global",
      r"agent\.return_norm='global'; expected one of"),
    C("train-val-episodes-negative", f"train {MDP} --val-episodes -1",
      r"agent\.val_episodes=-1; expected an integer >= 0"),
    C("train-critic-episodes-zero", f"train {MDP} --critic-episodes 0",
      r"agent\.critic_episodes=0; expected an integer"),
    C("train-unknown-reward", f"train {MDP} --reward sometimes", r"mdp\.reward='sometimes'; expected one of"),
    C("train-unknown-task", "train --task no_such_task", r"unknown task 'no_such_task'"),
    C("train-offline-without-rollouts", f"train {MDP} --agent offline --train-pool 40 --store nothing.jsonl",
      r"'nothing\.jsonl' holds no episodes of task 'sst2'.*rl-select collect"),
    C("train-offline-store-other-settings", "train --task sst2 --n-val 4 --n-candidates 4 --k 3 --train-pool 40 "
      "--agent offline --store store.jsonl --cache cache.sqlite", r"'store\.jsonl' was collected with k=2"),
    C("train-tabular-two-tasks", f"train {MDP} --agent tabular --train-tasks sst2,trec",
      r"tabular agent learns one fixed pool of one task"),
    C("train-store-is-a-folder", f"train {MDP} --agent offline --store folder.json", r"'folder\.json' is a folder"),
    # --- select
    C("select-neither", f"{SEL}", r"give exactly one of --policy FILE or --selector NAME"),
    C("select-both", f"{SEL} --selector random --policy policy.safetensors", r"give exactly one of --policy"),
    C("select-unknown-selector", f"{SEL} --selector psychic", r"unknown selector 'psychic'; expected one of"),
    C("select-arg-not-key-value", f"{SEL} --selector random_search --arg n_prompts", r"--arg 'n_prompts'; expected"),
    C("select-arg-unknown-setting", f"{SEL} --selector random_search --arg colour=3",
      r"selector 'random_search' has no setting 'colour'; expected some of"),
    C("select-arg-wrong-type", f"{SEL} --selector random_search --arg n_prompts=many",
      r"n_prompts='many'; expected an integer"),
    C("select-pool-file-missing", f"{SEL} --selector random --pool nowhere.jsonl", r"'nowhere\.jsonl' not found"),
    C("select-pool-file-wrong-label", f"{SEL} --selector random --pool pool-label.jsonl",
      r"line 5 of pool-label\.jsonl: label 'neutral'"),
    C("select-k-above-pool", f"{SEL.replace('--k 2', '--k 20')} --selector random", r"k=20.*pool of 8"),
    C("select-k-zero", f"{SEL.replace('--k 2', '--k 0')} --selector random",
      r"k=0 for selector 'random'; expected k >= 1"),
    C("select-policy-missing", f"{SEL} --policy no/such/policy.safetensors", r"no/such/policy\.safetensors"),
    C("select-policy-edited", f"{SEL} --policy edited.safetensors", r"'edited\.safetensors' was edited or corrupted"),
    C("select-per-query-policy-edited", f"{SEL} --policy pq-edited.safetensors",
      r"'pq-edited\.safetensors' was edited or corrupted"),
    C("select-policy-other-scorer", "select --policy policy.safetensors --no-calibrate --cache none",
      r"calibrate: trained True vs asked False"),
    C("select-pretrained-pool-below-m", "select --task sst2 --policy pretrained --n-pool 4 --cache none",
      r"M=\d+ neighbours per query but the pool has 4; expected --n-pool >= \d+"),
    C("select-per-query-policy-pool-below-m", "select --task sst2 --policy pq.safetensors --n-pool 4 --cache none",
      r"M=8 neighbours per query but the pool has 4"),
    C("select-fixed-policy-as-per-query-selector", f"{SEL} --selector policy_pq --arg path=policy.safetensors",
      r"'policy\.safetensors' is a fixed-prompt policy.*expected a per-query policy"),
    C("select-out-file-exists", f"{SEL} --selector random --no-validate --out-file prompt.json",
      r"'prompt\.json' exists; expected a new file"),
    C("select-out-file-not-json", f"{SEL} --selector random --no-validate --out-file prompt.txt2",
      r"must end in \.json"),
    C("select-out-file-folder", f"{SEL} --selector random --no-validate --out-file folder.json --overwrite",
      r"prompt file 'folder\.json' is a folder; expected a file path"),
    C("select-bad-input-keeps-the-file-it-would-overwrite",
      f"{SEL.replace('--k 2', '--k 50')} --selector random --out-file prompt.json --overwrite", r"k=50"),
    C("select-policy-other-task", "select --policy policy.safetensors --task agnews --cache none",
      r"trained on task 'sst2' but task 'agnews' was asked"),
    C("select-embedder-not-a-name", f"{SEL} --selector knn --arg embedder=3", r"embedder 3 has no encode"),
    C("select-pool-file-empty", f"{SEL} --selector random --pool empty.jsonl", r"empty\.jsonl.*empty"),
    C("select-cache-not-sqlite", "select --task sst2 --n-pool 8 --k 2 --selector random --cache not-sqlite.sqlite",
      r"not-sqlite\.sqlite"),
    # --- prompt
    C("prompt-neither", "prompt q", r"give exactly one of --prompt-file FILE or --policy FILE"),
    C("prompt-both", "prompt --prompt-file prompt.json --policy policy.safetensors q", r"give exactly one of"),
    C("prompt-file-missing", "prompt --prompt-file nowhere.json q", r"nowhere\.json.*not found"),
    C("prompt-file-edited", "prompt --prompt-file prompt-edited.json q", r"was edited or corrupted"),
    C("prompt-file-not-json", "prompt --prompt-file not-json.json q", r"is not JSON.*line 1"),
    C("prompt-file-binary", "prompt --prompt-file binary.json q",
      r"prompt file 'binary\.json' is binary content, not a prompt file; expected a \.json file written by"),
    C("prompt-file-a-per-query-policy", "prompt --prompt-file pq.safetensors q",
      r"'pq\.safetensors' is a per-query policy file \(\.safetensors\), not a prompt file"),
    C("prompt-file-a-cache", "prompt --prompt-file cache.sqlite q",
      r"'cache\.sqlite' is an SQLite database \(a score cache\?\), not a prompt file"),
    C("prompt-file-a-folder", "prompt --prompt-file folder.json q", r"prompt file 'folder\.json' is a folder"),
    C("prompt-queries-a-folder", "prompt --prompt-file prompt.json --queries folder.json",
      r"query file 'folder\.json' is a folder; expected a \.jsonl or \.csv file"),
    C("prompt-policy-a-prompt-file", "prompt --policy prompt.json q",
      r"policy file 'prompt\.json' is a prompt file, not a \.safetensors file"),
    C("prompt-policy-a-folder", "prompt --policy folder.json q", r"policy file 'folder\.json' is a folder"),
    C("prompt-file-with-model", "prompt --prompt-file prompt.json --model other q", r"drop --model"),
    C("prompt-unknown-format", "prompt --prompt-file prompt.json --format yaml q", r"--format 'yaml'"),
    C("prompt-queries-file-missing", "prompt --prompt-file prompt.json --queries nowhere.jsonl", r"nowhere\.jsonl"),
    C("prompt-queries-missing-field", "prompt --prompt-file prompt.json --queries q-field.jsonl",
      r"line 2.*input field 'text'"),
    C("prompt-queries-bad-json", "prompt --prompt-file prompt.json --queries q-json.jsonl", r"line 2.*JSON"),
    C("prompt-queries-twice", "prompt --prompt-file prompt.json --queries q-field.jsonl q",
      r"not both"),
    C("prompt-stdin-empty", "prompt --prompt-file prompt.json", r"no queries", stdin=""),
    C("prompt-stdin-bad-line", "prompt --prompt-file prompt.json", r"line 2.*standard input",
      stdin='ok\n{"text": 3}\n'),
    C("prompt-output-is-a-folder", "prompt --prompt-file prompt.json -o folder.json q",
      r"--output 'folder\.json' is a folder; expected a file path"),
    C("prompt-policy-missing", "prompt --policy nowhere.safetensors q",
      r"policy file 'nowhere\.safetensors' not found"),
    C("prompt-policy-edited", "prompt --policy edited.safetensors --cache none q",
      r"'edited\.safetensors' was edited or corrupted"),
    C("prompt-policy-other-scorer", "prompt --policy policy.safetensors --no-calibrate --cache none q",
      r"calibrate: trained True vs asked False"),
    C("prompt-pretrained-pool-below-m", "prompt --task sst2 --policy pretrained --n-pool 4 --cache none q",
      r"expected --n-pool >= \d+"),
    # --- ablate
    C("ablate-no-config", "ablate", r"give an ablation CONFIG\.toml"),
    C("ablate-config-missing", "ablate nowhere.toml --dry-run", r"ablate config 'nowhere\.toml' does not exist"),
    C("ablate-config-a-folder", "ablate folder.json --dry-run",
      r"ablate config 'folder\.json' is a folder; expected a TOML file"),
    C("ablate-config-a-policy", "ablate policy.safetensors --dry-run",
      r"'policy\.safetensors' is a policy file \(\.safetensors\), not text; expected a TOML file"),
    C("ablate-config-syntax", "ablate g-syntax.toml --dry-run", r"'g-syntax\.toml' is not valid TOML"),
    C("ablate-grid-unknown-key", "ablate g-key.toml --dry-run", r"'colour'.*is not a grid key"),
    C("ablate-grid-bad-value", "ablate g-value.toml --dry-run", r"feature_set = 'shiny'"),
    C("ablate-grid-not-a-list", "ablate g-scalar.toml --dry-run", r"k = 2.*non-empty list"),
    C("ablate-grid-k-zero", "ablate g-k.toml --dry-run",
      r"cell \[k=0\] has k=0 for selector 'random'; expected k >= 1"),
    C("ablate-unknown-selector", "ablate g-selector.toml --dry-run", r"'oracle'.*is not a selector"),
    C("ablate-unknown-table", "ablate g-top.toml --dry-run", r"unknown key 'grids'; expected some of"),
    C("ablate-over-budget", "ablate g-ok.toml --budget 1", r"estimated \d+ LM query rows .* exceed --budget 1"),
    C("ablate-run-dir-without-plan", "ablate --run-dir r-none", r"give an ablation CONFIG\.toml"),
    C("ablate-budget-negative", "ablate g-ok.toml --budget -5",
      r"--budget -5; expected a number of LM query rows >= 0"),
    C("ablate-run-dir-is-a-file", "ablate g-ok.toml --run-dir prompt.json", r"--run-dir 'prompt\.json' is a file"),
    C("ablate-budget-not-a-number", "ablate g-ok.toml --budget lots", r"Invalid value for '--budget'.*valid integer",
      usage=True),
    # --- results / report
    C("results-run-dir-missing", "results nowhere --out out.md", r"'nowhere' is not an ablate run folder with results"),
    C("results-run-dir-without-results", "results r-none --out out.md",
      r"'r-none' is not an ablate run folder with results"),
    C("results-no-run-dir", "results", r"Missing argument 'run_dir'", usage=True),
    C("results-run-dir-is-a-file", "results prompt.json --out out.md",
      r"'prompt\.json' is a prompt file, not a run folder; expected an ablate run folder"),
    C("results-run-dir-is-a-policy", "results policy.safetensors --out out.md",
      r"'policy\.safetensors' is a policy file \(\.safetensors\), not a run folder"),
    C("results-a-baselines-run", "results r-json --out out.md",
      r"'r-json' is a baselines or evaluate run folder; expected an ablate run folder \(for this one: rl-select "
      r"report DIR\)"),
    C("report-a-file", "report prompt.json",
      r"'prompt\.json' is a prompt file, not a run folder; expected a folder written by baselines or evaluate"),
    C("report-a-policy", "report policy.safetensors",
      r"'policy\.safetensors' is a policy file \(\.safetensors\), not a run folder"),
    C("report-a-binary-file", "report binary.json", r"'binary\.json' is binary content, not a run folder"),
    C("report-its-results-file", "report r-json/results.json",
      r"'r-json/results\.json' is a run's results\.json; expected the run folder, 'r-json'"),
    C("report-an-ablate-run", "report r-ablate",
      r"'r-ablate' is an ablate run folder; expected one written by baselines or evaluate \(for this one: "
      r"rl-select results DIR\)"),
    C("report-missing", "report no/such/run", r"'no/such/run' has no results\.json"),
    C("report-no-results", "report r-none", r"'r-none' has no results\.json"),
    C("report-results-not-json", "report r-json", r"is not a run result"),
    C("report-results-wrong-shape", "report r-shape", r"is not a run result"),
    C("report-failed-run", "report r-failed", r"did not finish \(failed,.*cannot load model"),
    # --- per-query
    C("per-query-unknown-stage", "per-query fly --run-dir pq-run", r"unknown stage 'fly'"),
    C("per-query-bad-split", "per-query evaluate --run-dir pq-run --split dev", r"split='dev'"),
    C("per-query-seeds-not-integers", "per-query evaluate --run-dir pq-run --seeds a,b", r"--seeds 'a,b'"),
    C("per-query-config-missing", "per-query collect --run-dir pq-run --config nowhere.json",
      r"cannot read per-query config 'nowhere\.json'"),
    C("per-query-config-syntax", "per-query collect --run-dir pq-run --config pq-syntax.json",
      r"per-query config 'pq-syntax\.json' is not JSON"),
    C("per-query-config-unknown-field", "per-query collect --run-dir pq-run --config pq-unknown.json",
      r"unknown field 'colour'; expected some of"),
    C("per-query-config-wrong-type", "per-query collect --run-dir pq-run --config pq-type.json",
      r"per-query config k='four'; expected an integer >= 1"),
    C("per-query-config-not-object", "per-query collect --run-dir pq-run --config pq-list.json",
      r"'pq-list\.json' holds list; expected a JSON object"),
    C("per-query-config-negative", "per-query collect --run-dir pq-run --config pq-negative.json",
      r"per-query config n_pool=-5; expected an integer >= 1"),
    C("per-query-config-unknown-task", "per-query collect --run-dir pq-run --config pq-tasks.json",
      r"unknown task 'nosuch'; expected one of"),
    C("per-query-unknown-task", "per-query collect --run-dir pq-run --tasks nosuch",
      r"unknown task 'nosuch'; expected one of"),
    C("per-query-unknown-feature-set", "per-query train --run-dir pq-run --tasks sst2 --feature-sets shiny",
      r"feature set 'shiny'; expected one of"),
    C("per-query-unknown-reward", "per-query train --run-dir pq-run --tasks sst2 --rewards sometimes",
      r"per-query reward 'sometimes'; expected one of \['correct', 'margin'\]"),
    C("per-query-store-other-settings", "per-query collect --run-dir pq-run --tasks sst2",
      r"sst2\.jsonl.*other settings"),
    C("per-query-config-k-above-m", "per-query collect --run-dir pq-new --config pq-k-above-m.json",
      r"k=9 exceeds m=4"),
    C("per-query-config-feature-set", "per-query collect --run-dir pq-new --config pq-feature-set.json", r"'shiny'"),
    C("per-query-config-seeds-text", "per-query collect --run-dir pq-new --config pq-seeds.json", r"seeds='0,1'"),
    C("per-query-config-mode", "per-query collect --run-dir pq-new --config pq-modes.json",
      r"modes=\['greedy', 'beam'\]; 'beam' is not one of \['greedy', 'critic', 'verify'\]"),
    C("per-query-config-not-utf8", "per-query collect --run-dir pq-new --config pq-utf8.json",
      r"pq-utf8\.json' is not UTF-8"),
    C("per-query-report-no-results", "per-query report --run-dir pq-run", r"'pq-run/results\.csv' not found"),
    # --- reproduce
    C("reproduce-unknown-name", "reproduce nosuch",
      r"no shipped policy 'nosuch'; expected one of \['pretrained', 'pretrained-critic', 'pretrained-large'\]"),
    C("reproduce-outside-the-repository", "reproduce pretrained --dry-run",
      r"config 'configs/per_query\.json' .*not found here; .*run from the repository root"),
    C("reproduce-out-is-a-folder", "reproduce pretrained --out folder.json", r"--out 'folder\.json' is a folder"),
    C("reproduce-work-dir-is-a-file", "reproduce pretrained --dry-run --work-dir prompt.json",
      r"work folder 'prompt\.json' is a file"),
    C("reproduce-record-not-commands", "reproduce pretrained --record 'make all'",
      r"--record 'make all' holds 'make all'; expected rl-select commands joined by &&"),
    C("per-query-run-dir-is-a-file", "per-query evaluate --run-dir prompt.json",
      r"--run-dir 'prompt\.json' is a prompt file; expected a run folder"),
    C("per-query-report-run-dir-is-a-file", "per-query report --run-dir binary.json",
      r"--run-dir 'binary\.json' is binary content; expected a run folder"),
    C("per-query-config-a-cache", "per-query collect --run-dir pq-new --config cache.sqlite",
      r"per-query config 'cache\.sqlite' is an SQLite database \(a score cache\?\), not text; expected a JSON "
      r"object"),
    # --- bench
    C("bench-env-unknown-feature-set", f"bench env {MDP} --feature-set psychic",
      r"mdp\.feature_set='psychic'; expected one of"),
    C("bench-env-candidates-above-pool", f"bench env {MDP} --n-candidates 99999", r"n_candidates=99999"),
    C("bench-env-unknown-task", "bench env --task no_such_task", r"unknown task 'no_such_task'"),
    C("bench-collect-unknown-reward", "bench collect --task sst2 --rewards marginal,sometimes",
      r"unknown reward mode 'sometimes'; expected one of"),
    C("bench-collect-unknown-feature-set", "bench collect --task sst2 --feature-sets active,shiny",
      r"unknown feature set 'shiny'; expected one of"),
    C("bench-collect-unknown-task", "bench collect --task no_such_task", r"unknown task 'no_such_task'"),
    C("bench-collect-seeds-not-integers", "bench collect --seeds x", r"--seeds 'x'"),
    C("bench-scorer-queries-zero", "bench scorer --n-queries 0", r"--n-queries 0; expected an integer >= 1"),
    C("bench-scorer-m-below-k", "bench scorer --m 2 --k 4", r"--m 2 is below --k 4"),
    C("bench-scorer-unknown-task", "bench scorer --task no_such_task", r"unknown task 'no_such_task'"),
    C("bench-scorer-batch-zero", "bench scorer --batch-size 0", r"--batch-size 0"),
    C("bench-scale-workers-not-integers", "bench scale --skip-server --workers a,b", r"--workers 'a,b'"),
    C("bench-scale-workers-zero", "bench scale --skip-server --workers 0",
      r"--workers '0'; expected positive worker counts"),
    C("bench-env-episodes-zero", f"bench env {MDP} --episodes 0", r"--episodes 0; expected an integer >= 1"),
    C("bench-scale-queries-zero", "bench scale --skip-ray --n-queries 0", r"--n-queries 0; expected an integer >= 1"),
    C("bench-scale-k-zero", "bench scale --skip-ray --k 0", r"--k 0; expected an integer >= 1"),
    C("bench-scale-candidates-below-k", "bench scale --skip-server --k 4 --n-candidates 2",
      r"--n-candidates 2; expected an integer >= 4"),
    C("bench-scale-unknown-task", "bench scale --skip-ray --task no_such_task", r"unknown task 'no_such_task'"),
]


# --- running one case ------------------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256 of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _read_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root writes anywhere
        folder = Path("/proc/sys")
        if not folder.is_dir() or os.access(folder, os.W_OK):
            pytest.skip("no folder here is read-only to this process")
    return folder


@pytest.fixture
def guarded(monkeypatch, tmp_path, originals):
    """A working folder holding a copy of the originals, with every model loader replaced by a failure."""
    from rl_select import embeddings
    from rl_select.experiments import bench_collect, bench_scorer, harness
    from rl_select.lm import hf

    def refuse(*args, **kwargs):
        raise ModelLoadReached("a model load was reached: the bad input was not refused before it")

    for module, name in ((harness, "build_scorer"), (harness, "scorer_factory"), (hf, "load_causal_lm"),
                         (bench_collect, "load_causal_lm"), (bench_scorer, "load_causal_lm"),
                         (embeddings.MiniLMEmbedder, "_load")):
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RL_SELECT_DATA", str(ROOT))
    monkeypatch.setenv("RL_SELECT_CACHE", str(tmp_path / "default-cache" / "scores.sqlite"))
    work = tmp_path / "work"
    shutil.copytree(originals, work)
    monkeypatch.chdir(work)
    return work


def test_the_table_covers_every_command_with_enough_cases():
    commands = {c.argv.split()[0] if c.argv.split()[0] != "bench" else " ".join(c.argv.split()[:2]) for c in CASES}
    assert commands == {"tasks", "baselines", "evaluate", "collect", "train", "select", "prompt", "ablate", "results",
                        "report", "reproduce", "per-query", "bench env", "bench collect", "bench scorer", "bench scale"}
    assert len(CASES) >= 95 and len({c.id for c in CASES}) == len(CASES)


def test_the_originals_are_sound_and_the_guard_catches_a_model_load(guarded: Path):
    """The untouched files load (so each bad one is bad for its own reason), and good input does reach the
    guarded model load (so a case that passes was refused before it)."""
    from rl_select.mdp.per_query_policy import PerQueryPolicy
    from rl_select.mdp.policy import SelectorPolicy
    from rl_select.prompt_file import PromptFile

    assert SelectorPolicy.load("policy.safetensors").k == 2 and PerQueryPolicy.load("pq.safetensors").m == 8
    assert PromptFile.load("prompt.json").k == 2
    res = runner.invoke(app, ["prompt", "--prompt-file", "prompt.json", "a fine film"])
    assert res.exit_code == 0 and '"prompt"' in res.stdout, res.output
    with pytest.raises(ModelLoadReached):
        runner.invoke(app, shlex.split(f"{B} --selectors random"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_leaves_the_files_alone(case: Case, guarded: Path, tmp_path: Path):
    argv = shlex.split(case.argv)
    if "{ro}" in case.argv:  # a folder this process cannot write in
        folder = str(_read_only_folder(tmp_path))
        argv = [a.replace("{ro}", folder) for a in argv]
    before = _snapshot(guarded)
    result = runner.invoke(app, argv, input=case.stdin)
    output = result.output
    assert not isinstance(result.exception, ModelLoadReached), f"{case.id}: reached a model load\n{output}"
    assert isinstance(result.exception, SystemExit), f"{case.id}: {result.exception!r}\n{output}"
    assert result.exit_code == 2, (result.exit_code, output)
    assert "Traceback" not in output, output
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    if case.usage:
        assert lines[0].startswith("Usage:") and "─ Error ─" in output, output  # typer's usage box
        text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())  # the box's text, unwrapped
        assert re.search(case.pattern, text), (case.pattern, text)
    else:
        assert len(lines) == 1, f"{case.id}: expected one line, got {len(lines)}:\n{output}"
        line = lines[0]
        assert line.startswith("error: "), line
        own = re.sub(r"'[^']*/[^']*'", "''", line)  # the user's own paths are theirs; the rest is short
        assert len(own) < MAX_MESSAGE + len("error: "), (len(own), line)
        assert re.search(case.pattern, line), (case.pattern, line)
    after = _snapshot(guarded)
    changed = sorted(p for p in before if after.get(p) != before[p])
    assert not changed, f"{case.id}: files changed or removed: {changed}"
    created = sorted(set(after) - set(before))
    assert not created, f"{case.id}: files written on bad input: {created}"
