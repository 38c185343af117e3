"""Which label-free choice does the probe critic get right ON VALIDATION: how many random prompts, and kNN or not?

For every task and seed of an ablation run with seen (``train_tasks = "self"``) and transfer (``"others"``)
cells and stored probe critics, it draws the ``--max-prompts`` random prompts ``policy_probe`` would draw (the
same generator), scores each on the task's reward-validation queries, and also kNN's per-query prompts on
them. From the label log-probs it takes the critic's features (which read no val label) and, only to judge
the choices, each candidate's val accuracy. It prints the mean val accuracy over tasks and seeds of:

* ``random``: a random prompt (the mean over the first 16 draws); ``best-of-16``: the val-label oracle of
  those 16 (what ``random_search:16`` picks);
* ``knn``; ``global_entropy@N`` (Lu et al. 2022's label-free pick among the first N draws);
* ``probe@N`` (seen / transfer critics) and ``probe+knn@N``: the critic's pick among the first N draws, and
  with kNN's per-query prompts as one more candidate (``policy_probe`` with ``with_knn = true``).

No test row is read, so a setting chosen from its table is chosen on validation. Every candidate's figures go
to ``--out`` (CSV), so the tables can be redone without the LM. One process at a time may run the model.

    python benchmarks/probe_choice.py runs/reference --out docs/benchmarks/probe_choice.csv
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rl_select.experiments.ablate import load_plan
from rl_select.experiments.harness import TaskData, scorer_factory
from rl_select.lm.base import grouped_logprobs
from rl_select.mdp.critic import ProbeCritic, critic_features, per_query_features
from rl_select.mdp.policy import SelectorPolicy
from rl_select.selectors import KNNSelector, SelectionContext

FIELDS = ("task", "seed", "candidate", "val_acc", "pred_entropy", "mean_entropy", "value_seen", "value_transfer")


def measure(run_dir: Path, max_prompts: int, tasks: Sequence[str] | None) -> list[dict[str, object]]:
    """One row per (task, seed, candidate): ``candidate`` is the draw index or ``"knn"``."""
    plan = load_plan(run_dir / "ablate.toml")
    cells: dict[str, dict[str, object]] = {}
    for cell in plan.cells:
        which = cell.values.get("train_tasks")
        if which in ("self", "others") and (tasks is None or cell.cfg.task in tasks):
            cells.setdefault(cell.cfg.task, {})[str(which)] = cell
    factory, knn, out = None, KNNSelector(), []
    units = [(t, s) for t, c in cells.items() if len(c) == 2 for s in plan.seeds]
    for task, seed in tqdm(units, desc="task x seed", unit="unit"):
        seen, transfer = cells[task]["self"], cells[task]["others"]
        critics = [SelectorPolicy.load(run_dir / "policies" / f"{c.id}-s{seed}.safetensors").critic
                   for c in (seen, transfer)]
        if any(c is None for c in critics):
            raise SystemExit(f"{task} seed {seed}: a policy in {run_dir}/policies has no probe critic; expected "
                             "a run with agent.probe_critic = true")
        cfg = seen.cfg
        factory = factory or scorer_factory(cfg)
        data = TaskData.load(cfg)
        scorer, splits = factory(data.spec), data.splits(cfg, seed)
        labels = list(data.spec.labels)
        gold = np.array([labels.index(e.label) for e in splits.val])
        rng = np.random.default_rng(seed)  # the generator the harness hands policy_probe
        ctx = SelectionContext(pool=splits.pool, val=splits.val, k=cfg.k, scorer=scorer, rng=rng)

        head = {"task": task, "seed": seed}
        for i in range(max_prompts):
            demos = [splits.pool[int(j)] for j in rng.permutation(len(splits.pool))[: cfg.k]]
            lp = np.asarray(scorer.logprobs(demos=demos, queries=splits.val), dtype=np.float64)
            out.append(_row(head, i, lp, gold, critic_features(lp, [d.label for d in demos], labels), critics))
        lists = knn.select_for(ctx, splits.val)
        lp = grouped_logprobs(scorer, lists, splits.val)
        feats = per_query_features(lp, [[d.label for d in x] for x in lists], labels)
        out.append(_row(head, "knn", lp, gold, feats, critics))
    return out


def _row(head: dict[str, object], candidate: object, lp: np.ndarray, gold: np.ndarray, feats: np.ndarray,
         critics: Sequence[ProbeCritic]) -> dict[str, object]:
    values = [float(c.score(feats)[0]) for c in critics]
    return {**head, "candidate": candidate, "val_acc": float(np.mean(lp.argmax(axis=1) == gold)),
            "pred_entropy": float(feats[0]), "mean_entropy": float(feats[1]), "value_seen": values[0],
            "value_transfer": values[1]}


def report(rows: Sequence[dict[str, object]], sizes: Sequence[int]) -> str:
    """The Markdown table of mean val accuracy (%) per choice, per task and on average."""
    by: dict[tuple[str, int], list[dict[str, object]]] = {}
    for r in rows:
        by.setdefault((str(r["task"]), int(r["seed"])), []).append(r)  # type: ignore[call-overload]
    tasks = list(dict.fromkeys(t for t, _ in by))
    choices: dict[str, dict[str, list[float]]] = {}

    def put(name: str, task: str, acc: float) -> None:
        choices.setdefault(name, {}).setdefault(task, []).append(100.0 * acc)

    for (task, _), rs in by.items():
        draws = [r for r in rs if r["candidate"] != "knn"]
        knn = next(r for r in rs if r["candidate"] == "knn")
        put("random (mean of 16 draws)", task, float(np.mean([r["val_acc"] for r in draws[:16]])))
        put("best-of-16 (val labels)", task, max(float(r["val_acc"]) for r in draws[:16]))  # type: ignore[arg-type]
        put("knn", task, float(knn["val_acc"]))  # type: ignore[arg-type]
        for n in sizes:
            first = draws[:n]
            ge = max(first, key=lambda r: (r["pred_entropy"], r["mean_entropy"]))
            put(f"global_entropy@{n}", task, float(ge["val_acc"]))  # type: ignore[arg-type]
            for which in ("seen", "transfer"):
                key = f"value_{which}"
                best = max(first, key=lambda r: r[key])  # ties: the first drawn, as policy_probe
                put(f"probe@{n} ({which})", task, float(best["val_acc"]))  # type: ignore[arg-type]
                pick = knn if knn[key] > best[key] else best  # type: ignore[operator]
                put(f"probe+knn@{n} ({which})", task, float(pick["val_acc"]))  # type: ignore[arg-type]
    lines = ["| choice | " + " | ".join(tasks) + " | average |", "|---|" + "---|" * (len(tasks) + 1)]
    for name, per in choices.items():
        means = [float(np.mean(per[t])) for t in tasks]
        lines.append(f"| {name} | " + " | ".join(f"{m:.1f}" for m in means) + f" | {np.mean(means):.1f} |")
    return "\n".join(lines)


def read_csv(path: Path) -> list[dict[str, object]]:
    """The rows of a ``--out`` CSV; one-line SystemExit for a missing file, column or number."""
    try:
        with path.open() as f:
            reader = csv.DictReader(f)
            missing = [k for k in FIELDS if k not in (reader.fieldnames or [])]
            if missing:
                raise SystemExit(f"{path}: columns {missing} missing; expected {list(FIELDS)}")
            return [{**r, "seed": int(r["seed"]), **{k: float(r[k]) for k in FIELDS[3:]}} for r in reader]
    except OSError as exc:
        raise SystemExit(f"{path}: cannot read ({exc.strerror}); expected a CSV written by --out") from None
    except ValueError as exc:
        raise SystemExit(f"{path}: {exc}; expected numbers in {list(FIELDS[3:])} and an integer seed") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="an ablation run folder with seen and transfer policies (critics)")
    ap.add_argument("--max-prompts", type=int, default=32, help="random prompts drawn per task and seed")
    ap.add_argument("--sizes", default="8,16,32", help="the n_prompts choices compared (each <= --max-prompts)")
    ap.add_argument("--tasks", default=None, help="only these tasks (comma-separated)")
    ap.add_argument("--out", type=Path, default=None, help="write every candidate's figures to this CSV")
    ap.add_argument("--from-csv", type=Path, default=None, help="redo the table from such a CSV (no LM)")
    args = ap.parse_args()
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        raise SystemExit(f"--sizes {args.sizes!r}; expected comma-separated integers, e.g. 8,16,32") from None
    if any(not 1 <= n <= args.max_prompts for n in sizes):
        raise SystemExit(f"--sizes {args.sizes!r}; expected each between 1 and --max-prompts ({args.max_prompts})")
    if args.from_csv is not None:
        rows: list[dict[str, object]] = read_csv(args.from_csv)
    else:
        rows = measure(args.run_dir, args.max_prompts, args.tasks.split(",") if args.tasks else None)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
    print(report(rows, sizes))


if __name__ == "__main__":
    main()
