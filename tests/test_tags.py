"""Self-describing parts: every selector and agent declares what it needs and costs, and the cost estimates,
the results' grouping, the prompt files' LM check and the CLI read those declarations (no lists of names)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from typer.testing import CliRunner

from agents.registry import AgentTags, load_agents
from rl_select import cli, prompt_file
from rl_select.errors import SelectionError
from rl_select.experiments import ablate, results
from rl_select.experiments.config import RunConfig
from rl_select.selectors import SELECTORS, CostSetting, RandomSelector, SelectorTags, register_selector

# (LM rows, labels read, per query) at P = 12, V = 9, k = 4 with ARGS: the values of the hand-kept
# ablate.COSTS table the declarations replaced (checked by hand against docs/ablate.md's formulas).
ARGS = {"random_search:3": {"n_prompts": 3}, "greedy": {"max_candidates": 5}, "policy_rank": {"n_sets": 6},
        "policy_probe:knn": {"n_prompts": 8, "with_knn": True}, "policy_search:6s": {"screen": 3, "keep": 2}}
EXPECTED = {
    "active": {
        "zero_shot": (0, 0, False), "random": (0, 4, False), "knn": (0, 12, True), "max_entropy": (42, 4, False),
        "global_entropy": (144, 12, False), "random_search": (72, 21, False), "random_search:3": (27, 21, False),
        "greedy": (180, 21, False), "policy": (84, 4, False), "policy_search:3": (279, 21, False),
        "policy_search:6s": (534, 21, False), "policy_rank": (504, 4, False), "policy_probe": (144, 12, False),
        "policy_probe:knn": (81, 12, True), "knn_majority": (0, 12, True), "knn_balanced": (0, 12, True),
        "knn_mmr": (0, 12, True), "policy_pq": (60, 12, True),
    },
    "table_labelled": {
        "zero_shot": (0, 0, False), "random": (0, 4, False), "knn": (0, 12, True), "max_entropy": (42, 4, False),
        "global_entropy": (144, 12, False), "random_search": (72, 21, False), "random_search:3": (27, 21, False),
        "greedy": (180, 21, False), "policy": (12, 12, False), "policy_search:3": (39, 21, False),
        "policy_search:6s": (42, 21, False), "policy_rank": (12, 12, False), "policy_probe": (144, 12, False),
        "policy_probe:knn": (81, 12, True), "knn_majority": (0, 12, True), "knn_balanced": (0, 12, True),
        "knn_mmr": (0, 12, True), "policy_pq": (60, 12, True),
    },
}

# Training LM rows at k = 2, N = P = 5, V = 6, train_pool 30, 4 episodes, 21 steps, 3 val episodes, no store yet.
EXPECTED_TRAINING = {("offline", "active"): 1221, ("dqn", "active"): 363, ("tabular", "active"): 132,
                     ("offline", "table_labelled"): 480, ("dqn", "table_labelled"): 168}


def _field_ok(value: object, kind: type) -> bool:
    return value is not None and isinstance(value, kind)


@pytest.mark.parametrize("name", list(SELECTORS))
def test_every_selector_declares_every_field_itself(name):
    cls = SELECTORS[name]
    assert isinstance(vars(cls).get("tags"), SelectorTags), f"{name} inherits or lacks its tags"
    tags = cls.tags
    for f in ("val_labels", "pool_labels", "trained", "lm"):
        assert _field_ok(getattr(tags, f), bool), (name, f)
    assert isinstance(tags.per_query, bool) or callable(tags.per_query)
    assert tags.count_arg is None or isinstance(tags.count_arg, str)
    assert callable(tags.lm_rows) and callable(tags.labels_read) and tags.cost_note.strip()
    assert {f.name for f in dataclasses.fields(SelectorTags) if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING} == {f.name for f in dataclasses.fields(SelectorTags)}
    setting = CostSetting(n_pool=12, n_val=9, n_test=8, k=4)
    assert isinstance(tags.lm_rows(setting), int) and tags.lm_rows(setting) >= 0
    assert isinstance(tags.labels_read(setting), int) and tags.labels_read(setting) >= 0


def test_a_selector_without_its_own_tags_is_refused():
    class Unsaid(RandomSelector):
        name = "unsaid"

    with pytest.raises(SelectionError, match="'unsaid'.*declares no tags"):
        register_selector(Unsaid)
    assert "unsaid" not in SELECTORS


@pytest.mark.parametrize("feature_set", list(EXPECTED))
def test_declared_costs_give_the_expected_table(feature_set):
    table = EXPECTED[feature_set]
    assert {e.split(":")[0] for e in table} == set(SELECTORS), "a registered selector has no expected cost"
    cfg = RunConfig.from_dict({"k": 4, "splits": {"n_pool": 12, "n_val": 9, "n_test": 8},
                               "mdp": {"feature_set": feature_set}, "selectors": {"names": ["random"], "args": ARGS}})
    got = {e: (ablate.select_rows(cfg, e), ablate.select_labels(cfg, e), ablate._per_query(cfg, e)) for e in table}
    assert got == table


@pytest.mark.parametrize("agent, feature_set", list(EXPECTED_TRAINING))
def test_training_rows_read_the_agent_declaration(agent, feature_set, tmp_path):
    assert {a for a, _ in EXPECTED_TRAINING} == set(load_agents()), "a registered agent has no expected cost"
    cfg = RunConfig.from_dict({"k": 2, "splits": {"n_pool": 5, "n_val": 6, "n_test": 8, "train_pool": 30},
                               "mdp": {"feature_set": feature_set, "n_candidates": 5},
                               "agent": {"name": agent, "episodes": 4, "train_steps": 21, "val_episodes": 3,
                                         "store": str(tmp_path / "none.jsonl")}})
    assert ablate.training_rows(cfg) == EXPECTED_TRAINING[(agent, feature_set)]


@pytest.mark.parametrize("name", ["tabular", "dqn", "offline"])
def test_every_agent_declares_its_tags_and_how_it_trains(name):
    cls = load_agents()[name]
    assert cls.name == name and isinstance(vars(cls).get("tags"), AgentTags)
    assert cls.tags.learns_from in ("env", "rollouts") and isinstance(cls.tags.fixed_pool, bool)
    assert isinstance(cls.tags.exports_policy, bool) and callable(cls.tags.env_episodes)
    assert "train_from" in vars(cls)


def test_the_hand_kept_lists_are_gone():
    for module, names in ((ablate, ("TRAINED", "COSTS", "DEFAULT_COST", "Cost")),
                          (results, ("LABEL_FREE", "LABEL_FREE_TRAINED")), (prompt_file, ("_NO_LM",))):
        for name in names:
            assert not hasattr(module, name), f"{module.__name__}.{name}"


def test_results_group_by_the_declarations():
    assert results.label_free_baselines() == ["zero_shot", "random", "knn", "knn_majority", "knn_balanced", "knn_mmr",
                                             "max_entropy", "global_entropy"]
    lines = {x.label: x.labels for x in results._lines(["greedy", "zero_shot", "policy_search:2", "policy", "knn"])}
    assert list(lines) == ["zero_shot", "policy (seen)", "policy (transfer)", "knn", "greedy",
                           "policy_search:2 (seen)", "policy_search:2 (transfer)"]
    assert lines["zero_shot"] == "none" and lines["policy (seen)"] == "pool labels" and lines["knn"] == "pool labels"
    assert lines["policy_search:2 (transfer)"] == "pool + val labels" and lines["greedy"] == "pool + val labels"


def _names(keep: Callable[[SelectorTags], bool]) -> list[str]:
    return [n for n, cls in SELECTORS.items() if keep(cls.tags)]


def test_cli_selector_lists_come_from_the_registry(monkeypatch, tmp_path):
    from rl_select.experiments import harness

    def refuse(*args, **kwargs):
        raise AssertionError("the model load was reached")

    monkeypatch.setattr(harness, "build_scorer", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    selector_help = cli.SelectorOpt.__metadata__[0].help
    assert f"({', '.join(_names(lambda t: not t.trained))})" in selector_help and "global_entropy" in selector_help
    assert f"{', '.join(_names(lambda t: not t.lm))} need no LM" in cli.ValidateOpt.__metadata__[0].help
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli.app, ["select", "--selector", "oracle", "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    error = [ln for ln in res.output.splitlines() if ln.startswith("error:")][0]
    shown, _, more = error.split("expected one of ")[1].partition(", ... (")
    shown = shown.split(", ")  # the registry's names, cut to one short line with a count of the rest
    assert "'oracle'" in error and shown == sorted(SELECTORS)[:len(shown)], error
    assert more == f"{len(SELECTORS) - len(shown)} more)", error
