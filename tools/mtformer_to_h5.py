#!/usr/bin/env python3
"""Convert an MTFormer checkpoint (Xu et al., ECCV 2022, xiaogang00/MTFormer) into the HDF5 file
`model.pretrained` reads for KEM-R (`model.decoder: kem`; `model.kem.mixer: none` is MTFormer-T itself).

  python3 tools/mtformer_to_h5.py best_model.pth.tar data/mtformer-nyud.h5
  python3 tools/mtformer_to_h5.py checkpoint.pth.tar data/mtformer-pascal.h5 --tasks seg,parts,sal --skip-cross-task

Accepted: MTFormer's `best_model.pth.tar` (a state_dict) and `checkpoint.pth.tar` ({"model": ...,
"optimizer": ..., ...}), with or without DataParallel's `module.` prefix. The layout is read from the
keys: NYUD (transformer4/5 task encoders, transformer6/7 task stage) or PASCAL (transformer4_k,
transformer5_k, k = 1..3). Their key names and shapes (models/models_{nyud,pascal}_CL.py,
models/swim_transformer2.py) map onto mtl's KEM-R names:

  backbone.*                       → encoder.*             Swin dense (official names, norm0..3); the variant
                                                           (swin_t/s/b) is read from the shapes
  decoder.{weight,bias}            → decoder.reduce.*      the 1×1 reduction
  transformer1                     → decoder.shared
  transformer4 / 5, transformer4_k → decoder.task_enc.<task k>
  transformer6 / 7, transformer5_k → decoder.task_dec.<task k>   only where they are 256-d per-task stages
                                                           (MTFormer-T, no cross-task attention)
    inside each: patch_embed.* → patch_embed.* (allocated, unused), layers.0.blocks.b.* → blocks.b.*,
    norm0.* → norm.*
  project<k>  (Sequential)         → decoder.head.<task k> 0/1/3 → conv1/bn1/conv2 (segmentation, parts,
                                                           saliency); 0/2/4 → conv1/conv2/conv3 (depth)

--tasks names mtl's tasks in MTFormer's order (project1, project2, ...; MTFormer's own order is
semseg, human_parts, sal, depth: NYUD semseg,depth, PASCAL semseg,human_parts,sal, the defaults). A
depth head must be mtl's `depth` task and the other heads must not be (mtl picks a head by its name).

Deliberately ignored, and listed with their counts: log_var_list (the uncertainty weights: mtl's `uw`
method keeps its own, from 0), mapping<k>.* and contrast<k>.* (the contrastive-learning projections
and NCE memory banks), the buffers *.relative_position_index and *.attn_mask (recomputed). The
released MTFormer has a cross-task attention stage (transformer6/7, transformer5_k: Swin blocks over
the concatenated task features, `attn1`/`mlp2`/`mlp3*`, T·256 wide) that has no counterpart in
KEM-R: it is an error unless --skip-cross-task, which ignores it and leaves decoder.task_dec.* at
mtl's initialisation. Any other key, a missing tensor or a wrong shape fails with a one-line message.

Not in any MTFormer checkpoint, so they keep mtl's initialisation: the KEM memory module
(decoder.kem.*, mixer memory) or the cross-attention mixer (decoder.cross_attention.*).

Written: one float32 dataset per tensor at the file root under mtl's names (encoder.*, decoder.*);
`model.pretrained` then loads the encoder and every decoder tensor in the file. Needs torch and h5py.
"""
import argparse
import collections
import os
import re
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

IGNORED = [
    (re.compile(r"^log_var_list$"), "log_var_list (uncertainty weights; mtl's uw method keeps its own)"),
    (re.compile(r"^mapping\d+\."), "mapping*.* (contrastive projection heads)"),
    (re.compile(r"^contrast\d+\."), "contrast*.* (NCE memory banks)"),
    (re.compile(r"\.relative_position_index$"), "*.relative_position_index (buffer)"),
    (re.compile(r"\.attn_mask$"), "*.attn_mask (buffer)"),
]
LAYOUTS = {
    # task count, task-encoder stage names, task-stage names (256-d per task in MTFormer-T)
    "nyud": (2, ["transformer4", "transformer5"], ["transformer6", "transformer7"]),
    "pascal": (3, ["transformer4_1", "transformer4_2", "transformer4_3"],
               ["transformer5_1", "transformer5_2", "transformer5_3"]),
}
DEFAULT_TASKS = {"nyud": "semseg,depth", "pascal": "semseg,human_parts,sal"}


def fail(msg):
    sys.exit(msg)


def unwrap(state):
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    elif isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def transformer_shapes(d, heads, window, depth):
    """Names → shapes of one MTFormer 256-d transformer in mtl's TaskTransformer names."""
    out = {"patch_embed.proj.weight": (d, d, 4, 4), "patch_embed.proj.bias": (d,),
           "patch_embed.norm.weight": (d,), "patch_embed.norm.bias": (d,), "norm.weight": (d,), "norm.bias": (d,)}
    for b in range(depth):
        p = f"blocks.{b}."
        out.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,),
                    p + "attn.relative_position_bias_table": ((2 * window - 1) ** 2, heads),
                    p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
                    p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                    p + "norm2.weight": (d,), p + "norm2.bias": (d,),
                    p + "mlp.fc1.weight": (4 * d, d), p + "mlp.fc1.bias": (4 * d,),
                    p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,)})
    return out


def transformer_key(k):
    """An MTFormer transformer's inner key → mtl's TaskTransformer name (None: not a parameter of it)."""
    m = re.match(r"^layers\.0\.blocks\.(\d+)\.(.*)$", k)
    if m:
        return f"blocks.{m.group(1)}.{m.group(2)}"
    if k.startswith("norm0."):
        return "norm." + k[len("norm0."):]
    if k.startswith("patch_embed."):
        return k
    return None


def head_layout(state, name):
    """'depth' (Sequential 0/2/4) or 'segmentation' (0/1/3 with BatchNorm at 1) from project<k>'s keys."""
    if f"{name}.4.weight" in state:
        return "depth"
    if f"{name}.1.running_mean" in state:
        return "segmentation"
    fail(f"{name}: neither a depth head ({name}.4.weight) nor a segmentation head ({name}.1.running_mean)")


def head_map(kind):
    if kind == "depth":
        return {"0": "conv1", "2": "conv2", "4": "conv3"}
    return {"0": "conv1", "1": "bn1", "3": "conv2"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--tasks", help="mtl's task names in MTFormer's order (default: MTFormer's names)")
    p.add_argument("--skip-cross-task", action="store_true",
                   help="ignore the released model's cross-task attention stage (task_dec keeps mtl's init)")
    a = p.parse_args()
    import torch
    import swin_to_h5
    state = unwrap(torch.load(a.src, map_location="cpu", weights_only=True))
    layout = "pascal" if "transformer4_1.norm0.weight" in state else "nyud" if "transformer4.norm0.weight" in state else None
    if layout is None:
        fail(f"{a.src}: not an MTFormer checkpoint: neither transformer4.norm0.weight (NYUD) nor "
             f"transformer4_1.norm0.weight (PASCAL) is a key")
    ntasks, enc_names, dec_names = LAYOUTS[layout]
    tasks = (a.tasks or DEFAULT_TASKS[layout]).split(",")
    if len(tasks) != ntasks:
        fail(f"--tasks: the {layout} layout has {ntasks} tasks (project1..{ntasks}), found {len(tasks)}: {','.join(tasks)}")
    if "decoder.weight" not in state or "transformer1.layers.0.blocks.0.attn.relative_position_bias_table" not in state:
        fail(f"{a.src}: missing decoder.weight or transformer1.layers.0.blocks.0.attn.relative_position_bias_table")
    d = int(state["decoder.weight"].shape[0])
    table = state["transformer1.layers.0.blocks.0.attn.relative_position_bias_table"]
    heads, window = int(table.shape[1]), (int(round(table.shape[0] ** 0.5)) + 1) // 2
    depth = len({k.split(".")[4] for k in state if k.startswith("transformer1.layers.0.blocks.")})

    # Cross-task attention stage (the released MTFormer) or 256-d per-task stages (MTFormer-T)?
    cross_task = [n for n in dec_names if any(k.startswith(n + ".") and ".attn1." in k for k in state)]
    if cross_task and not a.skip_cross_task:
        fail(f"{a.src}: {', '.join(cross_task)} are MTFormer's cross-task attention stage ({cross_task[0]}.norm0: "
             f"{tuple(state[cross_task[0] + '.norm0.weight'].shape)}), which KEM-R's 256-d task decoders do not have; "
             f"--skip-cross-task imports the rest and leaves decoder.task_dec.* at mtl's initialisation")
    stages = {"transformer1": "decoder.shared"}
    stages.update({n: f"decoder.task_enc.{t}" for n, t in zip(enc_names, tasks)})
    if not cross_task:
        stages.update({n: f"decoder.task_dec.{t}" for n, t in zip(dec_names, tasks)})
    heads_by_name = {f"project{i + 1}": t for i, t in enumerate(tasks)}
    kinds = {}
    for name, t in heads_by_name.items():
        kinds[name] = head_layout(state, name)
        if (kinds[name] == "depth") != (t == "depth"):
            fail(f"{name}: a {kinds[name]} head, but mtl builds a {'depth' if t == 'depth' else 'segmentation'} head "
                 f"for task '{t}' (mtl's depth head is the task named depth): fix --tasks")

    kept, ignored, unknown = {}, collections.Counter(), []
    for key, t in state.items():
        rule = next((label for rx, label in IGNORED if rx.search(key)), None)
        if rule:
            ignored[rule] += 1
            continue
        top, _, rest = key.partition(".")
        if top == "backbone":
            name = "encoder." + rest
        elif top == "decoder":
            name = "decoder.reduce." + rest
        elif top in stages:
            inner = transformer_key(rest)
            name = f"{stages[top]}.{inner}" if inner else None
        elif top in cross_task:
            ignored[f"{top}.* (cross-task attention stage, --skip-cross-task)"] += 1
            continue
        elif top in heads_by_name:
            index, _, tail = rest.partition(".")
            layer = head_map(kinds[top]).get(index)
            name = f"decoder.head.{heads_by_name[top]}.{layer}.{tail}" if layer else None
        else:
            name = None
        if name is None:
            unknown.append(key)
            continue
        kept[name] = t
    if unknown:
        fail(f"{a.src}: {len(unknown)} keys are neither MTFormer tensors mtl maps nor known to be ignorable: {unknown[:5]}")
    # The backbone: mtl's Swin encoder names; the variant from the shapes.
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    variant = next((v for v in swin_to_h5.VARIANTS
                    if set(swin_to_h5.expected_shapes(v, window)) == {k for k in backbone if not k.endswith(
                        ("relative_position_index", "attn_mask"))}), None)
    if variant is None:
        fail(f"{a.src}: backbone.* is not a dense Swin-T/S/B with window {window} and norm0..norm3 "
             f"({len(backbone)} tensors)")
    expected = {"encoder." + k: s for k, s in swin_to_h5.expected_shapes(variant, window).items()}
    cin = sum(swin_to_h5.VARIANTS[variant][0] << i for i in (1, 2, 3))
    expected.update({"decoder.reduce.weight": (d, cin, 1, 1), "decoder.reduce.bias": (d,)})
    for mtl in stages.values():
        expected.update({f"{mtl}.{k}": s for k, s in transformer_shapes(d, heads, window, depth).items()})
    for name, t in heads_by_name.items():
        classes = state.get(f"{name}.{'4' if kinds[name] == 'depth' else '3'}.weight")
        c = int(classes.shape[0]) if classes is not None else 0
        h = f"decoder.head.{t}."
        if kinds[name] == "depth":
            expected.update({h + "conv1.weight": (128, d, 1, 1), h + "conv1.bias": (128,), h + "conv2.weight": (32, 128, 1, 1),
                             h + "conv2.bias": (32,), h + "conv3.weight": (c, 32, 1, 1), h + "conv3.bias": (c,)})
        else:
            expected.update({h + "conv1.weight": (d, d, 1, 1), h + "bn1.weight": (d,), h + "bn1.bias": (d,),
                             h + "bn1.running_mean": (d,), h + "bn1.running_var": (d,), h + "bn1.num_batches_tracked": (),
                             h + "conv2.weight": (c, d, 1, 1), h + "conv2.bias": (c,)})

    unknown = [k for k in kept if k not in expected]
    if unknown:
        fail(f"{a.src}: {len(unknown)} tensors do not fit the layout read from the checkpoint ({variant} backbone, "
             f"{depth} blocks per transformer): {unknown[:5]} (mtl's names)")
    missing = [k for k in expected if k not in kept]
    wrong = [f"{k}: {tuple(kept[k].shape)} (expected {expected[k]})" for k in kept if tuple(kept[k].shape) != expected[k]]
    if missing or wrong:
        fail(f"{a.src}: not an MTFormer {layout} checkpoint for tasks {','.join(tasks)}: {len(missing)} tensors missing "
             f"{missing[:5]}, {len(wrong)} with the wrong shape {wrong[:5]}")
    with h5py.File(a.dst + ".tmp", "w") as f:
        for name in expected:
            f.create_dataset(name, data=kept[name].detach().cpu().double().numpy().astype(np.float32), track_times=False)
        f.attrs["source"] = a.src
        f.attrs["format"] = "mtformer"
        f.attrs["tasks"] = ",".join(tasks)
    os.replace(a.dst + ".tmp", a.dst)
    print(f"wrote {a.dst}: {len(expected)} tensors ({layout} layout, backbone {variant}, d {d}, {heads} heads, window {window}, "
          f"{depth} blocks per transformer; tasks {','.join(tasks)})")
    print("not in the checkpoint (mtl's initialisation): decoder.kem.* / decoder.cross_attention.* (the mixer)"
          + (", decoder.task_dec.* (cross-task attention skipped)" if cross_task else ""))
    for group, n in sorted(ignored.items()):
        print(f"ignored {group}: {n} tensors")


if __name__ == "__main__":
    main()
