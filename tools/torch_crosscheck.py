#!/usr/bin/env python3
"""Cross-check mtl's gradients with PyTorch on the bench network of ../shared/bench/torch_ref.py.

Reads an HDF5 file written by the mtl test (`params/<name>`, `grads/<name>`, `batch/{images,seg,depth,normals}`),
builds torch_ref's Encoder and Heads, loads mtl's parameters (same PyTorch names), runs the same batch with the
equal-weight sum of the three losses, and prints one JSON line: per tensor the relative error
||g_mtl - g_torch|| / ||g_torch||, and the losses. Usage: torch_crosscheck.py file.h5 path/to/torch_ref.py
"""
import importlib.util
import json
import sys

import h5py
import torch


def main():
    path, ref = sys.argv[1], sys.argv[2]
    spec = importlib.util.spec_from_file_location("torch_ref", ref)
    tr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tr)
    torch.set_num_threads(1)
    with h5py.File(path, "r") as f:
        width = int(f.attrs["width"][0])
        params = {k: torch.tensor(f["params"][k][()]) for k in f["params"]}
        grads = {k: torch.tensor(f["grads"][k][()]) for k in f["grads"]}
        x = torch.tensor(f["batch/images"][()])
        seg = torch.tensor(f["batch/seg"][()]).long()
        depth = torch.tensor(f["batch/depth"][()])
        normals = torch.tensor(f["batch/normals"][()])
    enc = tr.Encoder(width).double()
    heads = torch.nn.ModuleDict({"seg": tr.Head(enc.out_channels, 13), "depth": tr.Head(enc.out_channels, 1),
                                 "normals": tr.Head(enc.out_channels, 3)}).double()
    named = {"encoder." + k: v for k, v in enc.named_parameters()}
    named.update({"heads." + k: v for k, v in heads.named_parameters()})
    with torch.no_grad():
        for k, v in named.items():
            v.copy_(params[k.replace("/", ".")].double() if k in params else params[k])
    H, W = x.shape[2], x.shape[3]
    z = enc(x.double())
    preds = {k: h(z, (H, W)) for k, h in heads.items()}
    losses = tr.task_losses(preds, seg, depth.double(), normals.double())
    sum(losses).backward()
    out = {"losses": [float(l) for l in losses], "rel_err": {}}
    for k, v in named.items():
        g = v.grad.float()
        mine = grads[k]
        out["rel_err"][k] = float((mine - g).norm() / max(g.norm(), 1e-12))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
