#!/usr/bin/env bash
# Keep the reference experiment's run folders in git between sittings (runs/ itself is ignored).
#   bash scripts/runs.sh save      # runs/{reference,ablate_*} + rollout stores -> docs/runs/ (stores gzipped)
#   bash scripts/runs.sh restore   # docs/runs/ -> runs/, so `rl-select ablate ... --run-dir runs/...` continues
# The score cache (~/.cache/rl_select) is not kept: a restored folder skips its finished rows and its
# stores' episodes; only new rows pay for LM work.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  save)
    mkdir -p docs/runs/rollouts
    for d in runs/reference runs/ablate_*; do
      [ -d "$d" ] || continue
      rm -rf "docs/runs/$(basename "$d")"
      mkdir -p "docs/runs/$(basename "$d")"
      cp -r "$d"/. "docs/runs/$(basename "$d")/"
    done
    for s in runs/rollouts/*.jsonl; do
      [ -f "$s" ] || continue
      gzip -9 -n -c "$s" > "docs/runs/rollouts/$(basename "$s").gz"
      cp "$s.meta.json" docs/runs/rollouts/
    done
    du -sh docs/runs ;;
  restore)
    mkdir -p runs/rollouts
    for d in docs/runs/*/; do
      name=$(basename "$d")
      [ "$name" = rollouts ] && continue
      mkdir -p "runs/$name" && cp -r "$d". "runs/$name/"
    done
    for s in docs/runs/rollouts/*.jsonl.gz; do
      [ -f "$s" ] || continue
      out="runs/rollouts/$(basename "$s" .gz)"
      gunzip -c "$s" > "$out"
      cp "docs/runs/rollouts/$(basename "$out").meta.json" runs/rollouts/
    done
    ls runs ;;
  *) echo "usage: bash scripts/runs.sh save|restore" >&2; exit 2 ;;
esac
