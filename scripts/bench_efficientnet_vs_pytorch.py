#!/usr/bin/env python3
"""EfficientNet-Lite0, protonet (candle) against PyTorch, in one run on this machine, rounds
alternating between the two so that both see the same machine state; medians of
milliseconds per iteration and peak memory. Prints a Markdown table.
  E1: a batch of 32 RGB images at 224x224 embedded (features + global average pooling,
      evaluation mode, no gradients);
  E2: one episodic training step through the whole network, 5-way 4-shot 6-query at
      224x224 (BatchNorm on its running statistics, every weight trained): embeddings,
      prototypes, squared distances, cross-entropy, backward, Adam.

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
import json, resource, sys, time, torch
from efficientnet_lite_pytorch import EfficientNet
torch.set_num_threads(2)
workload, size, iters, warmup, weights = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
model = EfficientNet.from_name("efficientnet-lite0")
model.load_state_dict(torch.load(weights, map_location="cpu"))
model.eval()  # BatchNorm on its running statistics, in E2 too
times = []
if workload == "E1":
    x = torch.randn(32, 3, size, size)
    with torch.no_grad():
        for i in range(warmup + iters):
            t = time.perf_counter()
            e = model.extract_features(x).mean(dim=(2, 3))
            float(e.sum())
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1e3)
else:
    way, shot, query = 5, 4, 6
    x = torch.randn(way * (shot + query), 3, size, size)
    labels = torch.arange(way).repeat_interleave(query)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for i in range(warmup + iters):
        t = time.perf_counter()
        e = model.extract_features(x).mean(dim=(2, 3))
        support, queries = e[: way * shot].view(way, shot, -1), e[way * shot:]
        protos = support.mean(1)
        d = ((queries[:, None, :] - protos[None, :, :]) ** 2).sum(-1)
        loss = torch.nn.functional.cross_entropy(-d, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
times.sort()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"median_ms": times[len(times) // 2], "version": torch.__version__, "peak_mib": rss}))
"""

PROTONET_ARGS = {
    "E1": ["--embed-batch", "32"],
    "E2": ["--train", "--way", "5", "--shot", "4", "--query", "6"],
}


def peak_mib(cmd):
    """Runs `cmd` under /usr/bin/time and returns (stdout, peak RSS in MiB)."""
    out = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return out.stdout, int(out.stderr.strip().splitlines()[-1]) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default="python3", help="a Python with torch and efficientnet-lite-pytorch")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/protonet"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--workloads", default="E1,E2")
    args = ap.parse_args()
    weights_pth = os.path.join(ROOT, "data/pretrained/efficientnet-lite0-57934424.pth")
    rows, version = [], "?"
    for w in args.workloads.split(","):
        ours, theirs, our_mem, their_mem = [], [], [], []
        for r in range(args.rounds):
            out, mem = peak_mib([args.binary, "bench", "--backbone", "efficientnet-lite0", "--image-size", str(args.size),
                                 "--iters", str(args.iters), "--warmup", "1", "--json"] + PROTONET_ARGS[w])
            ours.append(json.loads(out)["median_ms"])
            our_mem.append(mem)
            out = subprocess.run([args.python, "-c", TORCH_SNIPPET, w, str(args.size), str(args.iters), "1", weights_pth],
                                 check=True, capture_output=True, text=True).stdout
            doc = json.loads(out)
            theirs.append(doc["median_ms"])
            their_mem.append(doc["peak_mib"])
            version = doc["version"]
            print(f"{w} round {r + 1}: protonet {ours[-1]:.1f} ms, torch {theirs[-1]:.1f} ms", file=os.sys.stderr)
        o, t = statistics.median(ours), statistics.median(theirs)
        rows.append(f"| {w} | {t:.1f} | {o:.1f} | {o / t:.2f} | {max(their_mem):.0f} | {max(our_mem):.0f} |")
    print(f"EfficientNet-Lite0 at {args.size}x{args.size}, PyTorch {version} (2 threads) vs protonet, medians of {args.rounds} alternating rounds")
    print()
    print("| workload | PyTorch ms | protonet ms | ratio (protonet / PyTorch) | PyTorch peak MiB | protonet peak MiB |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
