#!/usr/bin/env bash
# The MDP benchmark (issue 3): collect rollouts, train the offline CQL-DQN, the masked DQN and tabular Q
# agents on SST-2 with the bundled SmolLM2, then evaluate their policies beside every baseline over 3
# seeds on held-out test rows. Each step prints its wall time and LM spend; results land in runs/.
# About 40 minutes on a 2-core CPU (a rerun is mostly cache hits).
set -euo pipefail
cd "$(dirname "$0")/.."
RS=".venv/bin/rl-select"
CFG=configs/sst2_mdp.toml
OUT=${OUT:-runs/mdp-sst2}
mkdir -p "$OUT"
step() { echo "== $*"; local t0=$SECONDS; "$@"; echo "   wall $((SECONDS - t0)) s"; }
step $RS collect --config $CFG --out "$OUT"
step $RS train --config $CFG --agent offline --out "$OUT"
step $RS train --config $CFG --agent dqn --train-steps "${DQN_STEPS:-300}" --out "$OUT"
step $RS train --config $CFG --agent tabular --n-candidates 8 --episodes "${TABULAR_EPISODES:-60}" --out "$OUT"
OFF=$(ls -d "$OUT"/*-train-offline-sst2 | tail -1)/policy.safetensors
DQN=$(ls -d "$OUT"/*-train-dqn-sst2 | tail -1)/policy.safetensors
step $RS baselines --config $CFG --policy "$OFF,$DQN" --out "$OUT"
$RS report "$(ls -d "$OUT"/*-baselines-sst2 | tail -1)" --markdown
