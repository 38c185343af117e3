"""The package's public API: every exported name resolves to the object its module defines, lazily."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import rl_select


@pytest.mark.parametrize("name", [n for n in rl_select.__all__ if n != "__version__"])
def test_every_public_name_is_its_modules_object(name):
    module = importlib.import_module(rl_select._API[name])
    assert getattr(rl_select, name) is getattr(module, name)
    assert name in dir(rl_select)


def test_all_lists_exactly_the_api():
    assert sorted(rl_select.__all__) == sorted(["__version__", *rl_select._API])


def test_import_is_light_and_unknown_names_fail():
    code = "import sys, rl_select; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rl_select.nope  # noqa: B018


def test_the_api_selects_with_a_test_double():
    from rl_select.testing import CachedToyScorer, toy_examples, toy_task

    spec = toy_task(2)
    data = toy_examples(spec, 30)
    ctx = rl_select.SelectionContext(pool=data[:20], val=data[20:], k=2, scorer=CachedToyScorer(spec),
                                     rng=__import__("numpy").random.default_rng(0))
    demos = rl_select.make_selector("random").select(ctx)
    assert len(demos) == 2 and all(isinstance(d, rl_select.Example) for d in demos)
