#!/usr/bin/env python3
"""PyTorch reference for `mtl bench --model kem-swin_s`: the same network, batch, losses and optimizer,
timed per training step (method ew).

Network: a frozen Swin-S (forward only, under no_grad: KEM trains its decoder alone) and the from-spec
KEM-R decoder of tools/kem_reference.py (1x1 reduce of stages 2-4, shared stage, per-task encoder, the
mixer, per-task decoder, heads; MTFormer's unused patch embeddings allocated as in mtl) cast to float32.
The backbone is timm's swin_small_patch4_window7_224 (features_only, img_size=(H, W), always_partition:
7×7 windows on every stage, maps padded to whole windows — the work and the parameters of mtl's dense
Swin —, LayerNorm on its outputs as the dense Swin) by default, the optimised implementation a user would run; --backbone spec
uses the from-spec float32 SwinDense of tools/ref_layers.py instead (pad-then-roll windows, as mtl).
Tasks as mtl's bench for KEM: seg (13 classes, CE ignore -1) and depth (L1 on depth > 0); Adam lr 1e-4
over the decoder's parameters.

Usage: python3 tools/bench_kem_torch.py --batch 4 --height 128 --wide 256 --threads 2 [--kem-mixer skem]
Prints one JSON line with the median and minimum milliseconds per step.
"""
import functools
import os
import sys

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kem_reference as K  # noqa: E402
import ref_layers  # noqa: E402
from bench_torch_common import bench_batch, bench_parser, report, time_steps  # noqa: E402


class TimmSwinS(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.body = timm.create_model("swin_small_patch4_window7_224", pretrained=False, features_only=True,
                                      img_size=size, always_partition=True)
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in (96, 192, 384, 768))

    def forward(self, x):
        return [n(f).permute(0, 3, 1, 2) for n, f in zip(self.norms, self.body(x))]


def main():
    p = bench_parser(height=128, wide=256, batch=4, channels_last=False)
    p.add_argument("--kem-mixer", default="memory", choices=("memory", "skem", "cross_attention", "none"))
    p.add_argument("--backbone", default="timm", choices=("timm", "spec"))
    a = p.parse_args()
    torch.manual_seed(0)
    # The reference is float64 by design; in float32 the shift masks must be float32 too, built once per grid.
    ref_layers.DTYPE = torch.float32
    ref_layers.shift_mask = functools.lru_cache(maxsize=None)(ref_layers.shift_mask)
    size = (a.height, a.wide)
    backbone = (TimmSwinS(size) if a.backbone == "timm" else ref_layers.SwinDense("swin_s")).float().eval()
    for q in backbone.parameters():
        q.requires_grad_(False)
    mixer = "memory" if a.kem_mixer == "skem" else a.kem_mixer
    kw = dict(stable=a.kem_mixer == "skem") if mixer == "memory" else {}
    decoder = K.KEMDecoder({"seg": 13, "depth": 1}, mixer=mixer, **kw).float()
    torch.set_num_threads(a.threads)   # after the imports: ref_layers sets 1 thread for the float64 checks
    opt = torch.optim.Adam([q for q in decoder.parameters()], lr=1e-4)
    x, (seg, depth, _) = bench_batch(a.batch, a.height, a.wide)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            feats = backbone(x)
        out = decoder(feats, size)
        valid = depth > 0
        loss = F.cross_entropy(out["seg"], seg, ignore_index=-1) + (out["depth"] - depth).abs()[valid].mean()
        loss.backward()
        opt.step()

    # KEM-R's log_vars are the paper's uncertainty weighting, which mtl runs as the `uw` method (its state is
    # not a model parameter); under ew they get no gradient here, and they are not counted.
    trainable = [q for n, q in decoder.named_parameters() if not n.startswith("log_vars")]
    report(time_steps(step, a.steps), model="kem-swin_s", kem_mixer=a.kem_mixer, backbone=a.backbone,
           parameters=sum(q.numel() for q in backbone.parameters()) + sum(q.numel() for q in trainable),
           trainable_parameters=sum(q.numel() for q in trainable), batch=a.batch, height=a.height,
           width_px=a.wide, threads=a.threads)


if __name__ == "__main__":
    main()
