#!/usr/bin/env python3
"""PyTorch reference for `mtl bench --model hrnet18s-baseline`: the same network, batch, losses and
optimizer, timed per training step (method ew).

Network: HRNetV2-W18-Small-v2 (the from-spec mmseg-style module of tools/hrnet_reference.py, bilinear
fuse, BatchNorm in train mode) and per task the multiscale baseline head (MTI-Net's HighResolutionHead:
scales 1-3 resized to scale 0, concat 270 channels, 1x1 conv 270->270 + BN + ReLU, 1x1 classifier,
bilinear to the input size). Tasks and batch as ../shared/bench/torch_ref.py: seg (13 classes, CE,
ignore -1), depth (L1 on depth > 0), normals (1 - cos on valid pixels); Adam lr 1e-4.

Usage: python3 tools/bench_hrnet_torch.py --height 128 --wide 256 --batch 4 --threads 2 [--channels-last]
Prints one JSON line with the median and minimum milliseconds per step.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hrnet_reference  # noqa: E402


class MultiScaleHead(nn.Module):
    def __init__(self, widths, cout, hidden=270):
        super().__init__()
        self.last_layer = nn.Sequential(nn.Conv2d(sum(widths), hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(),
                                        nn.Conv2d(hidden, cout, 1))

    def forward(self, xs, size):
        h, w = xs[0].shape[-2:]
        ys = [xs[0]] + [F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False) for x in xs[1:]]
        return F.interpolate(self.last_layer(torch.cat(ys, 1)), size=size, mode="bilinear", align_corners=False)


def task_losses(preds, seg, depth, normals):
    ls = F.cross_entropy(preds["seg"], seg, ignore_index=-1)
    valid = depth > 0
    ld = (preds["depth"] - depth).abs()[valid].mean()
    n = F.normalize(preds["normals"], dim=1)
    nvalid = normals.abs().sum(1) > 0
    ln = (1 - (n * normals).sum(1))[nvalid].mean()
    return [ls, ld, ln]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--wide", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    arch = hrnet_reference.ARCHS["w18_small"]
    enc = hrnet_reference.SpecHRNet(arch)
    heads = nn.ModuleDict({k: MultiScaleHead(arch["widths"], c) for k, c in (("seg", 13), ("depth", 1), ("normals", 3))})
    opt = torch.optim.Adam(list(enc.parameters()) + list(heads.parameters()), lr=1e-4)
    B, H, W = a.batch, a.height, a.wide
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
    print(json.dumps({"model": "hrnet18s-baseline", "method": "ew", "batch": B, "height": H, "width_px": W,
                      "threads": a.threads, "channels_last": a.channels_last,
                      "ms_per_step_median": round(statistics.median(times), 2), "ms_per_step_min": round(min(times), 2)}))


if __name__ == "__main__":
    main()
