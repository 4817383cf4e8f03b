#!/usr/bin/env bash
# `protonet predict` on Omniglot characters the model never saw: support = 5 drawings of
# each of 20 characters of one alphabet (test background), query = their 15 other
# drawings, and 20 further characters of the same alphabet as "unknown" queries. Prints
# the share of correct answers without rejection, and with --reject (calibrated at the
# 0.95 quantile) the share of known queries accepted and unknown queries rejected, and
# draws the PCA picture of the known queries and prototypes.
#   scripts/predict-demo.sh [ALPHABET] [MODEL_DIR] [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
alphabet=${1:-Glagolitic}
model=${2:-data/omniglot-conv4}
work=${3:-$(mktemp -d)}
src="${PROTONET_DATA:-../shared/data}/omniglot/images_evaluation/$alphabet"
[ -d "$src" ] || { echo "no Omniglot alphabet at $src (set PROTONET_DATA)" >&2; exit 1; }
cargo build --release --quiet
rm -rf "$work/support" "$work/query" "$work/unknown"
i=0
for c in $(ls "$src" | sort | head -40); do
    files=$(ls "$src/$c" | sort)
    if [ $i -lt 20 ]; then
        mkdir -p "$work/support/$c" "$work/query/$c"
        for f in $(echo "$files" | head -5); do cp "$src/$c/$f" "$work/support/$c/"; done
        for f in $(echo "$files" | tail -n +6); do cp "$src/$c/$f" "$work/query/$c/"; done
    else
        mkdir -p "$work/unknown/$c"
        cp "$src/$c"/*.png "$work/unknown/$c/"
    fi
    i=$((i + 1))
done
bin=./target/release/protonet
# A line is correct when the predicted class is the query's folder name.
score='{ n = split($1, p, "/"); if (p[n-1] == $2) ok++; if ($2 == "unknown") unk++ } END { printf "%d of %d (%.1f%%)", ok, NR, 100 * ok / NR; if (mode == "reject") printf ", %d answered unknown", unk; print "" }'
echo "known characters, no rejection:  $($bin predict --model "$model" --support "$work/support" --query "$work/query" 2>/dev/null | awk -F'\t' "$score")"
$bin predict --model "$model" --support "$work/support" --query "$work/query" --reject --save "$work/classifier" > "$work/known.txt"
echo "known characters, --reject:      $(awk -F'\t' -v mode=reject "$score" "$work/known.txt")"
echo "unknown characters, --reject:    $($bin predict --model "$work/classifier" --query "$work/unknown" --reject 2>/dev/null | awk -F'\t' '$2 == "unknown" { r++ } END { printf "%d of %d rejected (%.1f%%)\n", r, NR, 100 * r / NR }')"
$bin plot-embeddings --model "$model" --data "$work/query" --shot 5 --out "$work/embeddings.png"
