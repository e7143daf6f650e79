#!/usr/bin/env python3
"""Turns a binary task of an existing mtdp-hdf5 file (default: saliency) into a noisy pseudo-auxiliary task.

The normal path is `mtl synth --noise-task TASK=SOURCE:KIND[:P]`, which writes the noisy task while it
generates the file (class maps, binary maps and depth; `replace` and `shuffle`; Philox-keyed, so the file
is a pure function of the flags), e.g. `mtl synth ... --tasks seg,depth,saliency --noise-task
saliency=saliency:replace:1.0` for what this tool does with --replace 1.0. This tool remains for
files `mtl synth` did not write (converted datasets); its draws (numpy PCG64) differ from mtl synth's.

Each valid pixel's label is replaced, with probability --replace (1.0 = pure noise), by a fair
random bit drawn from numpy's PCG64 seeded with --seed; ignore pixels (255) stay as they are.
The file is changed in place (work on a copy); the dataset gets the attributes
noise = "pure" (replace = 1) or "replace=<p>", noise_seed and noise_replace, so that a run's
data can be told apart from the clean labels. Training never runs Python: this is a data tool.

usage: tools/noisy_task.py FILE.h5 [--task saliency] [--replace 1.0] [--seed 0] [--splits train,val]
"""
import argparse
import sys

import h5py
import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--task", default="saliency", help="a binary uint8 task (saliency or edges)")
    ap.add_argument("--replace", type=float, default=1.0, help="fraction of pixels replaced by a random bit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", default="train,val")
    a = ap.parse_args()
    if not 0.0 <= a.replace <= 1.0:
        sys.exit(f"error: --replace must be in [0, 1], found {a.replace}")
    rng = np.random.Generator(np.random.PCG64(a.seed))
    with h5py.File(a.file, "r+") as f:
        for split in a.splits.split(","):
            name = f"/{split}/{a.task}"
            if name not in f:
                sys.exit(f"error: {a.file}: no dataset {name} (make it with: mtl synth --tasks seg,depth,{a.task})")
            ds = f[name]
            if ds.dtype != np.uint8:
                sys.exit(f"error: {a.file}:{name}: expected uint8 binary labels, found {ds.dtype}")
            labels = ds[...]
            valid = labels != 255
            replace = valid & (rng.random(labels.shape) < a.replace)
            bits = rng.integers(0, 2, size=labels.shape, dtype=np.uint8)
            labels[replace] = bits[replace]
            ds[...] = labels
            ds.attrs["noise"] = "pure" if a.replace == 1.0 else f"replace={a.replace}"
            ds.attrs["noise_seed"] = str(a.seed)
            ds.attrs["noise_replace"] = str(a.replace)
            print(f"{name}: {int(replace.sum())} of {int(valid.sum())} valid pixels replaced by random bits")


if __name__ == "__main__":
    main()
