#!/usr/bin/env python3
"""Convert a Swin Transformer checkpoint (.pth) into the HDF5 file `model.pretrained` reads
(`model.encoder: swin_t|swin_s|swin_b`).

  python3 tools/swin_to_h5.py swin_tiny_patch4_window7_224.pth data/swin_t-imagenet.h5 --variant swin_t
  python3 tools/swin_to_h5.py swin_tiny_patch4_window7_224.pth data/swin_t-w12.h5 --variant swin_t --window 12

Accepted layouts (detected from the keys; `module.`, `backbone.` and `encoder.` prefixes are stripped,
a `model` or `state_dict` wrapper is unwrapped):
  * official Microsoft classification checkpoints (swin_tiny_patch4_window7_224.pth ...: {"model": ...},
    PatchMerging at the END of stage i as `layers.i.downsample` (i = 0..2), `norm`, `head`, and the
    buffers `relative_position_index`, `attn_mask`); timm 0.6-era state dicts have the same layout;
  * current timm (>= 0.9, e.g. 1.0.31 `swin_tiny_patch4_window7_224.ms_in1k`): PatchMerging at the
    START of stage i+1 as `layers.{i+1}.downsample`, `head.fc`, no buffers; also the `layers_{i}`
    names of a `features_only=True` model;
  * dense-prediction checkpoints (mmseg / Swin-Transformer-Semantic-Segmentation, MT-CP, MTFormer:
    official names with `backbone.` and the output norms `norm0..norm3`).

Written: one float32 dataset per encoder tensor at the file root, in mtl's (official) names:
patch_embed.*, layers.i.blocks.j.*, layers.i.downsample.* (i = 0..2), norm0..norm3. The output norms
are not in ImageNet checkpoints: they are written as the fresh init (weight 1, bias 0) and listed.
Relative-position bias tables are resized when --window differs from the checkpoint's window: bicubic
interpolation of the (2w-1)x(2w-1) grid per head (F.interpolate, align_corners=False), as the official
Swin and mmseg loaders and timm's resize_rel_pos_bias_table_simple do.

Deliberately ignored, and listed with their counts: the classifier (head.*, head.fc.*), the final
classification norm (norm.weight, norm.bias), the buffers *.relative_position_index and *.attn_mask
(recomputed), segmentation heads (decode_head.*, auxiliary_head.*). Any other key, a missing encoder
tensor or a wrong shape fails the conversion with a one-line message.

Needs torch and h5py (pip install torch h5py). Not used at training time.
"""
import argparse
import collections
import os
import re
import sys

import h5py
import numpy as np

VARIANTS = {
    "swin_t": (96, [2, 2, 6, 2], [3, 6, 12, 24]),
    "swin_s": (96, [2, 2, 18, 2], [3, 6, 12, 24]),
    "swin_b": (128, [2, 2, 18, 2], [4, 8, 16, 32]),
}
IGNORED = [
    (re.compile(r"^head\.(fc\.)?(weight|bias)$"), "head.* (classifier)"),
    (re.compile(r"^norm\.(weight|bias)$"), "norm.* (classification norm)"),
    (re.compile(r"\.relative_position_index$"), "*.relative_position_index (buffer)"),
    (re.compile(r"\.attn_mask$"), "*.attn_mask (buffer)"),
    (re.compile(r"^(decode_head|auxiliary_head)\."), "decode_head.* / auxiliary_head.* (segmentation heads)"),
]


def expected_shapes(variant, window):
    """mtl's encoder tensor names → shapes (SwinEncoder without prefix)."""
    c0, depths, heads = VARIANTS[variant]
    side = 2 * window - 1
    out = {"patch_embed.proj.weight": (c0, 3, 4, 4), "patch_embed.proj.bias": (c0,),
           "patch_embed.norm.weight": (c0,), "patch_embed.norm.bias": (c0,)}
    for i, (d, h) in enumerate(zip(depths, heads)):
        c = c0 << i
        for j in range(d):
            b = f"layers.{i}.blocks.{j}."
            out.update({b + "norm1.weight": (c,), b + "norm1.bias": (c,),
                        b + "attn.qkv.weight": (3 * c, c), b + "attn.qkv.bias": (3 * c,),
                        b + "attn.relative_position_bias_table": (side * side, h),
                        b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,),
                        b + "norm2.weight": (c,), b + "norm2.bias": (c,),
                        b + "mlp.fc1.weight": (4 * c, c), b + "mlp.fc1.bias": (4 * c,),
                        b + "mlp.fc2.weight": (c, 4 * c), b + "mlp.fc2.bias": (c,)})
        if i < 3:
            out.update({f"layers.{i}.downsample.norm.weight": (4 * c,), f"layers.{i}.downsample.norm.bias": (4 * c,),
                        f"layers.{i}.downsample.reduction.weight": (2 * c, 4 * c)})
        out.update({f"norm{i}.weight": (c,), f"norm{i}.bias": (c,)})
    return out


def unwrap(state):
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    out = {}
    for name, t in state.items():
        k = name
        for prefix in ("module.", "backbone.", "encoder."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = t
    return out


def detect_layout(keys):
    keys = [re.sub(r"^layers_(\d+)\.", r"layers.\1.", k) for k in keys]
    if any(k.startswith("layers.0.downsample.") for k in keys):
        return "official"   # also timm 0.6 and the dense-prediction code
    if any(k.startswith("layers.3.downsample.") for k in keys):
        return "timm"
    sys.exit("cannot tell the checkpoint layout: no layers.0.downsample.* (official / timm 0.6) "
             "and no layers.3.downsample.* (timm >= 0.9)")


def to_mtl_name(k, layout):
    k = re.sub(r"^layers_(\d+)\.", r"layers.\1.", k)
    if layout == "timm":
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k)
    return k


def resize_table(table, window, name):
    """[(2w-1)², heads] → [(2W-1)², heads] by bicubic interpolation of each head's grid."""
    import torch
    import torch.nn.functional as F
    n, heads = table.shape
    s1 = int(round(n ** 0.5))
    if s1 * s1 != n:
        sys.exit(f"{name}: relative_position_bias_table of {n} rows is not a square (2w-1)² grid")
    s2 = 2 * window - 1
    if s1 == s2:
        return table, None
    grid = table.double().permute(1, 0).reshape(1, heads, s1, s1)
    out = F.interpolate(grid, size=(s2, s2), mode="bicubic", align_corners=False)
    return out.reshape(heads, s2 * s2).permute(1, 0).contiguous(), (s1 + 1) // 2


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    p.add_argument("--window", type=int, default=7, help="mtl's model.swin.window (default 7)")
    a = p.parse_args()
    import torch
    state = unwrap(torch.load(a.src, map_location="cpu", weights_only=True))
    layout = detect_layout(state.keys())
    expected = expected_shapes(a.variant, a.window)
    kept, ignored, unknown, resized = {}, collections.Counter(), [], collections.Counter()
    for name, t in state.items():
        rule = next((label for rx, label in IGNORED if rx.search(name)), None)
        if rule:
            ignored[rule] += 1
            continue
        k = to_mtl_name(name, layout)
        if k not in expected:
            unknown.append(name)
            continue
        if k.endswith("relative_position_bias_table"):
            t, old = resize_table(t, a.window, name)
            if old:
                resized[f"window {old} → {a.window}"] += 1
        kept[k] = t
    if unknown:
        sys.exit(f"{a.src}: {len(unknown)} keys are neither Swin {a.variant} encoder tensors nor known to be ignorable: "
                 f"{unknown[:5]}")
    fresh = [k for k in expected if k not in kept and re.match(r"^norm[0-3]\.", k)]
    for k in fresh:
        kept[k] = torch.ones(expected[k]) if k.endswith("weight") else torch.zeros(expected[k])
    missing = [k for k in expected if k not in kept]
    wrong = [f"{k}: {tuple(kept[k].shape)} (expected {expected[k]})" for k in kept if tuple(kept[k].shape) != expected[k]]
    if missing or wrong:
        sys.exit(f"{a.src}: not a Swin {a.variant} backbone: {len(missing)} tensors missing {missing[:5]}, "
                 f"{len(wrong)} with the wrong shape {wrong[:5]}")
    with h5py.File(a.dst + ".tmp", "w") as f:
        for name in expected:
            f.create_dataset(name, data=kept[name].detach().cpu().double().numpy().astype(np.float32), track_times=False)
        f.attrs["source"] = a.src
        f.attrs["format"] = "torch-state-dict"
        f.attrs["layout"] = layout
    os.replace(a.dst + ".tmp", a.dst)
    print(f"wrote {a.dst}: {len(expected)} encoder tensors ({layout} layout, Swin {a.variant}, window {a.window}); "
          f"{len(expected) - len(fresh)} from the checkpoint")
    if fresh:
        print(f"initialised (not in the checkpoint): {', '.join(sorted({k.split('.')[0] for k in fresh}))} "
              f"as weight 1, bias 0 ({len(fresh)} tensors)")
    for what, n in sorted(resized.items()):
        print(f"resized relative_position_bias_table, {what}: {n} tensors (bicubic)")
    for group, n in sorted(ignored.items()):
        print(f"ignored {group}: {n} tensors")


if __name__ == "__main__":
    main()
