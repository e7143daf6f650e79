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
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hrnet_reference  # noqa: E402
from bench_torch_common import TASK_CHANNELS, MultiScaleHead, bench_parser, run_bench  # noqa: E402


def main():
    a = bench_parser(height=128, wide=256, batch=4).parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    arch = hrnet_reference.ARCHS["w18_small"]
    enc = hrnet_reference.SpecHRNet(arch)
    heads = nn.ModuleDict({k: MultiScaleHead(arch["widths"], c) for k, c in TASK_CHANNELS})

    def forward(x):
        z = enc(x)
        return {k: h(z, (a.height, a.wide)) for k, h in heads.items()}

    run_bench(a, [enc, heads], forward, model="hrnet18s-baseline",
              parameters=sum(q.numel() for m in (enc, heads) for q in m.parameters()))


if __name__ == "__main__":
    main()
