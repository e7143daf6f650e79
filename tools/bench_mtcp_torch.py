#!/usr/bin/env python3
"""PyTorch reference for `mtl bench --model mtcp-swin_t`: the same network, batch, losses and optimizer,
timed per training step (method ew).

Network: timm's swin_tiny_patch4_window7_224 (features_only, random init, img_size=(H, W)) with
LayerNorm norm0..norm3 (bench_swin_torch.DenseSwin), the FPN-lite neck (SEED-ARCHITECTURES.md §2.7:
lateral 1×1 → 256, nearest top-down, Conv3×3 (no bias) → BN → ReLU → Conv1×1 → z), and the paper-size
MT-CP decoder of tools/mtcp_reference.py (d = 256, depths 1-2-1, heads 2-2-2, window 7, the CFM at
--cfm-stride with the dense affinity) cast to float32, BatchNorm with batch statistics. Tasks as
../shared/bench/torch_ref.py: seg (13 classes, CE ignore -1), depth (L1), normals (1 - cos), each
final prediction plus ½ × each of its two intermediate predictions (what mtl's TaskPass trains); Adam lr 1e-4.

Usage: python3 tools/bench_mtcp_torch.py --batch 2 --height 128 --wide 256 --threads 2 [--cfm-stride 8] [--channels-last]
Prints one JSON line with the median and minimum milliseconds per step.
"""
import argparse
import functools
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mtcp_reference as M  # noqa: E402
import ref_layers  # noqa: E402
from bench_torch_common import report, task_losses, time_steps  # noqa: E402


class FPNLite(nn.Module):
    """mtl's `model.neck: fpn` under its names (lateral.<k>, conv, bn, out); tools/mtl_torch.py's MT-CP
    rebuild imports it, so this module imports no timm at the top level."""

    def __init__(self, ins=(96, 192, 384, 768), d=256):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, d, 1) for c in ins)
        self.conv = nn.Conv2d(d, d, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(d)
        self.out = nn.Conv2d(d, d, 1)

    def forward(self, xs):
        lat = [conv(x) for conv, x in zip(self.lateral, xs)]
        f = lat[-1]
        for k in range(len(lat) - 2, -1, -1):
            f = F.interpolate(f, size=lat[k].shape[-2:], mode="nearest") + lat[k]
        return self.out(F.relu(self.bn(self.conv(f))))


def main():
    from bench_swin_torch import DenseSwin
    p = argparse.ArgumentParser()
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--wide", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--cfm-stride", type=int, default=4, choices=(4, 8))
    p.add_argument("--method", default="ew")
    p.add_argument("--width", type=int, default=0, help="ignored (bench_pairs passes it)")
    p.add_argument("--head-channels", type=int, default=0, help="ignored (bench_pairs passes it)")
    p.add_argument("--model", default="mtcp-swin_t", help="ignored (bench_pairs passes it)")
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    # The reference is float64 by design; in float32 the shift masks must be float32 too (else every masked
    # attention score is promoted), and built once per grid rather than per block call.
    ref_layers.DTYPE = torch.float32
    ref_layers.shift_mask = functools.lru_cache(maxsize=None)(ref_layers.shift_mask)
    B, H, W = a.batch, a.height, a.wide
    enc, neck = DenseSwin((H, W)), FPNLite()
    specs = {"seg": (13, 2, "seg", 2), "depth": (1, 2, "depth", 2), "normals": (3, 2, "plain", 1)}
    dec = M.MTCPDecoder("nyud", cfm_stride=a.cfm_stride, specs=specs).float()
    torch.set_num_threads(a.threads)   # after the imports: ref_layers sets 1 thread for the float64 checks
    params = list(enc.parameters()) + list(neck.parameters()) + list(dec.parameters())
    opt = torch.optim.Adam(params, lr=1e-4)
    x = torch.randn(B, 3, H, W)
    seg = torch.randint(-1, 13, (B, H, W))
    depth = torch.rand(B, 1, H, W)
    normals = F.normalize(torch.randn(B, 3, H, W), dim=1)
    if a.channels_last:
        for m in (enc, neck, dec):
            m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        out = dec(neck(enc(x)), (H, W))
        total = sum(task_losses({k: v["final"] for k, v in out.items()}, seg, depth, normals))
        for i in range(2):
            total = total + 0.5 * sum(task_losses({k: v["inter"][i] for k, v in out.items()}, seg, depth, normals))
        total.backward()
        opt.step()

    report(time_steps(step, a.steps), model="mtcp-swin_t", batch=B, height=H, width_px=W, cfm_stride=a.cfm_stride,
           threads=a.threads, channels_last=a.channels_last, parameters=sum(q.numel() for q in params))


if __name__ == "__main__":
    main()
