#!/usr/bin/env python3
"""Float64 PyTorch reference of mtl's HRNet backbones, for the cross-check tests (never used in training).

  python3 tools/hrnet_reference.py EXCHANGE.h5 timm|spec

Reads from EXCHANGE.h5: attributes `arch` (w18_small | w18) and `train` (1: BatchNorm in training
mode, 0: running statistics); datasets `state/<name>` (the backbone's parameters and BN buffers under
the checkpoint names: conv1.weight, layer1.0.bn1.running_mean, stage2.0.fuse_layers.0.1.0.weight, ...),
`x` [N, 3, H, W] and `dy0`..`dy3` (upstream gradients of the four outputs). Writes into the same
file `y0`..`y3` (the outputs, strides 4/8/16/32) and `dx` = ∂(Σ_s <dy_s, y_s>)/∂x, and the same
computed by torch in float32 (`y0_f32`.., `dx_f32`), and the parameter gradients `grad/<name>`,
`grad_f32/<name>`. The float32 results (not computed with `relu_mask`) tell how far float32 itself
is from float64 on this network and input.

With `relu_mask/0`, `relu_mask/1`, ... in EXCHANGE.h5 (mtl's ReLU outputs > 0, one per ReLU call in
forward order; `spec` only), the float64 network is also run with those decisions instead of its own
signs (`y<s>_masked`, `dx_masked`, `grad_masked/<name>`; attributes `relu_calls`, `relu_flips`). A
ReLU input within float32 rounding of 0 may be decided either way, and one such decision can move a
gradient by percents (through batch statistics and cancelling sums); on mtl's decisions the float64
gradients are those of the same piecewise-linear branch, so mtl must agree with them to float32
accuracy. A decision that differs where |input| > 1e-4 of that ReLU's largest input means the calls
are out of order: exit status 1.

  timm: timm's hrnet_w18_small_v2 / hrnet_w18 (nearest fuse upsampling), weights loaded by name;
        every backbone key must be present, only the classification head's keys may be missing.
  spec: HRNetV2 written below from the mmseg / ATRC definition (bilinear fuse, align_corners=False:
        nn.Upsample(scale_factor=2^(j-i)) and then F.interpolate to branch i's size, which only
        acts when the input is not divisible by 32).

Exit status 77 when torch (or, for timm, timm) or h5py cannot be imported.
"""
import sys

try:
    import h5py
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:
    print(e)
    sys.exit(77)

ARCHS = {
    # layer1 Bottlenecks, HR modules of stages 2-4, BasicBlocks per branch, branch widths
    "w18_small": dict(layer1=2, modules=(1, 3, 2), blocks=2, widths=(18, 36, 72, 144), timm="hrnet_w18_small_v2"),
    "w18": dict(layer1=4, modules=(1, 4, 3), blocks=4, widths=(18, 36, 72, 144), timm="hrnet_w18"),
}
HEAD_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


def conv_bn(cin, cout, kernel, stride, relu):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*(layers + [nn.ReLU()] if relu else layers))


class Basic(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + x)


class Bottleneck(nn.Module):
    def __init__(self, cin, planes):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)
        self.downsample = None
        if cin != 4 * planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class HRModule(nn.Module):
    def __init__(self, widths, blocks):
        super().__init__()
        n = len(widths)
        self.branches = nn.ModuleList(nn.Sequential(*[Basic(c) for _ in range(blocks)]) for c in widths)
        rows = []
        for i in range(n):
            row = []
            for j in range(n):
                if j > i:
                    row.append(nn.Sequential(nn.Conv2d(widths[j], widths[i], 1, bias=False), nn.BatchNorm2d(widths[i]),
                                             nn.Upsample(scale_factor=2 ** (j - i), mode="bilinear", align_corners=False)))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    row.append(nn.Sequential(*[conv_bn(widths[j], widths[i] if k == i - j - 1 else widths[j], 3, 2,
                                                       k < i - j - 1) for k in range(i - j)]))
            rows.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(rows)

    def forward(self, xs):
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = 0
            for j, f in enumerate(row):
                t = f(xs[j])
                if j > i:
                    t = F.interpolate(t, size=xs[i].shape[2:], mode="bilinear", align_corners=False)
                y = y + t
            out.append(F.relu(y))
        return out


class Transition(nn.Module):
    def __init__(self, old, new):
        super().__init__()
        layers = [nn.Identity() if old[b] == new[b] else conv_bn(old[b], new[b], 3, 1, True) for b in range(len(old))]
        for b in range(len(old), len(new)):
            steps = b + 1 - len(old)
            layers.append(nn.Sequential(*[conv_bn(old[-1], new[b] if k == steps - 1 else old[-1], 3, 2, True)
                                          for k in range(steps)]))
        self.layers = nn.ModuleList(layers)
        self.old = len(old)

    def forward(self, xs):
        return [self.layers[b](xs[b]) for b in range(self.old)] + [l(xs[-1]) for l in self.layers[self.old:]]


class SpecHRNet(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False), nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(*[Bottleneck(64 if k == 0 else 256, 64) for k in range(a["layer1"])])
        previous = [256]
        for s in range(3):
            widths = list(a["widths"][: s + 2])
            # Transition's layers are registered as transitionS.<b> (not transitionS.layers.<b>).
            setattr(self, f"transition{s + 1}", Transition(previous, widths).layers)
            setattr(self, f"stage{s + 2}", nn.ModuleList(HRModule(widths, a["blocks"]) for _ in range(a["modules"][s])))
            previous = widths
        self.previous = [[256], list(a["widths"][:2]), list(a["widths"][:3])]

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        xs = [self.layer1(x)]
        for s in range(3):
            layers, old = getattr(self, f"transition{s + 1}"), len(self.previous[s])
            xs = [layers[b](xs[b]) for b in range(old)] + [l(xs[-1]) for l in list(layers)[old:]]
            for module in getattr(self, f"stage{s + 2}"):
                xs = module(xs)
        return xs


def forced_relu(masks):
    """An F.relu that multiplies call k's input by masks[k]; returns it and the list of flips per call."""
    flips = []

    def relu(v, inplace=False):
        k = len(flips)
        if k >= len(masks):
            sys.exit(f"relu_mask: mtl recorded {len(masks)} ReLU calls, the reference makes more")
        m = masks[k].to(v.dtype)
        if tuple(m.shape) != tuple(v.shape):
            sys.exit(f"relu_mask/{k}: shape {tuple(m.shape)}, but the reference's ReLU input is {tuple(v.shape)}")
        a = v.detach().abs()
        differ = (m > 0) != (v.detach() > 0)
        far = differ & (a > 1e-4 * a.max())
        if far.any():
            sys.exit(f"relu_mask/{k}: {int(far.sum())} decisions differ where |input| > 1e-4 of its largest (calls out of order?)")
        flips.append(int(differ.sum()))
        return v * m

    return relu, flips


def main():
    if len(sys.argv) != 3 or sys.argv[2] not in ("timm", "spec"):
        sys.exit(__doc__)
    path, kind = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    with h5py.File(path, "r") as f:
        arch = f.attrs["arch"]
        arch = arch.decode() if isinstance(arch, bytes) else str(arch)
        train = int(np.asarray(f.attrs["train"]).reshape(-1)[0]) == 1
        state = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in f["state"].items()}
        x = torch.from_numpy(np.asarray(f["x"], dtype=np.float64))
        dys = [torch.from_numpy(np.asarray(f[f"dy{s}"], dtype=np.float64)) for s in range(4)]
        masks = [torch.from_numpy(np.asarray(f["relu_mask"][str(k)], dtype=np.float64)) for k in range(len(f["relu_mask"]))] \
            if "relu_mask" in f else None
    a = ARCHS[arch]
    if kind == "timm":
        try:
            import timm
        except ImportError as e:
            print(e)
            sys.exit(77)
        model = timm.create_model(a["timm"], pretrained=False).double()
    else:
        model = SpecHRNet(a).double()
    # num_batches_tracked is an integer buffer in torch; mtl stores it as float.
    own = model.state_dict()
    state = {k: v.to(own[k].dtype).reshape(own[k].shape) if k in own else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(HEAD_PREFIXES)]
    if missing or unexpected:
        sys.exit(f"state mismatch: missing {missing[:10]} ({len(missing)}), unexpected {unexpected[:10]} ({len(unexpected)})")
    model.train(train)

    def run(dtype):
        m = model.to(dtype)
        m.load_state_dict(state, strict=False)   # the same starting statistics for both precisions
        xx = x.detach().to(dtype).requires_grad_(True)
        if kind == "timm":
            ys = m.stages(m.act2(m.bn2(m.conv2(m.act1(m.bn1(m.conv1(xx)))))))
        else:
            ys = m(xx)
        m.zero_grad()
        sum(torch.sum(y * dy.to(dtype)) for y, dy in zip(ys, dys)).backward()
        grads = {k: p.grad.double().clone() for k, p in m.named_parameters() if p.grad is not None}
        return [y.detach().double() for y in ys], xx.grad.double(), grads

    # The float32 yardstick is for the checks that do not take mtl's decisions.
    result32 = run(torch.float32) if masks is None else None
    result = run(torch.float64)
    if masks is not None:
        if kind != "spec":
            sys.exit("relu_mask: only the spec reference takes mtl's ReLU decisions")
        plain = F.relu
        F.relu, flips = forced_relu(masks)   # nn.ReLU calls F.relu too
        try:
            result_masked = run(torch.float64)
        finally:
            F.relu = plain
        if len(flips) != len(masks):
            sys.exit(f"relu_mask: mtl recorded {len(masks)} ReLU calls, the reference made {len(flips)}")
    def write(f, suffix, r):
        ys, dx, grads = r
        for s, y in enumerate(ys):
            f.create_dataset(f"y{s}{suffix}", data=y.numpy().astype(np.float32))
        f.create_dataset(f"dx{suffix}", data=dx.numpy().astype(np.float32))
        for k in grads:
            f.create_dataset(f"grad{suffix}/" + k, data=grads[k].numpy().astype(np.float32))

    with h5py.File(path, "a") as f:
        write(f, "", result)
        if result32 is not None:
            write(f, "_f32", result32)
        if masks is not None:
            write(f, "_masked", result_masked)
            f.attrs["relu_calls"] = len(flips)
            f.attrs["relu_flips"] = sum(flips)
    print(f"{kind} {arch}: {len(state)} tensors loaded, outputs {[tuple(y.shape) for y in result[0]]}")


if __name__ == "__main__":
    main()
