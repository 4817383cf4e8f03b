#!/usr/bin/env python3
"""protonet against PyTorch on the same CPU, side by side, in one run.

Runs the speed issue's workloads (A, B: training steps; C1, C2: inference episodes;
D1, D2: embedding throughput) alternately with `protonet bench --json` and with the
PyTorch reference script (../shared/peers/torch_protonet_bench.py), for several rounds,
and prints the medians and the time ratio protonet / PyTorch as a Markdown table. It also
measures the peak memory (max RSS) of workload A for both.

Set-up (PyTorch is only needed here, never by the library or CI):

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch
    cargo build --release
    python3 scripts/bench_vs_pytorch.py --python .venv-torch/bin/python
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (protonet bench args, torch --workload, torch RESULT workload, images per iteration)
WORKLOADS = {
    "A": (["--way", "60", "--shot", "5", "--query", "5", "--train"], "A", "A", 600),
    "B": (["--way", "5", "--shot", "5", "--query", "15", "--image-size", "84", "--channels", "3", "--train"], "B", "B", 100),
    "C1": (["--way", "5", "--shot", "1", "--query", "15"], "C", "C1", 80),
    "C2": (["--way", "20", "--shot", "5", "--query", "15"], "C", "C2", 400),
    "D1": (["--embed-batch", "256"], "D", "D1", 256),
    "D2": (["--embed-batch", "64", "--image-size", "84", "--channels", "3"], "D", "D2", 64),
}
# Ratio targets (protonet time / PyTorch time).
TARGET = {"A": 0.5, "B": 1.0, "C1": 0.33, "C2": 0.7, "D1": 0.7, "D2": 0.7}


def run_protonet(binary, name, iters, warmup):
    args = WORKLOADS[name][0]
    out = subprocess.run([binary, "bench", *args, "--iters", str(iters), "--warmup", str(warmup), "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["median_ms"]


def run_torch(python, peer, torch_wl, iters, warmup):
    out = subprocess.run([python, peer, "--workload", torch_wl, "--iters", str(iters), "--warmup", str(warmup), "--quiet-header"], check=True, capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        if line.startswith("RESULT"):
            kv = dict(p.split("=", 1) for p in line.split()[1:])
            res[kv["workload"]] = float(kv["median_ms"])
    return res


def peak_rss_mib(cmd):
    out = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *cmd], check=True, capture_output=True, text=True).stderr
    return int(re.search(r"MAXRSS (\d+)", out).group(1)) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv-torch/bin/python"))
    ap.add_argument("--peer", default=os.path.join(ROOT, "../shared/peers/torch_protonet_bench.py"))
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/protonet"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workloads", default="A,B,C1,C2,D1,D2")
    a = ap.parse_args()
    names = a.workloads.split(",")
    iters = {"A": (5, 2), "B": (5, 2), "C1": (50, 5), "C2": (20, 3), "D1": (20, 3), "D2": (10, 2)}
    ours = {n: [] for n in names}
    theirs = {n: [] for n in names}
    for r in range(a.rounds):
        for n in names:
            it, wu = iters[n]
            ours[n].append(run_protonet(a.binary, n, it, wu))
            theirs[n].append(run_torch(a.python, a.peer, WORKLOADS[n][1], it, wu)[WORKLOADS[n][2]])
            print(f"round {r + 1} {n}: protonet {ours[n][-1]:.1f} ms, torch {theirs[n][-1]:.1f} ms", file=sys.stderr, flush=True)
    version = subprocess.run([a.python, "-c", "import torch; print(torch.__version__, torch.get_num_threads())"], capture_output=True, text=True).stdout.split()
    print(f"PyTorch {version[0]} ({version[1]} threads) vs protonet, medians of {a.rounds} alternating rounds; ratio = protonet time / PyTorch time\n")
    print("| workload | PyTorch ms | protonet ms | ratio | target |")
    print("|---|---|---|---|---|")
    for n in names:
        t, o = statistics.median(theirs[n]), statistics.median(ours[n])
        print(f"| {n} | {t:.1f} | {o:.1f} | {o / t:.2f} | <= {TARGET[n]} |")
    if "A" in names:
        ours_mem = peak_rss_mib([a.binary, "bench", *WORKLOADS["A"][0], "--iters", "2", "--warmup", "1"])
        torch_mem = peak_rss_mib([a.python, a.peer, "--workload", "A", "--iters", "2", "--warmup", "1", "--quiet-header"])
        print(f"\nPeak memory (max RSS) for A: PyTorch {torch_mem:.0f} MiB, protonet {ours_mem:.0f} MiB")


if __name__ == "__main__":
    main()
