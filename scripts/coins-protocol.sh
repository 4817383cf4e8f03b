#!/usr/bin/env bash
# The cross-currency protocol on the real coin photos: a Conv-4 trained (with rotation
# augmentation, 48x48 RGB) on the denominations of one currency, with and without
# rendered coins of made-up currencies added to training, then 4-shot episodes on the
# other currency's denominations (never seen in training), 1000 episodes, 4 rotations
# averaged at test time. Prints a Markdown table.
#   scripts/coins-protocol.sh            (EPISODES, TRAIN_EPISODES, RENDERED, SEED override)
set -euo pipefail
cd "$(dirname "$0")/.."
coins="${PROTONET_DATA:-../shared/data}/coins"
euro="$coins/euro-coins-kaa"
won="$coins/korean-won-cho0h5"
[ -d "$euro" ] && [ -d "$won" ] || { echo "no coin photos at $coins (set PROTONET_DATA)" >&2; exit 1; }
episodes=${EPISODES:-1000}
train_episodes=${TRAIN_EPISODES:-400}
rendered=${RENDERED:-40}
seed=${SEED:-7}
cargo build --release --example coins --quiet
run() { # train-dir test-dir extra-args...
    local train=$1 test=$2; shift 2
    ./target/release/examples/coins --backbone conv4 --train "$train" --test "$test" --episodes "$episodes" \
        --train-episodes "$train_episodes" --seed "$seed" "$@" 2>/dev/null | sed -n 's/.*shot accuracy on unseen denominations: \(.*\) (.*/\1/p'
}
echo "| trained on | tested on (4-shot, $episodes episodes) | Conv-4 | Conv-4 + $rendered rendered denominations |"
echo "|---|---|---|---|"
echo "| euro (8 denominations) | won, 4-way | $(run "$euro" "$won") | $(run "$euro" "$won" --add-rendered "$rendered") |"
echo "| won (4 denominations) | euro, 8-way | $(run "$won" "$euro") | $(run "$won" "$euro" --add-rendered "$rendered") |"
