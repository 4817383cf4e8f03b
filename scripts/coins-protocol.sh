#!/usr/bin/env bash
# The cross-currency protocol on the real coin photos: a backbone trained on the
# denominations of one currency, with and without rendered coins of made-up currencies
# added to training, then 4-shot episodes on the other currency's denominations (never
# seen in training), 1000 episodes, 4 rotations averaged at test time. Backbones: Conv-4
# trained with rotation augmentation at 48x48 RGB; EfficientNet-Lite0 (ImageNet) frozen,
# with support centring + L2 normalization; EfficientNet-Lite0 with its head fine-tuned
# (224x224, 4 rotations cached, cosine with a learnable temperature, 300 episodes).
# Prints a Markdown table.
#   scripts/coins-protocol.sh            (EPISODES, TRAIN_EPISODES, RENDERED, SEED override;
#                                         COLUMNS="conv4 effnet" picks the backbones)
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
columns=${COLUMNS:-conv4 effnet}
if [[ $columns == *effnet* ]] && [ ! -f data/pretrained/efficientnet-lite0.safetensors ]; then
    echo "EfficientNet-Lite0 weights missing: run scripts/fetch-pretrained.sh (or COLUMNS=conv4)" >&2; exit 1
fi
cargo build --release --example coins --quiet
run() { # backbone train-dir test-dir extra-args...
    local backbone=$1 train=$2 test=$3; shift 3
    ./target/release/examples/coins --backbone "$backbone" --train "$train" --test "$test" --episodes "$episodes" \
        --train-episodes "$train_episodes" --seed "$seed" "$@" 2>/dev/null | sed -n 's/.*shot accuracy on unseen denominations: \(.*\) (.*/\1/p'
}
row() { # train-dir test-dir
    local cells=""
    if [[ $columns == *conv4* ]]; then
        cells+=" $(run conv4 "$1" "$2") | $(run conv4 "$1" "$2" --add-rendered "$rendered") |"
    fi
    if [[ $columns == *effnet* ]]; then
        cells+=" $(run efficientnet-lite0 "$1" "$2") | $(run efficientnet-lite0-finetuned "$1" "$2") | $(run efficientnet-lite0-finetuned "$1" "$2" --add-rendered "$rendered") |"
    fi
    echo "$cells"
}
header="| trained on | tested on (4-shot, $episodes episodes) |"
rule="|---|---|"
if [[ $columns == *conv4* ]]; then header+=" Conv-4 | Conv-4 + $rendered rendered |"; rule+="---|---|"; fi
if [[ $columns == *effnet* ]]; then header+=" EfficientNet-Lite0 frozen | head fine-tuned | fine-tuned + $rendered rendered |"; rule+="---|---|---|"; fi
echo "$header"
echo "$rule"
echo "| euro (8 denominations) | won, 4-way |$(row "$euro" "$won")"
echo "| won (4 denominations) | euro, 8-way |$(row "$won" "$euro")"
