"""The README a newcomer meets: short, in order, its main-job and test commands, its table block, its links."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from rl_select.experiments.config import load_config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAIN_COMMAND = "bash scripts/setup.sh && .venv/bin/rl-select baselines --config configs/main.toml"


def test_readme_is_short_and_keeps_the_main_and_test_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert MAIN_COMMAND in text
    assert ".venv/bin/python -m pytest -q" in text


def test_readme_main_table_block_is_the_main_jobs_output():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- MAIN-TABLE -->(.*?)<!-- /MAIN-TABLE -->", text, re.S)
    assert block, "the README's main-table block is missing"
    body = block.group(1)
    assert "rl-select baselines --config configs/main.toml" in body
    cells = [re.split(r"[|│]", ln)[1].strip() for ln in body.splitlines() if ln.lstrip().startswith(("|", "│"))]
    rows = [c for c in cells if c and c != "selector" and not set(c) <= set("-:")]
    if cells:  # a pasted table (the printed box or `rl-select report --markdown`): the config's selectors, in order
        assert rows == load_config(ROOT / "configs" / "main.toml").selectors.names, rows


def _relative_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [ln.split("#")[0] for ln in links if not re.match(r"[a-z]+:", ln) and not ln.startswith("#")]


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_point_at_files_in_the_repository(doc):
    missing = [ln for ln in _relative_links(doc) if ln and not (doc.parent / ln).exists()]
    assert missing == [], f"{doc.name}: {missing}"


# --- the quickstart for your own data, run as written, with test doubles --------------------------------


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = min((i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1)) if i >= 0), default=-1)
    return text[start:] if end < 0 else text[start:end]


def _fenced(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def _commands(block: str) -> list[list[str]]:
    """The ``rl-select`` commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith(".venv/bin/rl-select "):
            out.append(shlex.split(line)[1:])
    return out


@pytest.fixture
def doubles(monkeypatch, tmp_path):
    from rl_select import embeddings
    from rl_select.experiments import harness
    from rl_select.selectors import knn
    from rl_select.testing import CachedToyScorer

    monkeypatch.setattr(harness, "build_scorer", lambda cfg, spec: CachedToyScorer(spec, calibrate=cfg.lm.calibrate))
    monkeypatch.setattr(embeddings, "MiniLMEmbedder", lambda *a, **kw: embeddings.HashingEmbedder(64))
    monkeypatch.setattr(knn, "MiniLMEmbedder", lambda *a, **kw: embeddings.HashingEmbedder(64))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RL_SELECT_CACHE", str(tmp_path / "cache.sqlite"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_own_data_quickstart_runs_as_written(doubles):
    from typer.testing import CliRunner

    from rl_select.cli import app

    section = _section(README.read_text(encoding="utf-8"), "### 2. Demonstrations for your own data")
    (toml,) = _fenced(section, "toml")
    (doubles / "my_task.toml").write_text(toml)
    python = _fenced(section, "python")[0]
    query = re.search(r'pf\.render\("([^"]+)"\)', python).group(1)
    data = doubles / "my_data"
    data.mkdir()
    train = [{"text": f"{w} number {i}", "label": lab} for i in range(80)
             for w, lab in (("crash on upload", "bug"), ("how do I export", "question"))]
    test = [{"text": query, "label": "bug"}]
    test += [{"text": f"how do I sign in {i}", "label": "question"} for i in range(5)]
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (block,) = _fenced(section, "bash")
    commands = _commands(block)
    assert [c[0] for c in commands] == ["select", "prompt", "evaluate"]
    for args in commands:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output, result.exception)
    assert len((doubles / "prompts.jsonl").read_text().splitlines()) == len(test)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(python, "README.md", "exec"), {})
    assert query in printed.getvalue() and "('bug', 'question')" in printed.getvalue()


@pytest.mark.parametrize("heading", ["### 1. The main job", "### 3. Train your own policy", "### 4. An ablation"])
def test_readme_quickstart_commands_use_real_options(heading):
    """Every option the quickstart shows exists on its command (``--help`` after them: parsed, nothing run)."""
    from typer.testing import CliRunner

    from rl_select.cli import app

    section = _section(README.read_text(encoding="utf-8"), heading)
    blocks = [block.replace("bash scripts/setup.sh && ", "") for block in _fenced(section, "bash")]
    commands = [c for block in blocks for c in _commands(block)]
    assert commands
    for args in commands:
        result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (args, result.output)
