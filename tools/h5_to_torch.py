#!/usr/bin/env python3
"""Export an mtl checkpoint to PyTorch.

usage: tools/h5_to_torch.py CHECKPOINT.h5 OUT.pth

OUT.pth (torch.save) holds:
  state_dict    every model tensor under mtl's names (encoder.*, neck.*, heads.<task>.* or decoder.*), BatchNorm's
                num_batches_tracked added, for tools/mtl_torch.py's rebuild (strict=True)
  encoder       the encoder alone under its library's names, loading with strict=True into
                  resnetNN      torchvision's resnetNN(replace_stride_with_dilation=...); the classifier fc,
                                which mtl does not have, is included as zeros
                  hrnet18s/18   timm's hrnet_w18_small_v2 / hrnet_w18 with features_only=True,
                                feature_location='' (the backbone without the classification head)
                  swin_t/s/b    timm's swin_{tiny,small,base}_patch4_window7_224 with features_only=True
                                (layers_i.*, PatchMerging at the start of stage i+1); mtl's own names
                                are the official / mmseg dense layout (state_dict's encoder.*)
  encoder_norms Swin only: the dense variant's output norms norm0..norm3 (timm's features_only has none)
  heads         {task: the head's state_dict} for per-task heads (deeplab: torchvision's DeepLabHead names)
  neck          model.neck fpn: the FPN-lite neck's state_dict (neck.* without the prefix)
  decoder       the joint decoder's state_dict (model.decoder tif / kem / mtcp: decoder.* without the prefix;
                mtcp's intermediate heads are decoder.inter.<task>.<0|1>.*)
  config        the run's resolved config (YAML text), out_channels {task: channels}, step

The model is rebuilt and loaded with strict=True before saving, so an export that would not load
fails here with the missing or unexpected names; where timm is importable the encoder is also
loaded strictly into its timm model. Needs torch and h5py (torchvision for ResNets/DeepLab); exit
status 77 when they cannot be imported.
"""
import json
import os
import re
import sys

try:
    import h5py
    import numpy as np
    import torch
except ImportError as e:
    print(e, file=sys.stderr)
    sys.exit(77)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def classifier_key(head, task, state):
    """The tensor whose first dimension is the task's output channels."""
    if head == "kem":
        depth = f"decoder.head.{task}.conv3.weight"
        return depth if depth in state else f"decoder.head.{task}.conv2.weight"
    return {"deeplab": f"heads.{task}.4.weight", "bench": f"heads.{task}.out.weight",
            "multiscale": f"heads.{task}.last_layer.3.weight", "tif": f"decoder.head.{task}.weight",
            "mtcp": f"decoder.head.{task}.out.weight"}[head]


def swin_to_timm_features(encoder):
    """mtl's (official) Swin names → timm features_only names, and the output norms apart."""
    timm_state, norms = {}, {}
    for k, v in encoder.items():
        if re.match(r"^norm[0-3]\.", k):
            norms[k] = v
            continue
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k)
        timm_state[re.sub(r"^layers\.(\d+)\.", r"layers_\1.", k)] = v
    return timm_state, norms


def check_timm(c, encoder, norms):
    """Strict load of the encoder into its timm module (skipped with a note without timm)."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return "timm not importable: the strict load into timm was not checked"
    import mtl_torch
    name = c["model"]["encoder"]
    if name in mtl_torch.HRNET_TIMM:
        mtl_torch.timm_hrnet(name).load_state_dict(encoder, strict=True)
        fuse = "" if c["model"].get("fuse_upsample") == "nearest" else \
            " (its fuse is nearest; this run's bilinear fuse is mmseg's: predict with mtl_torch.build)"
        return f"encoder loads strictly into timm's {mtl_torch.HRNET_TIMM[name][1]} (features_only, feature_location=''){fuse}"
    window, rule = mtl_torch._swin_options(c["model"])
    mtl_torch.timm_swin(name, window, rule, (224, 224)).load_state_dict(encoder, strict=True)
    return f"encoder loads strictly into timm's {mtl_torch.SWIN_TIMM[name]} (features_only); norm0..3 in encoder_norms"


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
    head = c["model"].get("decoder", c["model"].get("head"))
    out_channels = {}
    for t in tasks:
        key = classifier_key(head, t, state)
        if key not in state:
            raise SystemExit(f"{src}: missing {key} (head {head}, task {t})")
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
        raise SystemExit(f"{src}: does not load into the rebuilt {c['model']['encoder']}/{head} model: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    name = c["model"]["encoder"]
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    saved = {"state_dict": state, "config": config, "out_channels": out_channels, "step": int(meta.get("step", 0))}
    note = ""
    if name.startswith("resnet"):
        features = 512 if name in ("resnet18", "resnet34") else 2048
        encoder["fc.weight"] = torch.zeros(1000, features)
        encoder["fc.bias"] = torch.zeros(1000)
    elif name in mtl_torch.SWIN_TIMM:
        encoder, saved["encoder_norms"] = swin_to_timm_features(encoder)
    if name in mtl_torch.SWIN_TIMM or name in mtl_torch.HRNET_TIMM:
        note = "; " + check_timm(c, encoder, saved.get("encoder_norms"))
    saved["encoder"] = encoder
    neck = {k[len("neck."):]: v for k, v in state.items() if k.startswith("neck.")}
    if neck:
        saved["neck"] = neck
    if head in ("tif", "kem", "mtcp"):
        saved["decoder"] = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    else:
        saved["heads"] = {t: {k[len(f"heads.{t}."):]: v for k, v in state.items() if k.startswith(f"heads.{t}.")}
                          for t in tasks}
    torch.save(saved, out)
    print(f"{src} → {out}: {len(state)} tensors, {sum(v.numel() for v in state.values() if v.is_floating_point()):,} values; "
          f"tasks {out_channels}{note}")


if __name__ == "__main__":
    main()
