#!/usr/bin/env python3
"""From-spec float64 PyTorch reference of TIF-R (Task-Interaction-Free network, ACM MM 2024),
written from the paper's equations (/work/shared/papers/tif-task-interaction-free.txt) and the
design document's reconstruction (SEED-ARCHITECTURES.md §4); no public code exists and nothing
here is taken from mtl's Swift code.  docs/ARCHITECTURES.md describes every equation, switch and
confidence tag.  Only for cross-checks and counting; never used in training.

  python3 tools/tif_reference.py --count --backbone hrnet18s|swin_t --tasks nyud|pascal \
      [--no-saff] [--no-sfd] [--no-lthd] [--saff-scales 2,3] [--sal-channels 1|2] [--table]

Importable pieces (all float64, BatchNorm with batch statistics):
  SAFF(channels, widths)           the shared part: SAFF_i (SA + SEFF) for the four scales
  SFD(d, ntasks)                    self-feature distillation of one task at one scale (2 or 3)
  upsample_affinity(A3, g3, g2)     P25: 4-D bilinear resize of an affinity matrix
  LTHD(d)                           low-to-high diffusion of one task at one scale (0 or 1)
  Fuse(widths)                      final FeatureFuse (eq. 14)
  TIFDecoder(channels, tasks, ...)  SAFF + per-task decoders + heads (names decoder.*)
  TIFR(backbone, tasks, ...)        backbone + decoder
Use ref_layers.load_named / forward_backward to load weights by name and run forward + backward.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ref_layers import (BN, DTYPE, FFN, LN, Conv, Linear, SwinDense, avg_pool_to, count,  # noqa: E402
                        from_tokens, print_param_table, resize, to_tokens, trace_shapes)

TASKS = {
    "nyud": {"semseg": 40, "depth": 1, "normals": 3, "edge": 1},
    "pascal": {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3, "edge": 1},
}
BACKBONE_CHANNELS = {"hrnet18s": (18, 36, 72, 144), "swin_t": (96, 192, 384, 768)}
# parameter counts the design document uses for the backbones (HRNetV2-W18-Small-v2; Swin-T dense
# variant with norm0..3, no classifier)
BACKBONE_PARAMS = {"hrnet18s": 3_860_720, "swin_t": 27_520_698}


def default_widths(channels, cap=128):
    """d_i = min(C_i, 128) [RECON-M, fitted to the reported parameter totals]."""
    return tuple(min(c, cap) for c in channels)


# ----------------------------------------------------------------------------------------------
# SAFF = SA + SEFF (shared by all tasks), eqs. 2-5
# ----------------------------------------------------------------------------------------------
class SAFFScale(nn.Module):
    """SAFF_i for target scale i.

    SA:   XL = BN(Conv1x1(X_i -> d))                                     (text)
          Y  = BN(Conv1x1(cat_{j != i, ascending j} P_i(X_j) -> d))       (eq. 2; BN [RECON-M])
          P_i: coarser j > i bilinear (align_corners=False); finer j < i average pool 2^(i-j)
    SEFF: SFX = Conv(ReLU(Conv(cat[XL, Y]) )) + XL                        (eq. 3; 1x1 kernels [RECON-M])
          SP  = ReLU(DWConv3x3(SFX))                                      (eq. 4; groups = d)
          out = Conv1x1(SP)                                               (eq. 5; no residual)
    """

    def __init__(self, i, channels, d, sff_kernel=1, align_corners=False):
        super().__init__()
        self.i, self.align = i, align_corners
        other = sum(channels) - channels[i]
        self.xl = Conv(channels[i], d, 1, bias=False)
        self.xl_bn = BN(d)
        self.y = Conv(other, d, 1, bias=False)
        self.y_bn = BN(d)
        self.sff1 = Conv(2 * d, d, sff_kernel, bias=True)
        self.sff2 = Conv(d, d, sff_kernel, bias=True)
        self.dw = Conv(d, d, 3, bias=True, groups=d)
        self.mix = Conv(d, d, 1, bias=True)

    def align_scale(self, xs):
        size = xs[self.i].shape[-2:]
        out = []
        for j, x in enumerate(xs):
            if j == self.i:
                continue
            out.append(resize(x, size, self.align) if j > self.i else avg_pool_to(x, size))
        return torch.cat(out, 1)

    def forward(self, xs):
        xl = self.xl_bn(self.xl(xs[self.i]))
        y = self.y_bn(self.y(self.align_scale(xs)))
        sfx = self.sff2(F.relu(self.sff1(torch.cat([xl, y], 1)))) + xl
        sp = F.relu(self.dw(sfx))
        return self.mix(sp)


class Reduce(nn.Module):
    """Stand-in for a scale without SAFF (ablation): BN(Conv1x1(X_i -> d_i))  [OURS]."""

    def __init__(self, c, d):
        super().__init__()
        self.conv = Conv(c, d, 1, bias=False)
        self.bn = BN(d)

    def forward(self, x):
        return self.bn(self.conv(x))


class SAFF(nn.Module):
    """The shared SAFF applied to the four backbone scales; names s0..s3.  Scales not listed in
    `scales` get the Reduce stand-in (Table 9's 'W/2 SAFF' is scales=(2, 3); no SAFF is ())."""

    def __init__(self, channels, widths=None, scales=(0, 1, 2, 3), sff_kernel=1, align_corners=False):
        super().__init__()
        widths = widths or default_widths(channels)
        self.scales = tuple(scales)
        for i in range(4):
            m = SAFFScale(i, channels, widths[i], sff_kernel, align_corners) if i in self.scales \
                else Reduce(channels[i], widths[i])
            setattr(self, f"s{i}", m)

    def forward(self, *xs):
        xs = list(xs[0]) if len(xs) == 1 and isinstance(xs[0], (list, tuple)) else list(xs)
        return [getattr(self, f"s{i}")(xs) if i in self.scales else getattr(self, f"s{i}")(xs[i])
                for i in range(4)]


# ----------------------------------------------------------------------------------------------
# SFD (scales 2, 3), eqs. 6-10
# ----------------------------------------------------------------------------------------------
class SFD(nn.Module):
    """Self-feature distillation of one task at one low scale.

    T    = LN(flat(X))                        ('Flat' = flatten + normalisation)
    Q    = T W_q                              (eq. 7)
    K = V = sum_{n=1..N} T W_n                (eq. 6; N = number of tasks; kv_single: one matrix)
    A    = Q K^T  (* 1/sqrt(d) if scale)     (eq. 8 writes Q x K without scaling: default unscaled;
                                               scale=True is the design document's reading)
    RX   = softmax_rows(A) V + flat(X)        (eq. 9)
    RX   = RX + FFN(LN(RX))                   (eq. 10; pre-norm FFN, ratio 4, GELU)
    returns RX as [B, d, h, w] and the logits A [B, L, L]
    """

    def __init__(self, d, ntasks, ffn_ratio=4, scale=False, kv_single=False):
        super().__init__()
        self.d, self.scale = d, scale
        self.norm = LN(d)
        self.q = Linear(d, d)
        self.kv = nn.ModuleList(Linear(d, d) for _ in range(1 if kv_single else ntasks))
        self.ffn = FFN(d, ffn_ratio, norm=True)

    def forward(self, x):
        b, c, h, w = x.shape
        f = to_tokens(x)
        t = self.norm(f)
        q = self.q(t)
        kv = sum(lin(t) for lin in self.kv)
        a = q @ kv.transpose(1, 2)
        if self.scale:
            a = a / math.sqrt(self.d)
        rx = a.softmax(-1) @ kv + f
        rx = rx + self.ffn(rx)
        return from_tokens(rx, h, w), a


# ----------------------------------------------------------------------------------------------
# LTHD (scales 0, 1), eqs. 11-13
# ----------------------------------------------------------------------------------------------
def upsample_affinity(a, grid_from, grid_to, align_corners=False):
    """P25: A [B, (h*w), (h*w)] on grid_from=(h, w) -> [B, (H*W), (H*W)] on grid_to=(H, W):
    bilinear over the key grid, then over the query grid (the two commute)."""
    b = a.shape[0]
    (h, w), (hh, ww) = grid_from, grid_to
    lf, lt = h * w, hh * ww
    x = resize(a.reshape(b, lf, h, w), (hh, ww), align_corners).reshape(b, lf, lt)   # [B, q_from, k_to]
    x = x.transpose(1, 2).reshape(b, lt, h, w)                                      # [B, k_to, q_from grid]
    x = resize(x, (hh, ww), align_corners).reshape(b, lt, lt)                        # [B, k_to, q_to]
    return x.transpose(1, 2)                                                        # [B, q_to, k_to]


class LTHD(nn.Module):
    """Low-to-high diffusion of one task at one high scale h.

    P   = flat(AvgPool(X_h -> grid of A0))                  L2 x d
    R   = softmax_rows(A0) (P W + b)                         (eq. 12; transpose=True: softmax_rows(A0)^T)
    RX  = BN(Conv_k([Bilinear_{->H_h x W_h}(FFN(LN(R))) ; X_h] -> d))     (eq. 13, FeatureFuse = conv + BN)
    """

    def __init__(self, d, ffn_ratio=4, fuse_kernel=1, transpose=False, align_corners=False):
        super().__init__()
        self.transpose, self.align = transpose, align_corners
        self.proj = Linear(d, d)
        self.ffn = FFN(d, ffn_ratio, norm=True)
        self.fuse = Conv(2 * d, d, fuse_kernel, bias=False)
        self.fuse_bn = BN(d)

    def forward(self, x, a0, grid):
        b, c, h, w = x.shape
        p = to_tokens(avg_pool_to(x, grid))
        s = a0.softmax(-1)
        if self.transpose:
            s = s.transpose(1, 2)
        r = s @ self.proj(p)
        r = from_tokens(self.ffn(r), *grid)
        return self.fuse_bn(self.fuse(torch.cat([resize(r, (h, w), self.align), x], 1)))


# ----------------------------------------------------------------------------------------------
# final fusion (eq. 14) and heads
# ----------------------------------------------------------------------------------------------
class Fuse(nn.Module):
    """FX = BN(Conv3x3([RX0; Up(RX1); Up(RX2); Up(RX3)] -> d0)) (+ ReLU if relu=True)."""

    def __init__(self, widths, out=None, kernel=3, relu=False, align_corners=False):
        super().__init__()
        self.relu, self.align = relu, align_corners
        self.conv = Conv(sum(widths), out or widths[0], kernel, bias=False)
        self.bn = BN(out or widths[0])

    def forward(self, *rx):
        rx = list(rx[0]) if len(rx) == 1 and isinstance(rx[0], (list, tuple)) else list(rx)
        size = rx[0].shape[-2:]
        y = self.bn(self.conv(torch.cat([rx[0]] + [resize(r, size, self.align) for r in rx[1:]], 1)))
        return F.relu(y) if self.relu else y


class TaskDecoder(nn.Module):
    """Per-task decoder: SFD at scales 2, 3; LTHD at scales 0, 1; Fuse; 1x1 head."""

    def __init__(self, widths, ntasks, out, sfd=True, lthd=True, ffn_ratio=4, sfd_scale=False, kv_single=False,
                 lthd_transpose=False, fuse_relu=False, align_corners=False):
        super().__init__()
        self.use_sfd, self.use_lthd, self.align = sfd, lthd and sfd, align_corners
        if sfd:
            self.sfd = nn.Module()
            for i in (2, 3):
                setattr(self.sfd, f"s{i}", SFD(widths[i], ntasks, ffn_ratio, sfd_scale, kv_single))
        if self.use_lthd:
            self.lthd = nn.Module()
            for i in (0, 1):
                setattr(self.lthd, f"s{i}", LTHD(widths[i], ffn_ratio, 1, lthd_transpose, align_corners))
        self.fuse = Fuse(widths, relu=fuse_relu, align_corners=align_corners)
        self.head = Conv(widths[0], out, 1, bias=True)

    def forward(self, xh, image_size):
        rx = list(xh)
        if self.use_sfd:
            rx[2], a2 = self.sfd.s2(xh[2])
            rx[3], a3 = self.sfd.s3(xh[3])
            if self.use_lthd:
                g2, g3 = tuple(xh[2].shape[-2:]), tuple(xh[3].shape[-2:])
                a0 = upsample_affinity(a3, g3, g2, self.align) + a2          # eq. 11
                rx[0] = self.lthd.s0(xh[0], a0, g2)
                rx[1] = self.lthd.s1(xh[1], a0, g2)
        y = self.head(self.fuse(rx))
        return resize(y, image_size, self.align)


class TIFDecoder(nn.Module):
    """Everything after the backbone.  Parameter names (named_parameters() gives them directly,
    prefix `decoder.` inside TIFR): saff.s<i>.<layer>.*, sfd.<task>.s<i>.*, lthd.<task>.s<i>.*,
    fuse.<task>.*, head.<task>.*  — the per-task TaskDecoder objects share these modules."""

    def __init__(self, channels, tasks, widths=None, saff=True, sfd=True, lthd=True, saff_scales=(0, 1, 2, 3),
                 ffn_ratio=4, sfd_scale=False, kv_single=False, lthd_transpose=False, fuse_relu=False,
                 align_corners=False):
        super().__init__()
        self.tasks = dict(tasks)
        widths = widths or default_widths(channels)
        self.saff = SAFF(channels, widths, saff_scales if saff else (), 1, align_corners)
        decs = {t: TaskDecoder(widths, len(self.tasks), o, sfd, lthd, ffn_ratio, sfd_scale, kv_single,
                               lthd_transpose, fuse_relu, align_corners) for t, o in self.tasks.items()}
        if sfd:
            self.sfd = nn.ModuleDict({t: d.sfd for t, d in decs.items()})
        if sfd and lthd:
            self.lthd = nn.ModuleDict({t: d.lthd for t, d in decs.items()})
        self.fuse = nn.ModuleDict({t: d.fuse for t, d in decs.items()})
        self.head = nn.ModuleDict({t: d.head for t, d in decs.items()})
        self.__dict__["task"] = decs          # plain dict: not registered a second time

    def forward(self, feats, image_size):
        xh = self.saff(feats)
        return {t: dec(xh, image_size) for t, dec in self.task.items()}

    def stable_names(self):
        """module path -> stable name (identical up to the `decoder.` prefix)."""
        return {n: "decoder." + n for n, _ in self.named_parameters()}


class TIFR(nn.Module):
    def __init__(self, backbone="hrnet18s", tasks="nyud", sal_channels=1, **kw):
        super().__init__()
        t = dict(TASKS[tasks]) if isinstance(tasks, str) else dict(tasks)
        if "sal" in t:
            t["sal"] = sal_channels
        self.backbone_name = backbone
        self.backbone = make_backbone(backbone)
        self.decoder = TIFDecoder(BACKBONE_CHANNELS[backbone], t, **kw)

    def forward(self, img):
        return self.decoder(self.backbone(img), tuple(img.shape[-2:]))


def make_backbone(name):
    if name == "swin_t":
        return SwinDense("swin_t")
    if name == "hrnet18s":
        try:
            import hrnet_reference as hr  # tools/hrnet_reference.py (from-spec HRNetV2, bilinear fuse)
            net = hr.SpecHRNet(hr.ARCHS["w18_small"]).to(DTYPE)
            return net
        except SystemExit:  # hrnet_reference exits 77 without h5py
            return None
    raise ValueError(name)


def backbone_count(name, module):
    return count(module) if module is not None else BACKBONE_PARAMS[name]


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def counts(backbone, tasks, saff=True, sfd=True, lthd=True, saff_scales=(0, 1, 2, 3), sal_channels=1,
           with_backbone_module=True, **kw):
    t = dict(TASKS[tasks])
    if "sal" in t:
        t["sal"] = sal_channels
    dec = TIFDecoder(BACKBONE_CHANNELS[backbone], t, saff=saff, sfd=sfd, lthd=lthd, saff_scales=saff_scales, **kw)
    bb = make_backbone(backbone) if with_backbone_module else None
    res = {"backbone": backbone_count(backbone, bb), "saff (shared)": count(dec.saff)}
    first = next(iter(dec.task.values()))
    res["per task: sfd"] = count(first.sfd) if first.use_sfd else 0
    res["per task: lthd"] = count(first.lthd) if first.use_lthd else 0
    res["per task: fuse"] = count(first.fuse)
    res["heads (all tasks)"] = count(dec.head)
    res["decoder"] = count(dec)
    res["total"] = res["backbone"] + res["decoder"]
    return res, dec, bb


def shapes(backbone, tasks, size):
    ch = BACKBONE_CHANNELS[backbone]
    dec = TIFDecoder(ch, TASKS[tasks])
    feats = [torch.randn(1, c, -(-size[0] // 2 ** (i + 2)), -(-size[1] // 2 ** (i + 2)), dtype=DTYPE)
             for i, c in enumerate(ch)]
    t0 = next(iter(dec.tasks))
    names = [f"saff.s{i}" for i in range(4)] + [f"sfd.{t0}.s3", f"sfd.{t0}.s2", f"lthd.{t0}.s0",
                                                 f"lthd.{t0}.s1", f"fuse.{t0}", f"head.{t0}"]
    print(f"TIF-R {backbone} {tasks} at {size[0]}x{size[1]}; backbone features", [tuple(f.shape) for f in feats])
    for n, s in trace_shapes(dec, lambda: dec(feats, size), names):
        print(f"  {n:<22} -> {s}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", action="store_true", help="print parameter counts")
    ap.add_argument("--table", action="store_true", help="print the decoder's parameter table")
    ap.add_argument("--backbone", choices=sorted(BACKBONE_CHANNELS), default="hrnet18s")
    ap.add_argument("--tasks", choices=sorted(TASKS), default="nyud")
    ap.add_argument("--no-saff", action="store_true")
    ap.add_argument("--no-sfd", action="store_true", help="implies --no-lthd (LTHD needs SFD's affinities)")
    ap.add_argument("--no-lthd", action="store_true")
    ap.add_argument("--saff-scales", default="0,1,2,3", help="scales with SAFF (Table 9: '2,3')")
    ap.add_argument("--sal-channels", type=int, default=1, help="saliency outputs (1 as counted; ATRC uses 2)")
    ap.add_argument("--kv-single", action="store_true", help="one K/V matrix instead of N (eq. 6)")
    ap.add_argument("--sfd-scale", action="store_true", help="scale A by 1/sqrt(d) (design reading of eq. 8)")
    ap.add_argument("--fuse-relu", action="store_true", help="ReLU after the final FeatureFuse (design reading)")
    ap.add_argument("--lthd-transpose", action="store_true", help="softmax_rows(A0)^T in eq. 12")
    ap.add_argument("--shapes", default=None, metavar="HxW",
                    help="run the decoder (batch 1) on random backbone-shaped features and print the data flow")
    a = ap.parse_args(argv)
    if a.shapes:
        return shapes(a.backbone, a.tasks, tuple(int(v) for v in a.shapes.split("x")))
    scales = tuple(int(s) for s in a.saff_scales.split(",") if s != "")
    res, dec, bb = counts(a.backbone, a.tasks, not a.no_saff, not a.no_sfd, not a.no_lthd, scales,
                          a.sal_channels, kv_single=a.kv_single, sfd_scale=a.sfd_scale,
                          fuse_relu=a.fuse_relu, lthd_transpose=a.lthd_transpose)
    if a.no_sfd and not a.no_lthd:
        print("note: --no-sfd turns LTHD off too (no affinities to diffuse)")
    print(f"TIF-R {a.backbone} {a.tasks} tasks={list(dec.tasks)} outputs={list(dec.tasks.values())} "
          f"SAFF={'off' if a.no_saff else scales} SFD={'off' if a.no_sfd else 'on'} "
          f"LTHD={'off' if (a.no_lthd or a.no_sfd) else 'on'}")
    src = "module" if bb is not None else "design-document stand-in"
    for k, v in res.items():
        extra = f"   ({src})" if k == "backbone" else ""
        print(f"  {k:<20} {v:>12,}{extra}")
    if a.table or not a.count:
        names = dec.stable_names()
        rows = [(names[n], list(p.shape), p.numel()) for n, p in dec.named_parameters()]
        w = max(len(r[0]) for r in rows)
        for n, s, k in rows:
            print(f"  {n:<{w}}  {str(s):<22} {k:>10,}")
        print(f"  {'decoder total':<{w}}  {'':<22} {sum(r[2] for r in rows):>10,}")


if __name__ == "__main__":
    main()
