#!/usr/bin/env python3
"""EfficientNet-Lite0 embedding throughput, protonet (candle) against PyTorch, in one run on
this machine: a batch of 32 RGB images at 224x224 embedded (features + global average
pooling, evaluation mode), median milliseconds per batch, rounds alternating between the
two so that both see the same machine state. Prints a Markdown table.

    .venv-torch/bin/pip install torch numpy && .venv-torch/bin/pip install --no-deps efficientnet-lite-pytorch==0.1.0
    scripts/fetch-pretrained.sh
    python3 scripts/bench_efficientnet_vs_pytorch.py --python .venv-torch/bin/python
"""
import argparse
import json
import os
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH_SNIPPET = r"""
import json, sys, time, torch
from efficientnet_lite_pytorch import EfficientNet
torch.set_num_threads(2)
batch, size, iters, warmup, weights = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
model = EfficientNet.from_name("efficientnet-lite0")
model.load_state_dict(torch.load(weights, map_location="cpu"))
model.eval()
x = torch.randn(batch, 3, size, size)
times = []
with torch.no_grad():
    for i in range(warmup + iters):
        t = time.perf_counter()
        e = model.extract_features(x).mean(dim=(2, 3))
        float(e.sum())
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
times.sort()
print(json.dumps({"median_ms": times[len(times) // 2], "version": torch.__version__}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default="python3", help="a Python with torch and efficientnet-lite-pytorch")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/protonet"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    weights_pth = os.path.join(ROOT, "data/pretrained/efficientnet-lite0-57934424.pth")
    ours, theirs, version = [], [], "?"
    for r in range(args.rounds):
        out = subprocess.run(
            [args.binary, "bench", "--backbone", "efficientnet-lite0", "--embed-batch", str(args.batch), "--image-size", str(args.size),
             "--iters", str(args.iters), "--warmup", "1", "--json"],
            check=True, capture_output=True, text=True, cwd=ROOT).stdout
        ours.append(json.loads(out)["median_ms"])
        out = subprocess.run([args.python, "-c", TORCH_SNIPPET, str(args.batch), str(args.size), str(args.iters), "1", weights_pth],
                             check=True, capture_output=True, text=True).stdout
        doc = json.loads(out)
        theirs.append(doc["median_ms"])
        version = doc["version"]
        print(f"round {r + 1}: protonet {ours[-1]:.1f} ms, torch {theirs[-1]:.1f} ms", file=os.sys.stderr)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"EfficientNet-Lite0 embedding, batch {args.batch} at {args.size}x{args.size}, PyTorch {version} (2 threads) vs protonet, medians of {args.rounds} alternating rounds")
    print()
    print("| PyTorch ms | protonet ms | ratio (protonet / PyTorch) | images/s PyTorch | images/s protonet |")
    print("|---|---|---|---|---|")
    print(f"| {t:.1f} | {o:.1f} | {o / t:.2f} | {1e3 * args.batch / t:.0f} | {1e3 * args.batch / o:.0f} |")


if __name__ == "__main__":
    main()
