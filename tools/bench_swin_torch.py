#!/usr/bin/env python3
"""PyTorch reference for `mtl bench --model swin_t-baseline`: the same network, batch, losses and
optimizer, timed per training step (method ew).

Network: timm's swin_tiny_patch4_window7_224 with `features_only=True` (random init, built for the
bench size with img_size=(H, W): roll-then-pad windows where the window does not divide a stage; the
same padded work as mtl's dense variant), LayerNorm norm0..norm3 on the four NHWC outputs (as the
dense-prediction Swin), NCHW, and per task the multiscale baseline head of tools/bench_hrnet_torch.py
(scales 1-3 resized to scale 0, concat 1440 channels, 1x1 conv → --head-channels + BN + ReLU, 1x1
classifier, bilinear to the input size). Tasks as ../shared/bench/torch_ref.py: seg (13 classes, CE,
ignore -1), depth (L1), normals (1 - cos); Adam lr 1e-4.

Usage: python3 tools/bench_swin_torch.py --batch 2 --height 224 --wide 288 --threads 2 [--channels-last]
Prints one JSON line with the median and minimum milliseconds per step.
"""
import argparse
import json
import os
import statistics
import sys
import time

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_hrnet_torch import MultiScaleHead, task_losses  # noqa: E402


class DenseSwin(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.body = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, features_only=True, img_size=size)
        self.widths = [96, 192, 384, 768]
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.widths)

    def forward(self, x):
        return [n(f).permute(0, 3, 1, 2) for n, f in zip(self.norms, self.body(x))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--height", type=int, default=224)
    p.add_argument("--wide", type=int, default=288)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--head-channels", type=int, default=256)
    p.add_argument("--method", default="ew")
    p.add_argument("--width", type=int, default=0, help="ignored (bench_pairs passes it)")
    p.add_argument("--model", default="swin_t-baseline", help="ignored (bench_pairs passes it)")
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    B, H, W = a.batch, a.height, a.wide
    enc = DenseSwin((H, W))
    heads = nn.ModuleDict({k: MultiScaleHead(enc.widths, c, hidden=a.head_channels)
                           for k, c in (("seg", 13), ("depth", 1), ("normals", 3))})
    opt = torch.optim.Adam(list(enc.parameters()) + list(heads.parameters()), lr=1e-4)
    x = torch.randn(B, 3, H, W)
    seg = torch.randint(-1, 13, (B, H, W))
    depth = torch.rand(B, 1, H, W)
    normals = F.normalize(torch.randn(B, 3, H, W), dim=1)
    if a.channels_last:
        enc.to(memory_format=torch.channels_last)
        heads.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        z = enc(x)
        preds = {k: h(z, (H, W)) for k, h in heads.items()}
        sum(task_losses(preds, seg, depth, normals)).backward()
        opt.step()

    for _ in range(2):
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    params = sum(p.numel() for p in enc.parameters()) + sum(p.numel() for p in heads.parameters())
    print(json.dumps({"model": "swin_t-baseline", "method": "ew", "batch": B, "height": H, "width_px": W,
                      "threads": a.threads, "channels_last": a.channels_last, "parameters": params,
                      "ms_per_step_median": round(statistics.median(times), 2), "ms_per_step_min": round(min(times), 2)}))


if __name__ == "__main__":
    main()
