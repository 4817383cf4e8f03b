#!/usr/bin/env bash
# Leave-one-currency-out protocol on the real coin photos: for each of the currencies in
# $PROTONET_DATA/coins (default ../shared/data/coins), train on all the others together,
# then 1000 N-way 4-shot episodes (6 queries per class, embeddings averaged over 4
# rotations) on every denomination of the held-out currency, never seen in training.
# Prints a markdown table: one row per fold with its 95% CI, then the mean of the folds.
#
# Columns (COLUMNS, default "conv4 frozen finetuned"):
#   conv4      Conv-4 trained episodically with rotation augmentation at 48x48 RGB
#   frozen     EfficientNet-Lite0 (ImageNet) frozen, support centring + L2 normalization
#   crop       frozen, each photo cropped to its coin first (Hough circles)
#   adapt      frozen, a cosine classifier adapted to each support set (50 Adam steps)
#   crop+adapt both
#   finetuned  EfficientNet-Lite0 with its head fine-tuned episodically on the training currencies
#   trunk      EfficientNet-Lite0 with its last 8 MBConv blocks and head trained by
#              cross-entropy on the training denominations (coin augmentation)
#   trunk+adapt, trunk+crop+adapt: with the support adaptation, and the crop
#   baseline-pp  Baseline++ (Chen et al. 2019) on the pretrained backbone: the trunk
#              recipe's own training (a cosine classifier over all base classes) and the
#              crop, then the paper's test time (a cosine classifier fitted on each
#              support set, SGD, 100 epochs) instead of the support adaptation
#   baseline   Baseline's test time (a linear classifier fitted on each support set, SGD,
#              100 epochs) on the trained trunk, with the crop (the trunk's base training
#              has the recipe's cosine classifier, not Baseline's linear one)
#   matching   Matching networks on the trained trunk (with the crop): softmax attention
#              of each query over the support embeddings, cosine scaled by 10
#   matching100  the same with the cosine scaled by 100 (the Omniglot model's scale)
#   meta-baseline  Meta-Baseline on the trained trunk (with the crop): its episodic stage
#              (300 5-way 4-shot episodes, cosine times a learned temperature) on the
#              training denominations, kept in TRUNK_MODELS/FOLD/meta-baseline
#   relation   Relation Network on the trained trunk (with the crop): a relation module on
#              its 1280-channel maps, trained on 300 5-way 4-shot episodes with the trunk
#              frozen, kept in TRUNK_MODELS/FOLD/relation; no rotations
#   dc         the shipped recipe (trunk+crop+adapt) with drop-connect 0.2 in the trained
#              blocks, as EfficientNet trains (its own trunk models, TRUNK_MODELS/dc/FOLD)
#   whole      the shipped recipe with the stem and all 16 blocks trained (--first-block 0;
#              TRUNK_MODELS/whole/FOLD)
#   whole+dc   both (TRUNK_MODELS/whole+dc/FOLD)
#   lite2      the shipped recipe on EfficientNet-Lite2 (260 px, its last 8 of 21 blocks,
#              224 px training crops; TRUNK_MODELS/lite2/FOLD)
#   lite2+whole+dc  Lite2 with its stem and all blocks trained, drop-connect 0.2
#              (TRUNK_MODELS/lite2+whole+dc/FOLD)
#   whole+dc+aspect  and crops of aspect ratios 3/4 to 4/3 in the trunk training's
#              augmentation (TRUNK_MODELS/whole+dc+aspect/FOLD)
# Environment: CURRENCIES (the folder names of the currencies taking part, default all),
# FOLDS (the held-out currencies to run, default every one taking part: to finish or redo some
# folds of a column; the mean row is then the mean of those folds),
# EPISODES (1000), TRUNK_MODELS (a folder keeping the trunk models of the folds), TRAIN_EPISODES (400, Conv-4), FINETUNE_EPISODES (300), SEED (7),
# EXTRA (more flags for the coins example, for example --paste-small), CALIBRATION_DIR (write
# each fold and column's calibration there as FOLD-COLUMN.json and add the mean confidence and the
# expected calibration error to each cell; `cargo run --example reliability` draws them).
set -euo pipefail
cd "$(dirname "$0")/.."
coins="${PROTONET_DATA:-../shared/data}/coins"
[ -d "$coins" ] || { echo "no coin photos at $coins (set PROTONET_DATA)" >&2; exit 1; }
episodes=${EPISODES:-1000}
train_episodes=${TRAIN_EPISODES:-400}
finetune_episodes=${FINETUNE_EPISODES:-300}
seed=${SEED:-7}
columns=${COLUMNS:-conv4 frozen finetuned}
cargo build --release --example coins --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The trunk columns train one model per fold, kept here and reused by the other trunk columns
# (and by later runs with the same TRUNK_MODELS).
trunks=${TRUNK_MODELS:-$work/trunks}
mapfile -t currencies < <(find "$coins" -mindepth 1 -maxdepth 1 -type d | sort)
if [ -n "${CURRENCIES:-}" ]; then
    chosen=()
    for c in $CURRENCIES; do
        [ -d "$coins/$c" ] || { echo "CURRENCIES names $c, which is not a folder of $coins" >&2; exit 1; }
        chosen+=("$coins/$c")
    done
    currencies=("${chosen[@]}")
fi

run() { # backbone train-dir test-dir [flags...]; prints "accuracy ci mean-confidence ece"
    local backbone=$1 train=$2 test=$3 out
    shift 3
    out=$(./target/release/examples/coins --backbone "$backbone" --train "$train" --test "$test" --episodes "$episodes" "$@" \
        --train-episodes "$train_episodes" --finetune-episodes "$finetune_episodes" --seed "$seed" 2>/dev/null)
    echo "$(sed -n 's/.*shot accuracy on unseen denominations: \([0-9.]*\)% ± \([0-9.]*\)%.*/\1 \2/p' <<<"$out")" \
        "$(sed -n 's/.*reports it: mean \([0-9.]*\)% against [0-9.]*% right; expected calibration error \([0-9.]*\) points.*/\1 \2/p' <<<"$out")"
}

header="| held out (N-way) | trained on |"
rule="|---|---|"
for c in $columns; do header+=" $c |"; rule+="---|"; done
echo "$header"
echo "$rule"
declare -A sum
folds=0
for held in "${currencies[@]}"; do
    name=$(basename "$held")
    if [ -n "${FOLDS:-}" ] && [[ " $FOLDS " != *" $name "* ]]; then continue; fi
    folds=$((folds + 1))
    train="$work/without-$name"
    mkdir -p "$train"
    others=()
    for other in "${currencies[@]}"; do
        [ "$other" = "$held" ] && continue
        others+=("$(basename "$other" | cut -d- -f1-2)")
        for class in "$other"/*/; do ln -s "$(cd "$class" && pwd)" "$train/$(basename "$class")"; done
    done
    way=$(find "$held" -mindepth 1 -maxdepth 1 -type d | wc -l)
    row="| $name ($way-way) | ${others[*]} |"
    for c in $columns; do
        flags=()
        case $c in
            conv4) b=conv4 ;;
            frozen) b=efficientnet-lite0 ;;
            crop) b=efficientnet-lite0; flags=(--crop) ;;
            adapt) b=efficientnet-lite0; flags=(--adapt-steps 50) ;;
            crop+adapt) b=efficientnet-lite0; flags=(--crop --adapt-steps 50) ;;
            finetuned) b=efficientnet-lite0-finetuned ;;
            trunk) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/$name") ;;
            trunk+adapt) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/$name" --adapt-steps 50) ;;
            trunk+crop+adapt) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/$name" --crop --adapt-steps 50) ;;
            baseline-pp) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/$name" --crop --method baseline-pp) ;;
            baseline) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/$name" --crop --method baseline) ;;
            matching) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/$name" --crop --method matching) ;;
            matching100) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/$name" --crop --method matching --matching-scale 100) ;;
            meta-baseline) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/$name" --crop --method meta-baseline) ;;
            relation) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/$name" --crop --method relation) ;;
            dc) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/dc/$name" --drop-connect 0.2 --crop --adapt-steps 50) ;;
            whole) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/whole/$name" --first-block 0 --crop --adapt-steps 50) ;;
            lite2) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/lite2/$name" --lite2 --first-block 13 --crop --adapt-steps 50) ;;
            lite2+whole+dc) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/lite2+whole+dc/$name" --lite2 --first-block 0 --drop-connect 0.2 --crop --adapt-steps 50) ;;
            whole+dc+aspect) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/whole+dc+aspect/$name" --first-block 0 --drop-connect 0.2 --aspect-jitter --crop --adapt-steps 50) ;;
            whole+dc) b=efficientnet-lite0-trunk; flags=(--trunk-model "$trunks/whole+dc/$name" --first-block 0 --drop-connect 0.2 --crop --adapt-steps 50) ;;
            *) echo "unknown column $c" >&2; exit 1 ;;
        esac
        calibration=()
        [ -n "${CALIBRATION_DIR:-}" ] && mkdir -p "$CALIBRATION_DIR" && calibration=(--calibration-json "$CALIBRATION_DIR/$name-$c.json")
        read -r acc ci conf ece < <(run "$b" "$train" "$held" "${flags[@]}" "${calibration[@]}" ${EXTRA:-})
        if [ -n "${CALIBRATION_DIR:-}" ]; then row+=" $acc ± $ci (conf $conf, ECE $ece) |"; else row+=" $acc ± $ci |"; fi
        sum[$c]=$(echo "${sum[$c]:-0} + $acc" | bc -l)
    done
    echo "$row"
done
[ "$folds" -gt 0 ] || { echo "FOLDS names no currency taking part: $FOLDS" >&2; exit 1; }
row="| **mean of $folds folds** | |"
for c in $columns; do row+=" $(printf '%.1f' "$(echo "${sum[$c]} / $folds" | bc -l)") |"; done
echo "$row"
