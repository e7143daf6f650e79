#!/usr/bin/env python3
"""Run one from-spec reference module (tools/tif_reference.py, tools/kem_reference.py,
tools/mtcp_reference.py, tools/ref_layers.py) on tensors given in an HDF5 exchange file, in float64, and write the outputs and
gradients back — so that a cross-check test needs no Python of its own.

  python3 tools/ref_exchange.py EXCHANGE.h5 [MORE.h5 ...]

Reads from EXCHANGE.h5:
  attribute `module`   e.g. "tif_reference.SAFF", "tif_reference.LTHD", "kem_reference.KEM", "mtcp_reference.CFM",
                       or a function such as "kem_reference.etf_from_gaussian", "kem_reference.topk_softmax",
                       "tif_reference.upsample_affinity"
  attribute `kwargs`   JSON object of constructor arguments (for a function: extra keyword arguments)
  attribute `call`     "args" (default: module(in/0, in/1, ...)) or "list" (module([in/0, in/1, ...]))
  attribute `forward_kwargs`  optional JSON object of extra forward arguments (e.g. {"grid": [2, 4]})
  datasets `state/<name>`     every parameter under the module's own names (nn.Modules only)
  datasets `in/<i>`           the inputs, i = 0, 1, ...
  datasets `dy/<i>`           optional cotangents of the flattened outputs; standard normal (seed 0) if absent
Writes `out/<i>`, `dx/<i>` (gradients of Σ <dy_i, out_i> w.r.t. the floating inputs), `grad/<name>`,
and `dy/<i>` if they were generated.  Exit status 77 when torch or h5py cannot be imported.
"""
import importlib
import json
import os
import sys

try:
    import h5py
    import numpy as np
    import torch
except ImportError as e:
    print(e)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_layers import DTYPE, forward_backward, load_named  # noqa: E402


def _indexed(group):
    return [torch.from_numpy(np.asarray(group[str(i)])).to(DTYPE if np.asarray(group[str(i)]).dtype.kind == "f"
                                                               else torch.long)
            for i in range(len(group))] if group is not None else []


def main(path):
    with h5py.File(path, "r+") as f:
        modname, attr = f.attrs["module"].rsplit(".", 1)
        target = getattr(importlib.import_module(modname), attr)
        kwargs = json.loads(f.attrs.get("kwargs", "{}"))
        fkw = json.loads(f.attrs.get("forward_kwargs", "{}"))
        as_list = f.attrs.get("call", "args") == "list"
        inputs = _indexed(f.get("in"))
        dy = _indexed(f.get("dy")) or None
        if isinstance(target, type) and issubclass(target, torch.nn.Module):
            module = target(**kwargs)
            state = {n: torch.from_numpy(np.asarray(d)) for n, d in _walk(f["state"])} if "state" in f else {}
            if state:
                load_named(module, state)
            call = (lambda m, *x: m(list(x), **fkw)) if as_list else (lambda m, *x: m(*x, **fkw))
        else:
            fn = target
            module = torch.nn.Module()
            call = (lambda m, *x: fn(list(x), **kwargs, **fkw)) if as_list else (lambda m, *x: fn(*x, **kwargs, **fkw))
        outs, dx, grads, cot = forward_backward(module, inputs, dy, seed=0, call=call)
        for g in ("out", "dx", "grad"):
            if g in f:
                del f[g]
        for i, o in enumerate(outs):
            f[f"out/{i}"] = o.numpy()
        for i, g in enumerate(dx):
            if g is not None:
                f[f"dx/{i}"] = g.numpy()
        for n, g in grads.items():
            f[f"grad/{n}"] = g.numpy()
        if dy is None:
            for i, c in enumerate(cot):
                f[f"dy/{i}"] = c.numpy()


def _walk(group, prefix=""):
    for k, v in group.items():
        if isinstance(v, h5py.Group):
            yield from _walk(v, prefix + k + ".")
        else:
            yield prefix + k, v


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    for p in sys.argv[1:]:
        main(p)
