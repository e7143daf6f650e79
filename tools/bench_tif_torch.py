#!/usr/bin/env python3
"""PyTorch reference for `mtl bench --model tif-hrnet18`: TIF-R on HRNetV2-W18-Small-v2 (the from-spec
modules of tools/tif_reference.py and tools/hrnet_reference.py, cast to float32, BatchNorm with batch
statistics), the bench tasks of ../shared/bench/torch_ref.py (seg 13 classes CE ignore -1, depth L1 on
depth > 0, normals 1 - cos), Adam lr 1e-4, timed per training step (method ew).

Usage: python3 tools/bench_tif_torch.py --height 128 --wide 256 --batch 4 --threads 2
Prints one JSON line with the median and minimum milliseconds per step.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tif_reference as TR  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--wide", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    a = p.parse_args()
    torch.manual_seed(0)
    net = TR.TIFR("hrnet18s", {"seg": 13, "depth": 1, "normals": 3}).float()
    torch.set_num_threads(a.threads)   # after the imports: ref_layers sets 1 thread for the float64 checks
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    B, H, W = a.batch, a.height, a.wide
    x = torch.randn(B, 3, H, W)
    seg = torch.randint(-1, 13, (B, H, W))
    depth = torch.rand(B, 1, H, W)
    normals = F.normalize(torch.randn(B, 3, H, W), dim=1)

    def step():
        opt.zero_grad(set_to_none=True)
        pr = net(x)
        ls = F.cross_entropy(pr["seg"], seg, ignore_index=-1)
        ld = (pr["depth"] - depth).abs()[depth > 0].mean()
        ln = (1 - (F.normalize(pr["normals"], dim=1) * normals).sum(1)).mean()
        (ls + ld + ln).backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"model": "tif-hrnet18", "method": "ew", "batch": B, "height": H, "width_px": W,
                      "threads": a.threads, "parameters": sum(q.numel() for q in net.parameters()),
                      "ms_per_step_median": round(statistics.median(times), 2), "ms_per_step_min": round(min(times), 2)}))


if __name__ == "__main__":
    main()
