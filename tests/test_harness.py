"""The evaluation harness with the model-free ToyScorer: grid rows, spend, summaries, run folders, plots."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rl_select.errors import ConfigError, DataError, SelectionError
from rl_select.experiments.config import RunConfig, load_config
from rl_select.experiments.executors import LocalExecutor
from rl_select.experiments.harness import EvalWorker, TaskData, check_plan, grouped_accuracy, run_grid, summarise
from rl_select.experiments.report import plot_summary, summary_table
from rl_select.experiments.rundir import RunDir
from rl_select.lm.base import CachedScorer
from rl_select.lm.cache import ScoreCache
from rl_select.tasks import get_task
from rl_select.testing import ToyScorer
from rl_select.types import Example

SPEC = get_task("sst2")
SELECTORS = ["zero_shot", "random", "random_search", "greedy", "max_entropy", "knn"]
SPEND = ("queries", "cache_hits", "cache_misses", "prefix_forwards", "forward_tokens", "seconds")


def make_examples(n: int, prefix: str) -> list[Example]:
    """Alternating labels; every third row carries its label word (the ToyScorer's hint)."""
    out = []
    for i in range(n):
        label = ("positive", "negative")[i % 2]
        hint = f" {label}" if i % 3 == 0 else ""
        out.append(Example(text=f"{prefix} review {i} of a film{hint}", label=label, uid=f"{prefix}:{i}"))
    return out


class HashEmbedder:
    """Deterministic bag-of-words embedder (no model), so kNN runs in the grid."""

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 32), dtype=np.float32)
        for r, text in enumerate(texts):
            for word in text.split():
                out[r, zlib.crc32(word.encode()) % 32] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


class CachedToy(CachedScorer):
    """ToyScorer's numbers behind the real cache; records each ``_compute`` call's (demos, queries)."""

    def __init__(self, spec=SPEC, **kwargs) -> None:
        super().__init__(spec, **kwargs)
        self.toy = ToyScorer(spec)
        self.calls: list[tuple[list[Example], list[Example]]] = []

    @property
    def fingerprint(self) -> str:
        return "cached-toy:v1"

    def _compute(self, demos: Sequence[Example], queries: Sequence[Example]) -> np.ndarray:
        self.calls.append((list(demos), list(queries)))
        self.stats.prefix_forwards += 1
        return self.toy.logprobs(demos=demos, queries=queries)


@pytest.fixture
def data() -> TaskData:
    return TaskData(SPEC, make_examples(60, "train"), make_examples(30, "test"))


@pytest.fixture
def cfg(tmp_path) -> RunConfig:
    return RunConfig.from_dict(dict(
        k=3, n_pool=8, n_val=8, n_test=12, seeds=[0, 1], selectors=list(SELECTORS),
        selector_args={"knn": {"embedder": HashEmbedder()}, "random_search": {"n_prompts": 4}},
        cache="none", out=str(tmp_path / "runs"),
    ))


def only(cfg: RunConfig, *names: str, **changes) -> RunConfig:
    """``cfg`` with just these selectors (and their arguments)."""
    args = {k: v for k, v in cfg.selectors.args.items() if k in names}
    return cfg.updated(selectors=list(names), selector_args=args, **changes)


def grid(cfg: RunConfig, data: TaskData, scorer, *, demos=None, label: str = "explicit", on_row=None) -> list[dict]:
    """:func:`run_grid` in process on ``scorer``: its rows."""
    worker = EvalWorker(cfg, data, scorer, demos=demos, label=label)
    return run_grid(cfg, LocalExecutor(worker), names=None if demos is None else [label], on_row=on_row).rows


def _strip_time(rows):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


# --- run_grid -------------------------------------------------------------------------------------


def test_run_grid_rows(cfg, data):
    seen = []
    rows = grid(cfg, data, ToyScorer(SPEC), on_row=seen.append)
    assert seen == rows
    assert [(r["selector"], r["seed"]) for r in rows] == [(s, seed) for seed in (0, 1) for s in SELECTORS]
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0
        assert r["n_test"] == 12 and r["k"] == 3
        for phase in ("select", "eval"):
            for field in SPEND:
                assert r[f"{phase}_{field}"] >= 0, (r["selector"], phase, field)
        assert r["eval_queries"] >= r["n_test"]
    by = {(r["selector"], r["seed"]): r for r in rows}
    # Selectors that never ask the LM spend nothing while selecting; search-based ones do.
    for name in ("zero_shot", "random", "knn"):
        assert by[name, 0]["select_queries"] == 0
    for name in ("random_search", "greedy", "max_entropy"):
        assert by[name, 0]["select_queries"] > 0
    assert by["random_search", 0]["select_queries"] >= 4 * cfg.splits.n_val
    # One fixed demo list (with val accuracy) vs per-query demos.
    assert by["zero_shot", 0]["demos"] == []
    assert len(by["random", 0]["demos"]) == 3
    assert all(uid.startswith("train:") for uid in by["greedy", 1]["demos"])
    assert 0.0 <= by["random", 0]["val_acc"] <= 1.0
    assert by["knn", 0]["demos"] == "per-query" and by["knn", 0]["val_acc"] is None


def test_run_grid_is_deterministic(cfg, data):
    first = grid(cfg, data, ToyScorer(SPEC))
    second = grid(cfg, data, ToyScorer(SPEC))
    assert _strip_time(first) == _strip_time(second)


def test_seeds_give_different_splits(cfg, data):
    rows = grid(only(cfg, "random"), data, ToyScorer(SPEC))
    assert rows[0]["demos"] != rows[1]["demos"]


def test_run_grid_with_cache_second_run_is_all_hits(cfg, data, tmp_path):
    cfg = only(cfg, "random", "random_search")
    path = tmp_path / "scores.sqlite"
    first = grid(cfg, data, CachedToy(cache=ScoreCache(path)))
    again_scorer = CachedToy(cache=ScoreCache(path))
    second = grid(cfg, data, again_scorer)
    assert again_scorer.calls == []
    assert all(r["select_cache_misses"] == 0 and r["eval_cache_misses"] == 0 for r in second)
    assert [r["test_acc"] for r in first] == [r["test_acc"] for r in second]
    summary = summarise(second)
    assert {s["selector"]: s["select_cache_hit_rate"] for s in summary} == {"random": None, "random_search": 1.0}


def test_run_grid_explicit_demos(cfg, data):
    demos = data.train[:2]
    rows = grid(cfg, data, ToyScorer(SPEC), demos=demos, label="mine")
    assert [r["selector"] for r in rows] == ["mine", "mine"]
    assert all(r["demos"] == ["train:0", "train:1"] for r in rows)
    assert all(r["select_queries"] == 0 for r in rows)


# --- refusals -------------------------------------------------------------------------------------


def test_k_larger_than_pool_is_refused(cfg, data):
    big = only(cfg, "random", k=50)
    with pytest.raises(SelectionError, match=r"k=50 .*8"):
        check_plan(big, data)
    with pytest.raises(SelectionError, match=r"k=50 .*8"):
        grid(big, data, ToyScorer(SPEC))


def test_k_larger_than_pool_is_fine_for_zero_shot(cfg, data):
    zs = only(cfg, "zero_shot", k=50)
    check_plan(zs, data)
    assert grid(zs, data, ToyScorer(SPEC))[0]["demos"] == []


def test_check_plan_refuses_bad_plans(cfg, data):
    check_plan(cfg, data)  # the good plan passes
    with pytest.raises(ConfigError, match="'psychic'"):  # refused when the config is made
        only(cfg, "psychic")
    with pytest.raises(ConfigError, match="'oracle'"):
        only(cfg, "random").updated(selector_args={"oracle": {}})
    check_plan(only(cfg, "random").updated(selector_args={"greedy": {"max_candidates": 2}}), data)  # unused: fine
    with pytest.raises(SelectionError, match="n_prompts=0"):
        check_plan(cfg.updated(selector_args={"random_search": {"n_prompts": 0}}), data)
    with pytest.raises(DataError, match="60 train"):
        check_plan(cfg.updated(n_pool=100), data)
    with pytest.raises(DataError, match="n_test=99"):
        check_plan(cfg.updated(n_test=99), data)


# --- test_accuracy --------------------------------------------------------------------------------


def test_test_accuracy_groups_queries_by_demo_list(data):
    a, b = data.train[0], data.train[1]
    test = data.test[:5]
    lists = [[a], [b], [a], [a, b], [replace(b, uid="same content, other uid")]]
    scorer = CachedToy(cache=None)
    acc = grouped_accuracy(scorer, lists, test)
    grouped = sorted(([d.uid for d in demos], [q.uid for q in qs]) for demos, qs in scorer.calls)
    assert grouped == sorted([
        (["train:0"], [test[0].uid, test[2].uid]),
        (["train:1"], [test[1].uid, test[4].uid]),
        (["train:0", "train:1"], [test[3].uid]),
    ])
    toy = ToyScorer(SPEC)
    gold = [SPEC.labels.index(q.label) for q in test]
    hits = [toy.logprobs(demos=d, queries=[q])[0].argmax() == g for d, q, g in zip(lists, test, gold)]
    assert acc == pytest.approx(np.mean(hits))


def test_test_accuracy_one_list_is_one_call(data):
    scorer = CachedToy(cache=None)
    grouped_accuracy(scorer, [data.train[:2]] * 7, data.test[:7])
    assert len(scorer.calls) == 1 and len(scorer.calls[0][1]) == 7


# --- summarise ------------------------------------------------------------------------------------


def test_summarise_mean_and_std(cfg, data):
    rows = grid(cfg, data, ToyScorer(SPEC))
    summary = summarise(rows)
    assert [s["selector"] for s in summary] == SELECTORS
    for s in summary:
        accs = np.array([r["test_acc"] for r in rows if r["selector"] == s["selector"]])
        assert s["seeds"] == 2
        assert s["test_acc_mean"] == pytest.approx(accs.mean())
        assert s["test_acc_std"] == pytest.approx(accs.std(ddof=1))
    by = {s["selector"]: s for s in summary}
    assert by["knn"]["val_acc_mean"] is None
    assert by["zero_shot"]["select_lm_queries"] == 0


def test_summarise_hand_made_rows():
    def row(name, seed, acc, queries=10, hits=4):
        return {"selector": name, "seed": seed, "test_acc": acc, "val_acc": 0.5, "select_queries": queries,
                "select_cache_hits": hits, "select_cache_misses": queries - hits, "select_seconds": 1.0}

    summary = summarise([row("a", 0, 0.6), row("a", 1, 0.8), row("b", 0, 0.5, queries=0, hits=0)])
    a, b = summary
    assert a["test_acc_mean"] == pytest.approx(0.7)
    assert a["test_acc_std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert a["select_cache_hit_rate"] == pytest.approx(0.4)
    assert a["select_lm_misses"] == pytest.approx(6.0)
    assert b["test_acc_std"] == 0.0 and b["seeds"] == 1
    assert b["select_cache_hit_rate"] is None


# --- run folders, tables and plots ----------------------------------------------------------------


@pytest.fixture
def rl_logger():
    logger = logging.getLogger("rl_select")
    before = list(logger.handlers)
    yield logger
    for handler in logger.handlers[:]:
        if handler not in before:
            logger.removeHandler(handler)
            handler.close()


def test_run_dir_files(cfg, data, rl_logger):
    cfg = only(cfg, "zero_shot", "random")
    run = RunDir.create(cfg, "baselines")
    assert run.path.parent == Path(cfg.out)
    assert run.path.name.endswith("-baselines-sst2")
    assert json.loads((run.path / "status.json").read_text())["state"] == "running"
    rows = grid(cfg, data, ToyScorer(SPEC), on_row=run.add_row)
    summary = summarise(rows)
    run.finish(summary, {"config": cfg.to_dict(), "lm_calls": {"queries": 1}})
    status = json.loads((run.path / "status.json").read_text())
    assert (status["state"], status["command"]) == ("done", "baselines") and "error" not in status

    assert load_config(run.path / "config.toml") == cfg
    assert 'k = 3' in (run.path / "config.toml").read_text().splitlines()
    results = pd.read_csv(run.path / "results.csv")
    assert len(results) == len(rows) == 4
    assert list(results["selector"]) == [r["selector"] for r in rows]
    assert results["test_acc"].between(0, 1).all()
    assert json.loads(results["demos"].iloc[1]) == rows[1]["demos"]  # lists stored as JSON
    summary_csv = pd.read_csv(run.path / "summary.csv")
    assert list(summary_csv["selector"]) == ["zero_shot", "random"]
    doc = json.loads((run.path / "results.json").read_text())
    assert len(doc["rows"]) == 4 and doc["summary"][1]["selector"] == "random"
    assert doc["config"]["k"] == 3 and doc["lm_calls"] == {"queries": 1}
    assert (run.path / "log.txt").is_file()

    png = plot_summary(summary, rows, run.path / "acc.png", "toy run")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = summary_table(summary, "toy run")
    assert table.row_count == 2


def test_run_dir_names_do_not_collide(cfg, rl_logger):
    cfg = only(cfg, "random")
    first = RunDir.create(cfg, "evaluate")
    second = RunDir.create(cfg, "evaluate")
    assert first.path != second.path
    assert first.path.is_dir() and second.path.is_dir()


def test_run_dir_log_goes_to_its_own_folder_only(cfg, rl_logger):
    cfg = only(cfg, "random")
    first = RunDir.create(cfg, "evaluate")
    rl_logger.info("only in the first run")
    second = RunDir.create(cfg, "evaluate")
    rl_logger.info("only in the second run")
    for handler in rl_logger.handlers:
        handler.flush()
    assert "only in the first run" in (first.path / "log.txt").read_text()
    assert "only in the second run" in (second.path / "log.txt").read_text()
    assert "only in the second run" not in (first.path / "log.txt").read_text()


def test_grouped_logprobs_are_per_query_scores_with_one_call_per_list(data):
    from rl_select.lm.base import grouped_logprobs

    a, b = data.train[0], data.train[1]
    test = data.test[:4]
    lists = [[a], [b], [a], [a, b]]
    scorer = CachedToy(cache=None)
    got = grouped_logprobs(scorer, lists, test)
    toy = ToyScorer(SPEC)
    want = np.stack([toy.logprobs(demos=d, queries=[q])[0] for d, q in zip(lists, test)])
    assert got.shape == (4, len(SPEC.labels)) and np.allclose(got, want)
    assert len(scorer.calls) == 3
    with pytest.raises(ValueError, match="3 demo lists for 4 queries"):
        grouped_logprobs(scorer, lists[:3], test)


# --- a row over the LM's context window ---------------------------------------------------------------


def test_a_huge_test_query_costs_one_failed_row_not_the_run(cfg, data):
    from rl_select.lm.window import ContextWindowWarning
    from rl_select.testing import CachedToyScorer

    huge = Example(text=" ".join(["positive"] * 20_000), label="positive", uid="test:huge")
    data = replace(data, test=data.test[:11] + [huge])
    cfg = cfg.updated(n_test=12)
    demos = data.train[:3]
    assert ToyScorer(SPEC).logprobs(demos=demos, queries=[huge]).argmax() == SPEC.labels.index("positive")  # right
    with pytest.warns(ContextWindowWarning, match="row 'test:huge'"):
        cut = grid(cfg, data, CachedToyScorer(SPEC, window=300), demos=demos)
        rows = grid(cfg, data, CachedToyScorer(SPEC, window=300))
    free = grid(cfg, data, CachedToyScorer(SPEC), demos=demos)
    for a, b in zip(cut, free):
        assert a["test_acc"] == pytest.approx(b["test_acc"] - 1 / 12)
        assert (a["test_rows_failed"], b["test_rows_failed"], a["eval_rows_failed"]) == (1, 0, 1)
    assert [(r["selector"], r["seed"]) for r in rows] == [(s, seed) for seed in (0, 1) for s in SELECTORS]
    assert all(r["test_rows_failed"] == 1 and r["test_acc"] <= 11 / 12 for r in rows)
    summary = summarise(rows)
    assert {(s["test_rows_failed"], s["test_rows_dropped_demos"]) for s in summary} == {(2, 0)}
    table = summary_table(summary, "toy run")
    assert table.columns[-1].header == "window" and list(table.columns[-1].cells) == ["2 failed"] * len(SELECTORS)
    assert summary_table(summarise(free), "toy run").columns[-1].header == "sec"  # no column when none
