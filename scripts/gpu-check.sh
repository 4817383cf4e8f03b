#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: compares protonet on the GPU with the CPU and prints a
# verdict, then times both.
#   1. gpu_check: one episode's gradients per parameter (cosine, norm ratio), 50 training
#      episodes on each device from the same weights and episodes, 20-way 1-shot accuracy.
#   2. `protonet eval` of the shipped Omniglot model on both devices (same episodes).
#   3. Speed on both: a Conv-4 training step (60-way 5-shot 5-query), 5-way 5-shot
#      inference, EfficientNet-Lite0 embedding of 32 images at 224 and an EfficientNet-Lite0
#      training step (5-way 4-shot 6-query at 224; these two need the pretrained weights:
#      scripts/fetch-pretrained.sh, or PROTONET_WEIGHTS=file).
#
# Builds with `cargo build --release --features cuda` unless PROTONET_BIN names a folder
# that holds a CUDA build of `protonet` and `gpu_check`. Building needs a CUDA toolkit no
# newer than the driver supports, and CUDA_COMPUTE_CAP (90 for an H100) where no GPU is
# visible. Omniglot is read from $PROTONET_DATA/omniglot (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PROTONET_BIN:-}" ]; then
    cargo build --release --features cuda -p protonet-cli --example gpu_check --bin protonet
    bin=target/release
    check=$bin/examples/gpu_check
else
    bin=$PROTONET_BIN
    check=$bin/gpu_check
fi
data=${PROTONET_DATA:-../shared/data}
weights=${PROTONET_WEIGHTS:-data/pretrained/efficientnet-lite0.safetensors}
status=0

echo "== 1. gradients and training, cpu vs cuda"
wargs=(); [ -f "$weights" ] && wargs=(--weights "$weights")
"$check" --device cuda --data "$data/omniglot" "${wargs[@]}" || status=$?

echo "== 2. eval of data/omniglot-conv4-1shot, 20-way 1-shot, 200 episodes"
for dev in cpu cuda; do
    echo -n "$dev: "
    "$bin/protonet" eval --model data/omniglot-conv4-1shot --data "$data/omniglot" --way 20 --shot 1 --episodes 200 --json --quiet --device "$dev"
done

echo "== 3. speed"
for dev in cpu cuda; do
    "$bin/protonet" bench --train --way 60 --shot 5 --query 5 --device "$dev"
    "$bin/protonet" bench --device "$dev"
    if [ -f "$weights" ]; then
        "$bin/protonet" bench --backbone efficientnet-lite0 --weights "$weights" --embed-batch 32 --image-size 224 --device "$dev"
        "$bin/protonet" bench --backbone efficientnet-lite0 --weights "$weights" --train --way 5 --shot 4 --query 6 --image-size 224 --iters 5 --device "$dev"
    else
        echo "EfficientNet-Lite0: no weights at $weights (scripts/fetch-pretrained.sh)"
    fi
done
exit $status
