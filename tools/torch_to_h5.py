#!/usr/bin/env python3
"""Convert a torchvision ResNet checkpoint (.pth state_dict) into the HDF5 file `model.pretrained` reads.

One float32 dataset per tensor at the file root, named exactly as in the state_dict
(`conv1.weight`, `layer1.0.bn1.running_mean`, ...; `num_batches_tracked` as float32), so mtl's
encoder (torchvision names under `encoder.`) loads it directly. `fc.*` is kept but ignored by mtl.

  python3 tools/torch_to_h5.py resnet50-0676ba61.pth data/resnet50-imagenet.h5

Needs torch and h5py (pip install torch h5py). Not used at training time.
"""
import sys

import h5py
import numpy as np


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    import torch
    src, dst = sys.argv[1], sys.argv[2]
    state = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    with h5py.File(dst + ".tmp", "w") as f:
        for name, t in state.items():
            name = name[len("module."):] if name.startswith("module.") else name
            f.create_dataset(name, data=t.detach().cpu().numpy().astype(np.float32), track_times=False)
        f.attrs["source"] = src
        f.attrs["format"] = "torch-state-dict"
    import os
    os.replace(dst + ".tmp", dst)
    print(f"wrote {dst}: {len(state)} tensors")


if __name__ == "__main__":
    main()
