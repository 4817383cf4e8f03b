#!/usr/bin/env bash
# Evaluates a model on the Omniglot test split (Vinyals) with the paper's four protocols,
# 1000 episodes each, and prints a Markdown table.
#   scripts/omniglot-results.sh [MODEL_DIR] [EPISODES]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-data/omniglot-conv4}
episodes=${2:-1000}
cargo build --release --quiet
echo "| Omniglot test, $episodes episodes, 15 queries/class | accuracy (%) | 95% CI |"
echo "|---|---|---|"
for ws in "5 1" "5 5" "20 1" "20 5"; do
    set -- $ws
    json=$(./target/release/protonet eval --model "$model" --dataset omniglot --split test --way "$1" --shot "$2" --query 15 --episodes "$episodes" --json)
    python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(f\"| {r['way']}-way {r['shot']}-shot | {100*r['accuracy']:.2f} | ± {100*r['ci95']:.2f} |\")" "$json"
done
