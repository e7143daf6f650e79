#!/usr/bin/env python3
"""PyTorch reference for `mtl bench --model swin_t-baseline`: the same network, batch, losses and
optimizer, timed per training step (method ew).

Network: timm's swin_tiny_patch4_window7_224 with `features_only=True` (random init, built for the
bench size with img_size=(H, W) and always_partition=True: 7×7 windows on every stage, also on maps
smaller than the window, which timm would otherwise shrink the window to; roll-then-pad windows where
the window does not divide a stage; the same padded work and parameters as mtl's dense variant), LayerNorm norm0..norm3 on the four NHWC outputs (as the
dense-prediction Swin), NCHW, and per task the multiscale baseline head of tools/bench_torch_common.py
(scales 1-3 resized to scale 0, concat 1440 channels, 1x1 conv → --head-channels + BN + ReLU, 1x1
classifier, bilinear to the input size). Tasks as ../shared/bench/torch_ref.py: seg (13 classes, CE,
ignore -1), depth (L1), normals (1 - cos); Adam lr 1e-4.

Usage: python3 tools/bench_swin_torch.py --batch 2 --height 224 --wide 288 --threads 2 [--channels-last]
Prints one JSON line with the median and minimum milliseconds per step.
"""
import os
import sys

import timm
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch_common import TASK_CHANNELS, MultiScaleHead, bench_parser, run_bench  # noqa: E402


class DenseSwin(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.body = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, features_only=True, img_size=size,
                                      always_partition=True)
        self.widths = [96, 192, 384, 768]
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.widths)

    def forward(self, x):
        return [n(f).permute(0, 3, 1, 2) for n, f in zip(self.norms, self.body(x))]


def main():
    p = bench_parser(height=224, wide=288, batch=2)
    p.add_argument("--head-channels", type=int, default=256)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    enc = DenseSwin((a.height, a.wide))
    heads = nn.ModuleDict({k: MultiScaleHead(enc.widths, c, hidden=a.head_channels) for k, c in TASK_CHANNELS})

    def forward(x):
        z = enc(x)
        return {k: h(z, (a.height, a.wide)) for k, h in heads.items()}

    params = sum(q.numel() for q in enc.parameters()) + sum(q.numel() for q in heads.parameters())
    run_bench(a, [enc, heads], forward, model="swin_t-baseline", parameters=params)


if __name__ == "__main__":
    main()
