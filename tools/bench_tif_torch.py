#!/usr/bin/env python3
"""PyTorch reference for `mtl bench --model tif-hrnet18`: TIF-R on HRNetV2-W18-Small-v2 (the from-spec
modules of tools/tif_reference.py and tools/hrnet_reference.py, cast to float32, BatchNorm with batch
statistics), the bench tasks of ../shared/bench/torch_ref.py (seg 13 classes CE ignore -1, depth L1 on
depth > 0, normals 1 - cos on valid pixels; tools/bench_torch_common.py), Adam lr 1e-4, timed per
training step (method ew).

Usage: python3 tools/bench_tif_torch.py --height 128 --wide 256 --batch 4 --threads 2
Prints one JSON line with the median and minimum milliseconds per step.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tif_reference as TR  # noqa: E402
from bench_torch_common import TASK_CHANNELS, bench_parser, run_bench  # noqa: E402


def main():
    a = bench_parser(height=128, wide=256, batch=4, channels_last=False).parse_args()
    torch.manual_seed(0)
    net = TR.TIFR("hrnet18s", dict(TASK_CHANNELS)).float()
    torch.set_num_threads(a.threads)   # after the imports: ref_layers sets 1 thread for the float64 checks
    run_bench(a, [net], net, model="tif-hrnet18", parameters=sum(q.numel() for q in net.parameters()))


if __name__ == "__main__":
    main()
