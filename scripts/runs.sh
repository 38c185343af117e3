#!/usr/bin/env bash
# Keep the reference experiment's run summaries in git between sittings (runs/ itself is ignored).
#   bash scripts/runs.sh save      # runs/{reference,ablate_*} -> docs/runs/: results, configs, logs, plots;
#                                  # no binaries (policies, rollout stores): those are rebuilt from the configs
#   bash scripts/runs.sh restore   # docs/runs/ -> runs/, so `rl-select ablate ... --run-dir runs/...` continues
# A restored folder skips its finished rows; a row that needs a policy or a rollout store that is not there
# rebuilds it (the rollout collection pays LM work again; the score cache, if kept, makes that cheap).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  save)
    for d in runs/reference runs/ablate_*; do
      [ -d "$d" ] || continue
      rm -rf "docs/runs/$(basename "$d")"
      mkdir -p "docs/runs/$(basename "$d")"
      cp -r "$d"/. "docs/runs/$(basename "$d")/"
      find "docs/runs/$(basename "$d")" \( -name '*.safetensors' -o -name '*.jsonl' -o -name '*.gz' \) -delete
    done
    du -sh docs/runs ;;
  restore)
    mkdir -p runs/rollouts
    for d in docs/runs/*/; do
      name=$(basename "$d")
      [ "$name" = rollouts ] && continue
      mkdir -p "runs/$name" && cp -r "$d". "runs/$name/"
    done
    ls runs ;;
  *) echo "usage: bash scripts/runs.sh save|restore" >&2; exit 2 ;;
esac
