#!/usr/bin/env python3
"""Export an mtl checkpoint to PyTorch.

usage: tools/h5_to_torch.py CHECKPOINT.h5 OUT.pth

OUT.pth (torch.save) holds:
  state_dict    every model tensor under mtl's names (encoder.*, heads.<task>.*), BatchNorm's
                num_batches_tracked added, for tools/mtl_torch.py's rebuild (strict=True)
  encoder       the encoder alone under its library's names; for a ResNet it loads with strict=True
                into torchvision's resnetNN(replace_stride_with_dilation=...) — the classifier fc,
                which mtl does not have, is included as zeros so that strict loading works
  heads         {task: the head's state_dict} (deeplab: torchvision's DeepLabHead names)
  config        the run's resolved config (YAML text), out_channels {task: channels}, step

The model is rebuilt and loaded with strict=True before saving, so an export that would not load
fails here with the missing or unexpected names. Needs torch and h5py (and torchvision for
ResNets/DeepLab); exit status 77 when they cannot be imported.
"""
import json
import os
import sys

try:
    import h5py
    import numpy as np
    import torch
except ImportError as e:
    print(e, file=sys.stderr)
    sys.exit(77)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def classifier_key(head, task):
    return {"deeplab": f"heads.{task}.4.weight", "bench": f"heads.{task}.out.weight",
            "multiscale": f"heads.{task}.last_layer.3.weight"}[head]


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1])
    src, out = sys.argv[1], sys.argv[2]
    import yaml
    import mtl_torch
    with h5py.File(src, "r") as f:
        if "meta" not in f.attrs:
            raise SystemExit(f"{src}: no 'meta' attribute (expected an mtl checkpoint)")
        meta = json.loads(f.attrs["meta"])
        state = {k[len("model."):]: torch.from_numpy(np.array(f[k][()], dtype=np.float32)) for k in f if k.startswith("model.")}
    if "config" not in meta:
        raise SystemExit(f"{src}: meta has no 'config' (expected a checkpoint written by mtl train)")
    config = meta["config"]
    c = yaml.safe_load(config)
    tasks = list(c["tasks"].keys())
    out_channels = {}
    for t in tasks:
        key = classifier_key(c["model"]["head"], t)
        if key not in state:
            raise SystemExit(f"{src}: missing {key} (head {c['model']['head']}, task {t})")
        out_channels[t] = int(state[key].shape[0])
    for k in list(state):
        if k.endswith(".running_mean"):
            state.setdefault(k[: -len("running_mean")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    for k, v in state.items():
        if v.dim() == 0 and k.endswith("num_batches_tracked"):
            state[k] = v.long()
    model = mtl_torch.build(config, out_channels)
    # Scalars stored as [] or [1] in HDF5: match the module's shapes before the strict load.
    reference = model.state_dict()
    for k, v in state.items():
        if k in reference and v.shape != reference[k].shape and v.numel() == reference[k].numel():
            state[k] = v.reshape(reference[k].shape).to(reference[k].dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(f"{src}: does not load into the rebuilt {c['model']['encoder']}/{c['model']['head']} model: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if c["model"]["encoder"].startswith("resnet"):
        features = 512 if c["model"]["encoder"] in ("resnet18", "resnet34") else 2048
        encoder["fc.weight"] = torch.zeros(1000, features)
        encoder["fc.bias"] = torch.zeros(1000)
    heads = {t: {k[len(f"heads.{t}."):]: v for k, v in state.items() if k.startswith(f"heads.{t}.")} for t in tasks}
    torch.save({"state_dict": state, "encoder": encoder, "heads": heads, "config": config,
                "out_channels": out_channels, "step": int(meta.get("step", 0))}, out)
    print(f"{src} → {out}: {len(state)} tensors, {sum(v.numel() for v in state.values() if v.is_floating_point()):,} values; "
          f"tasks {out_channels}")


if __name__ == "__main__":
    main()
