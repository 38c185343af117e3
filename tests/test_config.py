"""RunConfig: typed sections mapping to TOML tables; older flat files still load; one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from rl_select.errors import MAX_MESSAGE, ConfigError
from rl_select.experiments.config import RunConfig, load_config
from rl_select.lm.spec import ScorerSpec

FLAT = """
[run]
task = "sst2"
k = 3
calibrate = true
n_val = 12
selectors = ["zero_shot", "random"]
feature_set = "labelled"
agent = "dqn"
executor = "local"
ray_address = ""
store = ""
n_candidates = 0
train_tasks = []
[run.selector_args.random_search]
n_prompts = 4
"""

NESTED = """
task = "sst2"
k = 3
[lm]
calibrate = true
[splits]
n_val = 12
[selectors]
names = ["zero_shot", "random"]
[selectors.args.random_search]
n_prompts = 4
[mdp]
feature_set = "labelled"
[agent]
name = "dqn"
"""


def _write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_flat_and_nested_files_give_the_same_config(tmp_path):
    flat = load_config(_write(tmp_path, FLAT, "flat.toml"))
    nested = load_config(_write(tmp_path, NESTED, "nested.toml"))
    assert flat == nested
    assert nested.lm == ScorerSpec(calibrate=True)
    assert (nested.splits.n_val, nested.mdp.feature_set, nested.agent.name) == (12, "labelled", "dqn")
    # "unset" is None, not a sentinel string or 0
    assert nested.agent.store is None and nested.executor.address is None and nested.mdp.n_candidates is None
    assert nested.n_candidates == nested.splits.n_pool and nested.train_tasks == ["sst2"]


def test_round_trip_through_toml(tmp_path):
    cfg = load_config(_write(tmp_path, NESTED), {"seeds": [4, 5], "workers": 3})
    cfg.dump(tmp_path / "again.toml")
    assert load_config(tmp_path / "again.toml") == cfg
    assert cfg.executor.workers == 3 and cfg.seeds == [4, 5]


@pytest.mark.parametrize("text,needles", [
    ('psychic = 1\n', ["'psychic'", "[lm]", "c.toml"]),
    ('[lm]\ntemperature = 1\n', ["[lm]", "'temperature'", "calibrate"]),
    ('[lm]\nmode = "sideways"\n', ["lm.mode='sideways'", "direct", "channel"]),
    ('[mdp]\nreward = "sometimes"\n', ["mdp.reward='sometimes'", "marginal"]),
    ('[mdp]\nfeature_set = "psychic"\n', ["mdp.feature_set='psychic'", "active"]),
    ('[agent]\nname = "sarsa"\n', ["agent.name='sarsa'", "offline"]),
    ('[executor]\nkind = "slurm"\n', ["executor.kind='slurm'", "ray"]),
    ('[selectors]\nnames = ["oracle"]\n', ["'oracle'", "greedy", "more)"]),
    ('k = 2\n[mdp]\nmin_len = 3\n', ["mdp.min_len=3", "k=2"]),
])
def test_bad_values_name_the_key_and_the_allowed_ones(tmp_path, text, needles):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    msg = str(info.value)
    assert "\n" not in msg and len(msg.replace(str(tmp_path), "")) < MAX_MESSAGE, msg
    for needle in needles:
        assert needle in msg, msg


def test_a_typo_is_listed_first_among_the_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, '[lm]\nmodle = "bundled"\n'))
    msg = str(info.value)
    assert "'modle'; expected some of mode, model" in msg and len(msg.replace(str(tmp_path), "")) < MAX_MESSAGE, msg


def test_a_config_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b'task = "sst2"\nk = 3\n# caf\xe9\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "c.toml" in msg and "line 3, column 6 (byte 0xe9)" in msg, msg
    assert "position" not in msg and "\n" not in msg and len(msg.replace(str(tmp_path), "")) < MAX_MESSAGE


def test_updated_keeps_other_fields_and_validates():
    cfg = RunConfig().updated(calibrate=True, n_val=8)
    again = cfg.updated(agent="dqn")
    assert again.lm.calibrate and again.splits.n_val == 8 and again.agent.name == "dqn"
    with pytest.raises(ConfigError, match="splits.n_val=-1"):
        cfg.updated(n_val=-1)


def test_cli_options_are_declared_once():
    from rl_select import cli

    assert set(cli.LM) | set(cli.RUN) | set(cli.MDP) | set(cli.AGENT) | set(cli.EXECUTOR) <= set(cli.OPTIONS)
    from rl_select.experiments.config import FLAT_KEYS, TOP_LEVEL

    assert set(cli.OPTIONS) <= set(FLAT_KEYS) | set(TOP_LEVEL)  # every option sets a config value
