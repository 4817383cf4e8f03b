#!/usr/bin/env bash
# Builds the CUDA command line (`protonet` and the `gpu_check` example) on a machine
# without a GPU or a CUDA toolkit, for a machine that has both (an H100 by default):
#   - nvcc, its headers and NVVM come from NVIDIA's PyPI wheels (CUDA 13.0, the newest
#     that driver 580 runs), downloaded into $CUDA_WHEELS (default ~/.cache/protonet/cuda);
#   - candle links the CUDA libraries at build time (cudarc's `dynamic-linking`), so the
#     linker gets stub libraries with their sonames (libcuda.so.1, libcublas.so.13,
#     libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13) made from cudarc's own
#     function lists; the machine that runs the binary must have the real ones.
# Output: target-cuda/release/protonet and target-cuda/release/examples/gpu_check.
# On a machine with a CUDA toolkit, plain `cargo build --release --features cuda` does.
#
# Usage: scripts/build-cuda.sh [compute capability, default 90]
set -euo pipefail
cd "$(dirname "$0")/.."
cap=${1:-90}
wheels=${CUDA_WHEELS:-$HOME/.cache/protonet/cuda}
cuda=$wheels/x/nvidia/cu13
if [ ! -x "$cuda/nvvm/bin/cicc" ]; then
    mkdir -p "$wheels"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 -d "$wheels" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
        "nvidia-cuda-cccl==13.0.*" "nvidia-nvvm==13.0.*"
    for w in "$wheels"/*.whl; do unzip -q -o "$w" -d "$wheels/x"; done
fi

# Stub libraries: every function cudarc declares, empty, under the real soname.
cargo fetch -q
cudarc=$(cargo metadata --format-version 1 | python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc").rsplit("/", 1)[0])')
stubs=$cuda/lib/stubs
mkdir -p "$stubs"
stub() {
    local lib=$1 soname=$2 src=$3
    grep -ho 'pub unsafe fn [A-Za-z0-9_]*' "$cudarc/src/$src/sys/mod.rs" | awk '{print $4}' | sort -u |
        sed 's/.*/void &(void) {}/' >"$stubs/$lib.c"
    gcc -shared -fPIC -o "$stubs/lib$lib.so" -Wl,-soname,"$soname" "$stubs/$lib.c"
}
stub cuda libcuda.so.1 driver
stub cublas libcublas.so.13 cublas
stub cublasLt libcublasLt.so.13 cublaslt
stub curand libcurand.so.10 curand
stub nvrtc libnvrtc.so.13 nvrtc
ln -sf libcudart.so.13 "$cuda/lib/libcudart.so" # the real runtime library, from the wheel

export CUDA_HOME=$cuda CUDA_PATH=$cuda PATH=$cuda/bin:$PATH CUDA_COMPUTE_CAP=$cap CUDARC_CUDA_VERSION=13000
CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda -p protonet-cli --bin protonet --example gpu_check
echo "built target-cuda/release/protonet and target-cuda/release/examples/gpu_check (compute capability $cap)"
