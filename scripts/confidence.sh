#!/usr/bin/env bash
# How well `protonet predict`'s confidence ranks right answers above wrong ones, on the
# real coin photos: for each currency, the first 4 photos (by file name) of every
# denomination are the support set and the others the queries, classified by the shipped
# coin model (data/coins-efficientnet-lite0). Prints, per currency, the accuracy, the mean
# confidence and the accuracy among the 80% most confident answers.
#   scripts/confidence.sh [model dir]      (PROTONET_DATA: the folder holding coins/)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-data/coins-efficientnet-lite0}
coins="${PROTONET_DATA:-../shared/data}/coins"
[ -d "$coins" ] || { echo "no coin photos at $coins (set PROTONET_DATA)" >&2; exit 1; }
cargo build --release -p protonet-cli --quiet
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| currency | denominations | queries | accuracy, mean confidence; accuracy among the 80% most confident |"
echo "|---|---|---|---|"
for cur in "$coins"/*/; do
    name=$(basename "$cur")
    rm -rf "$tmp/s" "$tmp/q"
    for den in "$cur"*/; do
        d=$(basename "$den")
        mkdir -p "$tmp/s/$d" "$tmp/q/$d"
        i=0
        while IFS= read -r f; do
            if [ $i -lt 4 ]; then ln -s "$f" "$tmp/s/$d/"; else ln -s "$f" "$tmp/q/$d/"; fi
            i=$((i + 1))
        done < <(find "$(cd "$den" && pwd)" -maxdepth 1 -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) | sort)
    done
    summary=$(./target/release/protonet predict --model "$model" --support "$tmp/s" --query "$tmp/q" 2>&1 >/dev/null | sed -n 's/^accuracy //p')
    queries=$(find "$tmp/q" -type l | wc -l)
    echo "| $name | $(ls "$tmp/s" | wc -l) | $queries | $summary |"
done
