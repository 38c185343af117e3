"""Offline prompt construction: ``select`` (a policy or any baseline -> a prompt file to ship) and ``prompt``
(the prompt for each query, from a prompt file or a policy)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from rl_select.cli.common import (
    LM,
    ForceOpt,
    PromptFileOpt,
    _quiet_libraries,
    config_command,
    console,
    out,
)
from rl_select.errors import ConfigError

PolicyPathOpt = Annotated[str | None, typer.Option(
    "--policy", help="A trained policy (.safetensors), or a shipped one: 'pretrained' (per-query), "
                     "'pretrained-critic' (fixed-prompt, with its probe critic).")]
SeedOpt = Annotated[int | None, typer.Option(
    help="Seed of the pool / val split and of the selector (default: a policy's first training seed, else 0).")]


def _selector_names(keep: Callable[[Any], bool]) -> list[str]:
    """The registered selectors whose declaration (``tags``) passes ``keep``, in registry order."""
    from rl_select.selectors import SELECTORS

    return [name for name, cls in SELECTORS.items() if keep(cls.tags)]


SelectorOpt = Annotated[str | None, typer.Option(
    "--selector", help=f"A baseline selector ({', '.join(_selector_names(lambda t: not t.trained))}); its "
                       "settings from --arg or the config's selectors.args.NAME table.")]
ArgOpt = Annotated[list[str] | None, typer.Option(
    "--arg", metavar="KEY=VALUE", help="A selector setting (a JSON value, else text), e.g. --arg n_prompts=16 or "
                                       "--arg embedder=hashing; repeatable.")]
PoolOpt = Annotated[str | None, typer.Option(
    "--pool", help="The candidate pool: a JSONL/CSV file of labelled examples (default: --n-pool seeded rows of "
                   "train).")]
OutFileOpt = Annotated[Path | None, typer.Option(
    "--out-file", help="The prompt file to write (.json; the prefix goes beside it as .txt). Default: "
                       "<out>/prompts/<time>-<task>-<selector>.json.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing prompt file.")]
ValidateOpt = Annotated[bool, typer.Option(
    "--validate/--no-validate", help="Measure the choice's accuracy on the val rows (LM calls; "
                                     f"{', '.join(_selector_names(lambda t: not t.lm))} need no LM without it).")]


def _selector_args(pairs: list[str] | None) -> dict[str, Any]:
    """``--arg KEY=VALUE`` pairs as selector keyword arguments (JSON values, else text)."""
    args: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--arg {pair!r}; expected KEY=VALUE, e.g. --arg n_prompts=16")
        try:
            args[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            args[key.strip()] = text
    return args


def _select_prompt(cfg, explicit: frozenset[str], *, policy: str | None, selector: str | None,
                   arg: list[str] | None, pool: str | None, seed: int | None, force: bool, validate: bool,
                   out_file: Path | None = None, overwrite: bool = False, write: bool = True):
    """Select once with a policy or a baseline; return ``(prompt file, inputs, scorer, path, seed, policy)``.

    A policy rebuilds the task, scorer, data folder and split sizes it was trained with (refused, unless
    --force, where an option asks for others); bad input is refused before the model loads.
    """
    from rl_select.experiments.prompt_runs import default_prompt_path, selection_inputs
    from rl_select.prompt_file import check_writable, make_baseline, select_prompt
    from rl_select.selectors import selector_tags

    if (policy is None) == (selector is None):
        raise ConfigError("give exactly one of --policy FILE or --selector NAME")
    if write and out_file is not None:
        check_writable(out_file, overwrite=overwrite)
    from rl_select.lm.cache import check_cache

    check_cache(cfg.cache)  # before the model loads
    _quiet_libraries()
    pol = None
    from rl_select.mdp.artifacts import peek_kind
    from rl_select.mdp.per_query_policy import KIND as PER_QUERY_KIND
    from rl_select.mdp.per_query_policy import resolve_policy_path

    if policy is not None and peek_kind(resolve_policy_path(policy)) == PER_QUERY_KIND:
        return _select_per_query(cfg, explicit, policy=policy, seed=seed, force=force, validate=validate,
                                 out_file=out_file, overwrite=overwrite, write=write)
    if policy is not None:
        from rl_select.experiments.reproduce import policy_settings
        from rl_select.mdp.policy import SelectorPolicy

        pol = SelectorPolicy.load(policy)
        if seed is None:
            seed = int((pol.training.get("config", {}).get("seeds") or [0])[0])
        cfg, _ = policy_settings([pol], cfg.updated(seeds=[seed], n_test=1), explicit=explicit, force=force)
        k, name, args, chooser = (cfg.k if "k" in explicit else pol.k), f"policy:{pol.agent}", {"path": policy}, pol
    else:
        seed = 0 if seed is None else seed
        cfg = cfg.updated(seeds=[seed], n_test=1)
        name = selector
        args = {**cfg.selectors.args.get(selector, {}), **_selector_args(arg)}
        chooser, k = make_baseline(selector, args), cfg.k
    from rl_select.errors import SelectionError

    if name.split(":")[0] != "zero_shot" and k < 1:
        raise SelectionError(f"k={k} for selector {name!r}; expected k >= 1 (no demonstrations: the zero_shot "
                             "selector)")
    inputs = selection_inputs(cfg, seed, pool_file=pool)
    if name.split(":")[0] != "zero_shot" and k > len(inputs.pool):
        raise SelectionError(f"k={k} is larger than the pool of {len(inputs.pool)} candidates; expected k <= "
                             f"{len(inputs.pool)}")
    path = None
    if write:
        path = out_file or default_prompt_path(cfg, inputs.spec.name, name)
        check_writable(path, overwrite=overwrite)
    needs_lm = pol is not None or (validate and bool(inputs.val)) or selector_tags(name).lm
    scorer = None
    if needs_lm:
        from rl_select.experiments.harness import build_scorer

        with console.status(escape(f"loading model {cfg.lm.model!r} ...")):
            scorer = build_scorer(cfg, inputs.spec)
    pf = select_prompt(chooser, task=inputs.spec, pool=inputs.pool, val=inputs.val, k=k, scorer=scorer, seed=seed,
                       measure=validate, name=name, args=args, source=inputs.source, scorer_spec=cfg.lm, force=force)
    if path is not None:
        pf.save(path, overwrite=overwrite)
    return pf, inputs, scorer, path, seed, pol


def _select_per_query(cfg, explicit: frozenset[str], *, policy: str, seed: int | None, force: bool, validate: bool,
                      out_file: Path | None,
                      overwrite: bool, write: bool):
    """A per-query policy's choices for every test row of the data, as a per-query prompt file (see
    :func:`~rl_select.prompt_file.select_per_query_prompt`); the task and data are the user's (the policy is
    task-agnostic), the scorer the policy's training one unless --force."""
    from rl_select.experiments.harness import build_scorer
    from rl_select.experiments.prompt_runs import default_prompt_path, selection_inputs
    from rl_select.mdp.per_query_policy import PerQueryPolicy
    from rl_select.mdp.shipped import per_query_for_pool
    from rl_select.prompt_file import check_writable, select_per_query_prompt

    pol = PerQueryPolicy.load(policy)
    seed = 0 if seed is None else seed
    cfg = cfg.updated(seeds=[seed], n_test=1)
    if pol.scorer_spec is not None:  # the training scorer's settings, where the user set none (a set one is checked)
        trained = pol.scorer_spec.to_dict()
        cfg = cfg.updated(lm={key: trained[key] for key in ("backend", "model", "mode", "length_norm", "calibrate")
                              if key in trained and key not in explicit})
    inputs = selection_inputs(cfg, seed)
    chosen = str(per_query_for_pool(policy, len(inputs.pool)))
    if chosen != str(policy):  # "pretrained" on a large pool: the large-pool policy
        policy, pol = chosen, PerQueryPolicy.load(chosen)
    if pol.m > len(inputs.pool):
        raise ConfigError(f"policy {policy!r} takes M={pol.m} neighbours per query but the pool has "
                          f"{len(inputs.pool)}; expected --n-pool >= {pol.m}")
    path = None
    if write:
        path = out_file or default_prompt_path(cfg, inputs.spec.name, "policy_pq")
        check_writable(path, overwrite=overwrite)
    with console.status(escape(f"loading model {cfg.lm.model!r} ...")):
        scorer = build_scorer(cfg, inputs.spec)
    queries = list(inputs.data.test) if inputs.data is not None else []
    pf = select_per_query_prompt(pol, task=inputs.spec, pool=inputs.pool, queries=queries, scorer=scorer,
                                 val=inputs.val if validate else (), seed=seed, measure=validate,
                                 args={"path": policy}, source={**inputs.source, "queries": "test", "n_queries":
                                                                len(queries)}, scorer_spec=cfg.lm, force=force)
    if path is not None:
        pf.save(path, overwrite=overwrite)
    return pf, inputs, scorer, path, seed, None


@config_command("select", ("task", "data", "k", "n_pool", "n_val", "cache", "out"), LM)
def select_cmd(cfg, explicit: frozenset[str], policy: PolicyPathOpt = None, selector: SelectorOpt = None,
               arg: ArgOpt = None, pool: PoolOpt = None, seed: SeedOpt = None, out_file: OutFileOpt = None,
               overwrite: OverwriteOpt = False, validate: ValidateOpt = True, force: ForceOpt = False) -> None:
    """Choose demonstrations once (a policy or any baseline) and write them as a prompt file to ship.

    The prompt file (.json) holds the task spec, the demonstrations in order, the selector and its settings,
    the scorer spec, the val accuracy and the LM calls spent; beside it, the rendered prefix as .txt. knn
    writes its per-query rule instead of one prefix. With --policy, the task and the scorer are the ones the
    policy was trained with; an option that asks for a different one is refused unless --force.
    """
    pf, inputs, scorer, path, seed, pol = _select_prompt(
        cfg, explicit, policy=policy, selector=selector, arg=arg, pool=pool, seed=seed, force=force,
        validate=validate, out_file=out_file, overwrite=overwrite)
    lm = getattr(scorer, "scorer_spec", None)
    if lm is not None:
        out.print(escape(f"scorer: {lm.model} ({lm.backend}, {lm.dtype}, {lm.mode}"
                         f"{', calibrated' if lm.calibrate else ''}{', length-normalised' if lm.length_norm else ''})"
                         f"; task {scorer.spec.name}"))
    where = f"a pool of {len(pf.per_query.pool if pf.per_query else inputs.pool)}"
    if pf.per_query is None:
        demos = list(pf.demos)
        title = f"{len(demos)} demonstrations chosen from {where} (seed {seed})"
    else:
        demos = pf.demos_for([inputs.example])[0] if inputs.example is not None else []
        title = (f"{pf.selector['name']} chooses {pf.k} of {where} per query, by {pf.per_query.embedder!r} "
                 f"embeddings (seed {seed}); these are the example query's")
    table = Table(title=escape(title))
    for col in ("#", "uid", "label", "text"):
        table.add_column(col)
    for i, d in enumerate(demos):
        table.add_row(str(i + 1), escape(d.uid), escape(d.label), escape(d.text[:90]))
    out.print(table)
    spent = pf.lm_calls.get("select", {}).get("queries", 0)
    out.print(f"LM queries spent selecting: {pol.last_selection_info.get('lm_queries') if pol else spent}")
    if pf.val_accuracy is not None:
        out.print(f"val accuracy: {100 * pf.val_accuracy:.1f}% on {pf.n_val} rows "
                  f"({pf.lm_calls.get('validate', {}).get('queries', 0)} LM queries)")
    if inputs.example is not None:
        out.print("prompt (for a query):")
        print(pf.render(inputs.example))
    out.print(escape(f"prompt file: {path} (prefix: {path.with_suffix('.txt')}); use it with "
                     f"`rl-select prompt --prompt-file {path}`"))


def _read_queries(spec, queries: list[str] | None, queries_file: Path | None) -> list[tuple[str, Any]]:
    """The queries from the arguments, a JSONL/CSV file, or standard input: ``(where, example)`` each."""
    from rl_select.errors import DataError
    from rl_select.prompt_file import parse_query, parse_query_lines, read_query_file

    if queries and queries_file is not None:
        raise ConfigError("give queries as arguments or --queries FILE, not both")
    if queries_file is not None:
        return read_query_file(spec, queries_file)
    if queries:
        return [(f"query argument {i}", parse_query(spec, text, where=f"query argument {i}"))
                for i, text in enumerate(queries, start=1)]
    if sys.stdin is None or sys.stdin.isatty():
        raise ConfigError("no queries; expected query texts as arguments, --queries FILE (JSONL/CSV with the task's "
                          "input fields) or lines on standard input")
    got = list(parse_query_lines(spec, sys.stdin, source="standard input"))
    if not got:
        raise DataError("standard input holds no queries; expected one query a line (text, or a JSON object of the "
                        f"input fields {list(spec.input_fields)})")
    return got


@config_command("prompt", ("task", "data", "k", "n_pool", "n_val", "cache"), LM)
def prompt_cmd(
    cfg, explicit: frozenset[str],
    queries: Annotated[list[str] | None, typer.Argument(
        help="Query texts (a JSON object per argument for pair tasks); default: --queries FILE or stdin.")] = None,
    prompt_file: PromptFileOpt = None, policy: PolicyPathOpt = None,
    queries_file: Annotated[Path | None, typer.Option(
        "--queries", help="A JSONL / CSV file of queries (the task's input fields).")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the JSONL here (default stdout).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl (query, prompt, labels, label_words, demos) | text "
                                                      "(each prompt, then a line of dashes).")] = "jsonl",
    seed: SeedOpt = None, force: ForceOpt = False,
) -> None:
    """The prompt for each query, from a prompt file (no LM, no selection) or a policy (selects once)."""
    from rl_select.prompt_file import PromptFile, query_fields

    if (prompt_file is None) == (policy is None):
        raise ConfigError("give exactly one of --prompt-file FILE or --policy FILE")
    if fmt not in ("jsonl", "text"):
        raise ConfigError(f"--format {fmt!r}; expected jsonl or text")
    if output is not None and output.is_dir():
        raise ConfigError(f"--output {str(output)!r} is a folder; expected a file path")
    if prompt_file is not None:
        if explicit:
            raise ConfigError(f"--prompt-file fixes the task and the demonstrations and needs no LM or data; drop "
                              f"{', '.join('--' + k.replace('_', '-') for k in sorted(explicit))}")
        pf = PromptFile.load(prompt_file)
    else:
        pf = _select_prompt(cfg, explicit, policy=policy, selector=None, arg=None, pool=None, seed=seed, force=force,
                            validate=False, write=False)[0]
    items = _read_queries(pf.task, queries, queries_file)
    examples = [ex for _, ex in items]
    lists = pf.demos_for(examples)
    from rl_select.prompts import render_prompt

    lines = []
    for ex, demos in zip(examples, lists):
        prompt = render_prompt(pf.task, demos, ex)
        if fmt == "text":
            lines.append(f"{prompt}\n{'-' * 40}")
        else:
            lines.append(json.dumps({"query": query_fields(pf.task, ex), "prompt": prompt, "labels": list(pf.labels),
                                     "label_words": list(pf.label_words), "demos": [d.uid for d in demos]},
                                    ensure_ascii=False))
    text = "\n".join(lines) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        console.print(escape(f"{len(lines)} prompts written to {output}"))
