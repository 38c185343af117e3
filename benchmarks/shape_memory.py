"""Resident memory over forwards of many distinct widths, with and without the scorer's shape buckets.

    python benchmarks/shape_memory.py --forwards 60            # every forward its own random width
    python benchmarks/shape_memory.py --forwards 60 --bucket   # widths rounded up by rl_select.lm.hf.shape_bucket

Each forward runs the bundled model's body on random ids of batch 1-4 and width 200-1000; the RSS printed every
20 forwards shows whether the process grows with the number of distinct shapes (CPU kernel buffers kept per
shape) or levels off. Run the two variants in separate processes (RSS never shrinks back).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from rl_select.experiments.bench_scorer import cpu_name, rss_mb
from rl_select.lm.hf import cpu_has_fast_bf16, load_causal_lm, shape_bucket


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forwards", type=int, default=60)
    ap.add_argument("--bucket", action="store_true", help="pad each width up to its shape bucket")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.forwards < 1:
        raise SystemExit(f"--forwards {args.forwards}; expected an integer >= 1")
    model, _ = load_causal_lm("bundled")
    print(f"CPU: {cpu_name()}; native bf16: {'yes' if cpu_has_fast_bf16() else 'no'}; {model.dtype}; "
          f"RSS after loading {rss_mb():.0f} MB")
    rng = np.random.default_rng(args.seed)
    with torch.inference_mode():
        for i in range(args.forwards):
            width = int(rng.integers(200, 1000))
            width = shape_bucket(width) if args.bucket else width
            model.base_model(input_ids=torch.randint(100, 40000, (int(rng.integers(1, 5)), width)))
            if (i + 1) % 20 == 0:
                print(f"{i + 1} forwards ({'bucketed' if args.bucket else 'raw'} widths): RSS {rss_mb():.0f} MB",
                      flush=True)


if __name__ == "__main__":
    main()
