"""Peak memory of a full ``rl-select baselines`` run on long inputs (issue 21: <= 2 GB).

Builds a task of long reviews from the shared SST-2 copy (sentences of one label joined until a review is at
least ``--chars`` characters; 700 gives about 760 on average, as long as the movie reviews users bring), then runs
``rl-select baselines`` on it with every selector that needs no training run of its own (the policy ones read
the shipped pretrained policies) in a child process, and prints the child's peak resident memory, its wall
time and the table. Writes the same as JSON with ``--json``.

    python benchmarks/long_inputs.py --chars 700 --json docs/bench_long_inputs.json   # ~40 min on 2 cores
    python benchmarks/long_inputs.py --n-test 20 --n-val 10 --selectors zero_shot,knn   # a quick look
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rl_select.data import default_data_root, load_task  # noqa: E402
from rl_select.experiments.bench_scorer import cpu_name  # noqa: E402
from rl_select.lm.hf import cpu_has_fast_bf16  # noqa: E402
from rl_select.tasks import resolve_task  # noqa: E402

SELECTORS = ("zero_shot,random,knn,knn_majority,knn_balanced,knn_mmr,max_entropy,global_entropy,random_search,"
             "greedy,policy_pq,policy,policy_search,policy_rank,policy_probe,policy_probe:knn")
TASK_TOML = '''name = "long_reviews"
labels = ["negative", "positive"]
template = "Review: {text}\\nSentiment: {label}"

[verbalizers]
negative = "bad"
positive = "good"
'''


def long_rows(rows, n: int, chars: int, rng: np.random.Generator) -> list[dict]:
    """``n`` reviews of at least ``chars`` characters, each the sentences of one label joined in random order."""
    by_label: dict[str, list[str]] = {}
    for ex in rows:
        by_label.setdefault(ex.label, []).append(ex.text)
    out = []
    labels = sorted(by_label)
    for i in range(n):
        label = labels[i % len(labels)]
        pool = by_label[label]
        parts: list[str] = []
        while sum(len(p) + 1 for p in parts) < chars:
            parts.append(pool[int(rng.integers(len(pool)))])
        out.append({"text": " ".join(parts), "label": label})
    return out


def write_task(folder: Path, *, n_train: int, n_test: int, chars: int, seed: int) -> dict:
    """The long-review task folder (train.jsonl, test.jsonl, task.toml); returns its sizes."""
    root = default_data_root()
    if root is None:
        raise SystemExit("needs ../shared/data (or $RL_SELECT_DATA) with the sst2 copy")
    train, test = load_task(resolve_task("sst2"))
    rng = np.random.default_rng(seed)
    sets = {"train": long_rows(train, n_train, chars, rng), "test": long_rows(test, n_test, chars, rng)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in sets.items():
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    (folder / "task.toml").write_text(TASK_TOML, encoding="utf-8")
    lengths = [len(r["text"]) for rows in sets.values() for r in rows]
    return {"train_rows": n_train, "test_rows": n_test, "mean_chars": float(np.mean(lengths))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chars", type=int, default=760)
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-test", type=int, default=320)
    ap.add_argument("--n-pool", type=int, default=100)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--selectors", default=SELECTORS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "long_reviews"
        sizes = write_task(folder, n_train=args.n_train, n_test=args.n_test, chars=args.chars, seed=0)
        print(f"task: {sizes['train_rows']} train, {sizes['test_rows']} test rows, "
              f"{sizes['mean_chars']:.0f} characters on average", flush=True)
        cmd = [str(ROOT / ".venv/bin/rl-select"), "baselines", "--task", str(folder / "task.toml"),
               "--data", str(folder), "--selectors", args.selectors, "--n-pool", str(args.n_pool),
               "--n-val", str(args.n_val), "--n-test", str(args.n_test), "--seeds", args.seeds, "--calibrate",
               "--cache", "none", "--out", str(Path(tmp) / "runs")]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, text=True, capture_output=True)
        seconds = time.perf_counter() - t0
        print(proc.stdout[-6000:])
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(proc.returncode)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of `rl-select baselines` {peak:.0f} MB (target <= 2,048), wall {seconds / 60:.1f} min; "
          f"CPU {cpu_name()}, native bf16: {'yes' if cpu_has_fast_bf16() else 'no'}")
    if args.json:
        args.json.write_text(json.dumps({**sizes, "selectors": args.selectors.split(","), "n_pool": args.n_pool,
                                         "n_val": args.n_val, "seeds": args.seeds, "peak_rss_mb": peak,
                                         "seconds": seconds, "cpu": cpu_name(),
                                         "native_bf16": cpu_has_fast_bf16(),
                                         "table": proc.stdout[-6000:]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
