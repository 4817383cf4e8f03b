#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: builds protonet with CUDA and compares training on the
# GPU with the CPU (one episode's gradients per parameter, 50 training episodes, 20-way
# 1-shot accuracy), printing a verdict; then times EfficientNet-Lite0 embedding on both.
# Needs a CUDA toolkit no newer than the driver supports; set CUDA_COMPUTE_CAP (for
# example 90 for an H100) when building where no GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --features cuda -p protonet-cli --example gpu_check --bin protonet
./target/release/examples/gpu_check --device cuda "$@"
if [ -f data/pretrained/efficientnet-lite0.safetensors ]; then
    for dev in cpu cuda; do
        echo "EfficientNet-Lite0 embedding, batch 32 at 224, $dev:"
        ./target/release/protonet bench --backbone efficientnet-lite0 --embed-batch 32 --image-size 224 --device "$dev"
    done
fi
