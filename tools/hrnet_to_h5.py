#!/usr/bin/env python3
"""Convert an HRNet checkpoint (.pth) into the HDF5 file `model.pretrained` reads
(`model.encoder: hrnet18s` with --arch w18_small, `hrnet18` with --arch w18).

  python3 tools/hrnet_to_h5.py hrnetv2_w18_small-b5a04e21.pth data/hrnet18s-imagenet.h5 --arch w18_small

Accepted layouts (the backbone names are the same in all of them): HRNet-Image-Classification /
openmmlab ImageNet files (hrnetv2_w18_small-b5a04e21.pth, used by ATRC), timm files
(hrnet_w18_small_v2-*.pth, hrnetv2_w18-*.pth), mmseg segmentor checkpoints ({"state_dict": ...} with a
`backbone.` prefix) and HRNet-Semantic-Segmentation checkpoints (`model.` prefix of its FullModel).
`module.` (DataParallel) is stripped first.

Written: one float32 dataset per backbone tensor at the file root, named as in the checkpoint
(conv1.weight, stage2.0.fuse_layers.0.1.1.running_mean, ...; num_batches_tracked as float32).
Ignored, and listed with their counts: the classification head (incre_modules.*, downsamp_modules.*,
final_layer.*, classifier.*), segmentation heads (decode_head.*, auxiliary_head.*, last_layer.*,
HRNet-Semantic-Segmentation's loss.*) and anything else outside the backbone. The conversion fails
when a backbone tensor of --arch is missing or has the wrong shape.

Needs torch and h5py (pip install torch h5py). Not used at training time.
"""
import argparse
import collections
import os
import sys

import h5py
import numpy as np


def backbone_shapes(arch):
    """Name → shape of every backbone tensor of `arch`, from the from-spec module of hrnet_reference.py."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import hrnet_reference
    model = hrnet_reference.SpecHRNet(hrnet_reference.ARCHS[arch])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--arch", choices=["w18_small", "w18"], required=True)
    a = p.parse_args()
    import torch
    state = torch.load(a.src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    expected = backbone_shapes(a.arch)
    kept, ignored = {}, collections.Counter()
    for name, t in state.items():
        key = name[len("module."):] if name.startswith("module.") else name
        for prefix in ("backbone.", "model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key in expected:
            kept[key] = t
        else:
            ignored[key.split(".")[0] + ".*" if "." in key else key] += 1
    missing = [k for k in expected if k not in kept]
    wrong = [f"{k}: {tuple(kept[k].shape)} (expected {expected[k]})" for k in kept
             if tuple(kept[k].shape) != expected[k] and kept[k].numel() != int(np.prod(expected[k]))]
    if missing or wrong:
        sys.exit(f"{a.src}: not an HRNet {a.arch} backbone: {len(missing)} tensors missing {missing[:5]}, "
                 f"{len(wrong)} with the wrong shape {wrong[:5]}")
    with h5py.File(a.dst + ".tmp", "w") as f:
        for name, t in kept.items():
            f.create_dataset(name, data=t.detach().cpu().numpy().astype(np.float32).reshape(expected[name]),
                             track_times=False)
        f.attrs["source"] = a.src
        f.attrs["format"] = "torch-state-dict"
    os.replace(a.dst + ".tmp", a.dst)
    print(f"wrote {a.dst}: {len(kept)} backbone tensors")
    for group, n in sorted(ignored.items()):
        print(f"ignored {group}: {n} tensors")


if __name__ == "__main__":
    main()
