#!/usr/bin/env python3
"""From-spec float64 PyTorch reference of the MT-CP task decoders (Multi-Task Coherence and
Prioritisation, WACV 2025), written from the paper's equations
(/work/shared/papers/mt-cp-coherence-prioritization.txt) and the design document's module
equations (SEED-ARCHITECTURES.md §2.2-§2.5, §2.7).  Facts and tables were checked against the
official code (Klodivio355/MT-CP, snapshot 08c068e); no code is copied from it, and nothing here is
taken from mtl's Swift code.  docs/ARCHITECTURES.md §3 documents every equation, switch and
confidence tag.  Only for cross-checks and counting; never used in training.

  python3 tools/mtcp_reference.py --count [--tasks nyud|pascal|nyud4] [--variant code|paper] [--table]
  python3 tools/mtcp_reference.py --shapes 480x640 [--tasks ...] [--cfm-stride 4|8]

Everything after the shared representation z (256 × H/4 × W/4) is here; the Mask2Former backbone is
not (docs/ARCHITECTURES.md §3.7).  Importable pieces (float64, BatchNorm with batch statistics):
  CBAM(c)                             channel gate (avg+max MLP) then spatial gate (7×7 conv + BN)
  TaskTransformer(d, depths, heads)   the per-task pyramid transformer (dense Swin, no patch embedding)
  FPN(ins, d, variant)                PFF: lateral 1×1, nearest top-down, one 3×3 ('paper': dynamic weights)
  affinity_dense / affinity_chunked   P24: o = s · softmax_rows(θᵀφ)ᵀ, dense or by query blocks;
  affinity_chunked_backward           the explicit block-recomputing backward (what Swift implements)
  CFM(d, ntasks, ...)                 Coherence Fusion Module, T−1 gated auxiliary tasks
  SRM(pred_dim, back_dim, d)          Spatial Refinement Module (the code's SPF); TraceBack = 3 SRMs
  InterHead, FinalHead                intermediate (H/16, H/8) and final (H/4) prediction heads
  MTCPDecoder(dataset, ...)           all of it for T tasks, names decoder.<module>.<task>.<layer>.*
  task_loss, mtcp_loss, lps_weights   losses ('code' | 'paper') and the LPS closed form
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

from ref_layers import (BN, DTYPE, LN, Conv, Linear, SwinStage, count, from_tokens,  # noqa: E402
                        resize, to_tokens, trace_shapes)

# task -> (output channels, intermediate head kind (convs before BN), final head kind, final ×up (align_corners=True))
SPECS = {
    "nyud": {"semseg": (40, 2, "seg", 2), "depth": (1, 2, "depth", 2), "normals": (3, 2, "plain", 1)},
    "pascal": {"semseg": (21, 2, "seg", 4), "human_parts": (7, 1, "seg", 4), "sal": (1, 1, "plain", 1)},
    # [OURS] T = 4 on NYUD (edges added): the edge heads are built like the normals heads
    "nyud4": {"semseg": (40, 2, "seg", 2), "depth": (1, 2, "depth", 2), "normals": (3, 2, "plain", 1),
              "edge": (1, 2, "plain", 1)},
}
TASKS = {k: {t: v[0] for t, v in s.items()} for k, s in SPECS.items()}
# the released code's model-level scalars (log_var_list ×3, skip_gate, lambda_param, alpha_param), NYUD only
UNUSED_SCALARS = {"nyud": 6, "pascal": 0, "nyud4": 0}
# Appendix B / §2.5 acceptance numbers (per task unless stated)
TARGETS = {"transformer": 22_323_272, "fpn": 1_049_600, "cfm": 481_264, "srm": 3_370_040,
           "transformer (as in code)": 23_372_616, "fpn (as in code)": 2_229_760, "cfm (as in code)": 1_006_576,
           "srm (as in code)": 3_567_416,
           "nyud": {"used": 82_664_852, "code": 91_521_434, "inter": 812_120, "final": 180_204},
           "pascal": {"used": 82_420_391, "code": 91_276_967, "inter": 542_266, "final": 205_597}}
LPS_SPREAD = {"paper": 2.5, "code": {"nyud": 7.5, "pascal": 1.6}}
ETA = 1e-6


# ----------------------------------------------------------------------------------------------
# CBAM (models/cbam.py semantics; reduction 16, pools avg + max)
# ----------------------------------------------------------------------------------------------
class CBAM(nn.Module):
    """a_c = σ(MLP(avgpool x) + MLP(maxpool x)), MLP = fc2(ReLU(fc1(.))) shared by both pools; x' = x ⊙ a_c
    a_s = σ(BN(Conv7×7_{2→1, no bias}([max_c x'; mean_c x']))); CBAM(x) = x' ⊙ a_s   (BN: batch statistics)"""

    def __init__(self, c, reduction=16):
        super().__init__()
        r = max(c // reduction, 1)
        self.mlp = nn.Module()
        self.mlp.fc1 = Linear(c, r)
        self.mlp.fc2 = Linear(r, c)
        self.spatial = nn.Module()
        self.spatial.conv = Conv(2, 1, 7, bias=False)
        self.spatial.bn = BN(1)

    def forward(self, x):
        def mlp(v):
            return self.mlp.fc2(F.relu(self.mlp.fc1(v)))
        a = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))
        x = x * a[:, :, None, None]
        comp = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial.bn(self.spatial.conv(comp)))


# ----------------------------------------------------------------------------------------------
# per-task pyramid transformer (SwinTransformer2.forward2: no patch embedding, outputs norm0..2)
# ----------------------------------------------------------------------------------------------
class TaskTransformer(nn.Module):
    """Dense Swin on the tokens of z: stage s has dim d·2^s, depths (1,2,1), heads (2,2,2), window 7,
    PatchMerging after stages 0 and 1; r_s = LN_s(stage s output before merging), NCHW."""

    def __init__(self, d=256, depths=(1, 2, 1), heads=(2, 2, 2), window=7, allocate_unused=False):
        super().__init__()
        n = len(depths)
        if allocate_unused:      # the code allocates a 4×4 patch embedding that forward2 never runs
            self.patch_embed = nn.Module()
            self.patch_embed.proj = Conv(d, d, 4, bias=True, stride=4)
            self.patch_embed.norm = LN(d)
        self.layers = nn.ModuleList(SwinStage(d * 2 ** s, depths[s], heads[s], window, s < n - 1) for s in range(n))
        for s in range(n):
            setattr(self, f"norm{s}", LN(d * 2 ** s))

    def forward(self, z):
        h, w = z.shape[-2:]
        x = to_tokens(z)
        outs = []
        for s, stage in enumerate(self.layers):
            for blk in stage.blocks:
                x = blk(x, h, w)
            outs.append(from_tokens(getattr(self, f"norm{s}")(x), h, w))
            if stage.downsample is not None:
                x, h, w = stage.downsample(x, h, w)
        return outs


# ----------------------------------------------------------------------------------------------
# PFF / FPN
# ----------------------------------------------------------------------------------------------
class FPN(nn.Module):
    """code:  l_k = Conv1×1_k(r_k) (bias); f_2 = l_2; f_k = Nearest(f_{k+1} → size l_k) + l_k; e = Conv3×3(f_0) (bias)
    paper ('dynamic', [RECON-L]): f_k = a_k0 · Nearest(f_{k+1}) + a_k1 · l_k, (a_k0, a_k1) = softmax(β_k),
          β_k ∈ R² learned (init 0).  Nearest = PyTorch 'nearest': src = floor(dst · in / out)."""

    def __init__(self, ins=(256, 512, 1024), d=256, variant="code", allocate_unused=False):
        super().__init__()
        self.variant = variant
        self.lateral = nn.ModuleList(Conv(c, d, 1, bias=True) for c in ins)
        self.smooth = Conv(d, d, 3, bias=True)
        if allocate_unused:      # the code's fpn_convs[1], [2]: evaluated, then discarded
            self.smooth_unused = nn.ModuleList(Conv(d, d, 3, bias=True) for _ in ins[1:])
        if variant == "paper":
            self.dynamic = nn.ParameterList(nn.Parameter(torch.zeros(2, dtype=DTYPE)) for _ in ins[1:])
        elif variant != "code":
            raise ValueError(variant)

    def forward(self, rs):
        lat = [conv(r) for conv, r in zip(self.lateral, rs)]
        f = lat[-1]
        for k in range(len(lat) - 2, -1, -1):
            up = F.interpolate(f, size=lat[k].shape[-2:], mode="nearest")
            if self.variant == "paper":
                a = self.dynamic[k].softmax(0)
                f = a[0] * up + a[1] * lat[k]
            else:
                f = up + lat[k]
        return self.smooth(f)


# ----------------------------------------------------------------------------------------------
# P24: the CFM affinity (no 1/sqrt(d) scaling), dense and by query blocks
# ----------------------------------------------------------------------------------------------
def affinity_dense(theta, phi, s):
    """theta, phi [B, C, N] (queries, keys), s [B, D, N] (values) -> o [B, D, N],
    o[:, :, i] = Σ_j P[i, j] s[:, :, j],  P = softmax_rows(θᵀ φ) (N × N, row i = query pixel i)."""
    p = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)
    return s @ p.transpose(1, 2)


def affinity_chunked(theta, phi, s, chunk):
    """The same by blocks of `chunk` query pixels: memory B·chunk·N instead of B·N² (row max subtracted
    inside softmax). Differentiable by autograd; see affinity_chunked_backward for the explicit one."""
    n = theta.shape[-1]
    outs = []
    for i0 in range(0, n, chunk):
        logits = theta[:, :, i0:i0 + chunk].transpose(1, 2) @ phi            # [B, b, N]
        p = torch.softmax(logits, dim=-1)
        outs.append(s @ p.transpose(1, 2))                                   # [B, D, b]
    return torch.cat(outs, -1)


def affinity_chunked_backward(theta, phi, s, do, chunk):
    """Explicit backward of affinity_* for the cotangent do [B, D, N], recomputing P block by block:
    for a query block Q:  P_Q = softmax(θ_Qᵀ φ);  ds += do_Q P_Q;  G = do_Qᵀ s  (b × N);
    dlogits = P_Q ⊙ (G − rowsum(P_Q ⊙ G));  dθ_Q = φ dlogitsᵀ;  dφ += θ_Q dlogits.  Returns (dθ, dφ, ds)."""
    n = theta.shape[-1]
    dtheta, dphi, ds = torch.zeros_like(theta), torch.zeros_like(phi), torch.zeros_like(s)
    for i0 in range(0, n, chunk):
        tq = theta[:, :, i0:i0 + chunk]
        p = torch.softmax(tq.transpose(1, 2) @ phi, dim=-1)                  # [B, b, N]
        dq = do[:, :, i0:i0 + chunk]                                          # [B, D, b]
        ds += dq @ p
        g = dq.transpose(1, 2) @ s                                            # [B, b, N]
        dl = p * (g - (p * g).sum(-1, keepdim=True))
        dtheta[:, :, i0:i0 + chunk] = phi @ dl.transpose(1, 2)
        dphi += tq @ dl
    return dtheta, dphi, ds


# ----------------------------------------------------------------------------------------------
# CFM (the code's GAAF_module2, generalised to T − 1 auxiliary tasks)
# ----------------------------------------------------------------------------------------------
class CFM(nn.Module):
    """Inputs: the main task's e_t [B, d, h, w] and the other tasks' e_u (task-list order).
    s   = BN_s(CBAM_s(e_t))
    ã_u = e_u ⊙ σ(Conv1×1_gate_u(e_u))                       (one gate per auxiliary task, bias)
    f   = ReLU(Conv1×1_fuse([ã_u ...]))                       ((T−1)·d → 2d, bias)
    θ   = ReLU(BN_q(CBAM_q(f))),  φ = ReLU(BN_k(CBAM_k(f)))   (2d each)
    o   = s · softmax_rows(θᵀφ)ᵀ                              (no 1/√d; P24, dense or chunked)
    c_t = BN_o(CBAM_o(o))                                     (no residual)
    stride 8 ([OURS], cfm_stride=8): e_t and every e_u average-pooled 2×2 first, c_t bilinearly upsampled back."""

    def __init__(self, d=256, ntasks=3, chunk=None, pool=1, allocate_unused=False, reduction=16):
        super().__init__()
        self.chunk, self.pool = chunk, pool
        self.cbam_s, self.bn_s = CBAM(d, reduction), BN(d)
        self.gate = nn.ModuleList(Conv(d, d, 1, bias=True) for _ in range(ntasks - 1))
        self.fuse = Conv((ntasks - 1) * d, 2 * d, 1, bias=True)
        self.cbam_q, self.bn_q = CBAM(2 * d, reduction), BN(2 * d)
        self.cbam_k, self.bn_k = CBAM(2 * d, reduction), BN(2 * d)
        self.cbam_o, self.bn_o = CBAM(d, reduction), BN(d)
        if allocate_unused:      # the code's conv2, conv3 (512 → 512): allocated, never run
            self.unused = nn.ModuleList(Conv(2 * d, 2 * d, 1, bias=True) for _ in range(2))

    def forward(self, main, *aux, chunk="default"):
        """CFM(e_t, [e_u, e_v, ...]) or CFM(e_t, e_u, e_v, ...) (the latter for ref_exchange's call 'args')."""
        aux = list(aux[0]) if len(aux) == 1 and isinstance(aux[0], (list, tuple)) else list(aux)
        chunk = self.chunk if chunk == "default" else chunk
        size = main.shape[-2:]
        if self.pool > 1:
            main = F.avg_pool2d(main, self.pool, self.pool, ceil_mode=True)
            aux = [F.avg_pool2d(a, self.pool, self.pool, ceil_mode=True) for a in aux]
        b, d, h, w = main.shape
        s = self.bn_s(self.cbam_s(main))
        f = F.relu(self.fuse(torch.cat([a * torch.sigmoid(g(a)) for g, a in zip(self.gate, aux)], 1)))
        theta = F.relu(self.bn_q(self.cbam_q(f))).flatten(2)
        phi = F.relu(self.bn_k(self.cbam_k(f))).flatten(2)
        sv = s.flatten(2)
        o = affinity_dense(theta, phi, sv) if chunk is None else affinity_chunked(theta, phi, sv, chunk)
        c = self.bn_o(self.cbam_o(o.reshape(b, d, h, w)))
        return resize(c, size) if self.pool > 1 else c


# ----------------------------------------------------------------------------------------------
# SRM (the code's SPF) and the trace-back chain
# ----------------------------------------------------------------------------------------------
class SRM(nn.Module):
    """p' = CBAM_p(p), q' = CBAM_q(q), u = [Bilinear_{align=False}(p' → size q'); q']
    p_out = ReLU(BN_p(Conv1×1_p(u) → d)),  q_out = ReLU(BN_q(Conv1×1_q(u) → back_dim))   (convs with bias)
    returns (p_out, q_out), or (p_out,) without the q branch"""

    def __init__(self, pred_dim, back_dim, d=256, with_q=True, reduction=16):
        super().__init__()
        self.cbam_p, self.cbam_q = CBAM(pred_dim, reduction), CBAM(back_dim, reduction)
        self.conv_p, self.bn_p = Conv(pred_dim + back_dim, d, 1, bias=True), BN(d)
        self.with_q = with_q
        if with_q:
            self.conv_q, self.bn_q = Conv(pred_dim + back_dim, back_dim, 1, bias=True), BN(back_dim)

    def forward(self, p, q):
        q = self.cbam_q(q)
        u = torch.cat([resize(self.cbam_p(p), q.shape[-2:]), q], 1)
        p_out = F.relu(self.bn_p(self.conv_p(u)))
        return (p_out, F.relu(self.bn_q(self.conv_q(u)))) if self.with_q else (p_out,)


class TraceBack(nn.Module):
    """(p0, b0) = SRM0(c_t, r2); (p1, b1) = SRM1(b0, r1); p2 = SRM2(b1, r0)  — each SRM's q_out (not p_out)
    feeds the next; p0 (H/16), p1 (H/8) go to the intermediate heads, p2 (H/4) to the final head.
    SRM2's q branch is unused in the code (allocated only with allocate_unused)."""

    def __init__(self, d=256, allocate_unused=False, reduction=16):
        super().__init__()
        self.s0 = SRM(d, 4 * d, d, reduction=reduction)
        self.s1 = SRM(4 * d, 2 * d, d, reduction=reduction)
        self.s2 = SRM(2 * d, d, d, with_q=allocate_unused, reduction=reduction)

    def forward(self, c, rs):
        p0, b0 = self.s0(c, rs[2])
        p1, b1 = self.s1(b0, rs[1])
        p2 = self.s2(b1, rs[0])[0]
        return [p0, p1, p2]


# ----------------------------------------------------------------------------------------------
# heads
# ----------------------------------------------------------------------------------------------
class InterHead(nn.Module):
    """kind 2: Conv1×1(nb) → Conv1×1(nb) → BN → ReLU → Conv1×1(→C, bias); kind 1: one conv before the BN."""

    def __init__(self, d, out, kind=2):
        super().__init__()
        self.conv1 = Conv(d, d, 1, bias=False)
        if kind == 2:
            self.conv2 = Conv(d, d, 1, bias=False)
        self.bn = BN(d)
        self.out = Conv(d, out, 1, bias=True)

    def forward(self, x):
        x = self.conv1(x)
        if hasattr(self, "conv2"):
            x = self.conv2(x)
        return self.out(F.relu(self.bn(x)))


class FinalHead(nn.Module):
    """seg:   Conv(nb) → BN → ReLU → Conv(→C) → Up×up (bilinear, align_corners=True)
    plain: Conv(nb) → BN → ReLU → Conv(→C)
    depth: Conv(d → d/2, bias) → Up×2 (align_corners=True) → Conv(d/2 → 32) → ReLU → Conv(32 → C)  (no final ReLU)
    (the trainer's bilinear resize to the input size follows in MTCPDecoder)"""

    def __init__(self, d, out, kind="seg", up=1, depth_mid=32):
        super().__init__()
        self.kind, self.up = kind, up
        if kind == "depth":
            self.conv1 = Conv(d, d // 2, 1, bias=True)
            self.conv2 = Conv(d // 2, depth_mid, 1, bias=True)
            self.out = Conv(depth_mid, out, 1, bias=True)
        else:
            self.conv1 = Conv(d, d, 1, bias=False)
            self.bn = BN(d)
            self.out = Conv(d, out, 1, bias=True)

    def forward(self, x):
        if self.kind == "depth":
            x = self.conv1(x)
            x = F.interpolate(x, scale_factor=self.up, mode="bilinear", align_corners=True)
            return self.out(F.relu(self.conv2(x)))
        x = self.out(F.relu(self.bn(self.conv1(x))))
        if self.up > 1:
            x = F.interpolate(x, scale_factor=self.up, mode="bilinear", align_corners=True)
        return x


# ----------------------------------------------------------------------------------------------
# the whole decoder
# ----------------------------------------------------------------------------------------------
class MTCPDecoder(nn.Module):
    """Everything after z.  Names (prefix `decoder.`): transformer.<task>.layers.<s>.blocks.<b>.*,
    transformer.<task>.norm<s>.*, fpn.<task>.lateral.<k>.*, fpn.<task>.smooth.*, cfm.<task>.<layer>.*,
    srm.<task>.s<i>.<layer>.*, inter.<task>.<i>.<layer>.*, head.<task>.<layer>.*.
    allocate_unused=True adds what the released code allocates but never uses (patch_embed, fpn
    smooth_unused, cfm unused, srm s2 q branch, the 6 NYUD model-level scalars) — for the as-in-code count."""

    def __init__(self, dataset="nyud", d=256, variant="code", depths=(1, 2, 1), heads=(2, 2, 2), window=7,
                 cfm_stride=4, cfm_chunk=None, allocate_unused=False, depth_mid=32, reduction=16, specs=None):
        super().__init__()
        self.dataset, self.variant = dataset, variant
        self.specs = dict(specs or SPECS[dataset])
        self.tasks = {t: v[0] for t, v in self.specs.items()}
        names = list(self.specs)
        T = len(names)
        ins = tuple(d * 2 ** s for s in range(len(depths)))
        self.transformer = nn.ModuleDict({t: TaskTransformer(d, depths, heads, window, allocate_unused) for t in names})
        self.fpn = nn.ModuleDict({t: FPN(ins, d, variant, allocate_unused) for t in names})
        self.cfm = nn.ModuleDict({t: CFM(d, T, cfm_chunk, cfm_stride // 4, allocate_unused, reduction) for t in names})
        self.srm = nn.ModuleDict({t: TraceBack(d, allocate_unused, reduction) for t in names})
        self.inter = nn.ModuleDict({t: nn.ModuleList(InterHead(d, c, ik) for _ in range(2))
                                    for t, (c, ik, fk, up) in self.specs.items()})
        self.head = nn.ModuleDict({t: FinalHead(d, c, fk, up, depth_mid) for t, (c, ik, fk, up) in self.specs.items()})
        if allocate_unused and UNUSED_SCALARS.get(dataset, 0):
            self.unused_scalars = nn.Parameter(torch.zeros(UNUSED_SCALARS[dataset], dtype=DTYPE))

    def forward(self, z, image_size=None):
        image_size = tuple(image_size or (4 * z.shape[-2], 4 * z.shape[-1]))
        names = list(self.specs)
        rs = {t: self.transformer[t](z) for t in names}
        e = {t: self.fpn[t](rs[t]) for t in names}
        c = {t: self.cfm[t](e[t], [e[u] for u in names if u != t]) for t in names}
        out = {}
        for t in names:
            p = self.srm[t](c[t], rs[t])
            out[t] = {"final": resize(self.head[t](p[2]), image_size),
                      "inter": [resize(self.inter[t][i](p[i]), image_size) for i in range(2)]}
        return out

    def stable_names(self):
        return {n: "decoder." + n for n, _ in self.named_parameters()}


# ----------------------------------------------------------------------------------------------
# losses and LPS
# ----------------------------------------------------------------------------------------------
def _masked_mean(x, mask):
    n = mask.sum()
    return (x * mask).sum() / n.clamp(min=1)


def task_loss(task, pred, target, variant="code", intermediate=False, dataset="nyud"):
    """Per-task losses (targets as the code's: semseg/parts long [B, H, W] with 255 = ignore; depth
    [B, 1, H, W] with 255 = invalid and depths ≥ 6.5535 ignored; normals [B, 3, H, W] with 255 = invalid;
    sal/edge [B, 1, H, W] in {0, 1}).
    code:  CE; depth L1; normals masked MSE (sum over valid elements / their number, no normalisation);
           sal/edge HED-balanced BCE; NYUD normals' INTERMEDIATE predictions use the depth L1.
    paper: the same except normals = L1 of the L2-normalised prediction, for final and intermediate."""
    if task in ("semseg", "human_parts"):
        return F.cross_entropy(pred, target, ignore_index=255)
    if task == "normals" and intermediate and variant == "code" and dataset.startswith("nyud"):
        task = "depth"
    if task == "depth":
        mask = ((target != 255) & (target < 65535 * 0.01 * 0.01)).to(pred.dtype)
        return _masked_mean((pred - target).abs(), mask.expand_as(pred))
    if task == "normals":
        mask = (target != 255).to(pred.dtype)
        if variant == "paper":
            pn = pred / (pred.norm(dim=1, keepdim=True) + 1e-12)
            return _masked_mean((pn - target).abs(), mask)
        return _masked_mean((pred - target) ** 2, mask)
    if task in ("sal", "edge"):
        lab = (target >= 0.5).to(pred.dtype)
        w = (1 - lab).sum() / lab.numel()
        # log σ(x) and log(1 − σ(x)) in the numerically safe form
        pos = -F.logsigmoid(pred) * lab
        neg = -F.logsigmoid(-pred) * (1 - lab)
        return (w * pos.sum() + (1 - w) * neg.sum()) / lab.numel()
    raise ValueError(task)


def mtcp_loss(outputs, targets, variant="code", weights=None, dataset="nyud"):
    """code:  Σ_t [ L_t + ½ Σ_s L_t^(s) ]   (equal weights: the released MultiTaskLoss overwrites the weighted sum;
           PASCAL human parts: only the last intermediate term enters, as in the code)
    paper: Σ_t w_t [ L̃_t + ½ Σ_s L̃_t^(s) ],  L̃ = log(1 + L + η), η = 1e-6, w from lps_weights (1 if None).
    Returns (total, {task: final-prediction loss L_t (raw)})."""
    total, finals = 0.0, {}
    for t, o in outputs.items():
        lf = task_loss(t, o["final"], targets[t], variant, False, dataset)
        li = [task_loss(t, x, targets[t], variant, True, dataset) for x in o["inter"]]
        finals[t] = lf
        if variant == "code":
            if t == "human_parts" and dataset == "pascal":
                li = li[-1:]
            total = total + lf + sum(li) / 2
        else:
            proj = [torch.log(1 + v + ETA) for v in [lf] + li]
            w = 1.0 if weights is None else weights[t]
            total = total + w * (proj[0] + sum(proj[1:]) / 2)
    return total, finals


def lps_weights(history, K=1, spread=2.5, floor=1e-3, warmup="inverse"):
    """The LPS closed form (SEED-ARCHITECTURES.md §2.4, as Sources/MTLMethods/LPS.swift): `history` = the
    epoch means L̄(0..e) (lists over tasks; log-losses in paper mode), returns the weights for epoch e+1.
    ρ(e) = L̄(e)/ΣL̄(e); e ≥ K: w = clamp(w̄ + α(ρ(e)/ρ(e−K) − w̄), floor); e < K: 1/ρ(e) (or 1)."""
    if not history:
        return None
    rho = [[v / sum(m) for v in m] for m in history]
    e = len(history) - 1
    if e >= K:
        w = [a / b for a, b in zip(rho[e], rho[e - K])]
        mean = sum(w) / len(w)
        w = [mean + spread * (v - mean) for v in w]
        return [max(v, floor) for v in w] if floor is not None else w
    return [1 / v for v in rho[e]] if warmup == "inverse" else [1.0] * len(rho[e])


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def counts(dataset="nyud", variant="code", allocate_unused=False, meta=True, **kw):
    """Parameter counts; built on the meta device (no memory, no initialisation) unless meta=False."""
    with torch.device("meta") if meta else _nullcontext():
        dec = MTCPDecoder(dataset, variant=variant, allocate_unused=allocate_unused, **kw)
    t0 = next(iter(dec.tasks))
    res = {"per task: transformer": count(dec.transformer[t0]), "per task: fpn": count(dec.fpn[t0]),
           "per task: cfm": count(dec.cfm[t0]), "per task: srm": count(dec.srm[t0]),
           "intermediate heads (all tasks)": count(dec.inter), "final heads (all tasks)": count(dec.head)}
    if hasattr(dec, "unused_scalars"):
        res["model-level scalars"] = dec.unused_scalars.numel()
    res["total"] = count(dec)
    return res, dec


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def shapes(dataset, size, cfm_stride=4, device="meta"):
    """Data flow for one image of `size` (z = 256 × H/4 × W/4).  device 'meta' gives shapes without
    computing (the 480×640 affinity alone would be 19,200² doubles)."""
    with torch.device(device):
        dec = MTCPDecoder(dataset, cfm_stride=cfm_stride)
    z = torch.zeros(1, 256, -(-size[0] // 4), -(-size[1] // 4), dtype=DTYPE, device=device)
    t0 = next(iter(dec.tasks))
    names = [f"transformer.{t0}", f"fpn.{t0}", f"cfm.{t0}", f"srm.{t0}.s0", f"srm.{t0}.s1", f"srm.{t0}.s2",
             f"inter.{t0}.0", f"inter.{t0}.1", f"head.{t0}"]
    print(f"MT-CP decoder {dataset} at {size[0]}x{size[1]} (CFM stride {cfm_stride}); z {tuple(z.shape)}; "
          f"CFM affinity {(z.shape[-2] * z.shape[-1]) // (cfm_stride // 4) ** 2:,}² per image per task")
    import ref_layers
    mask_fn = ref_layers.shift_mask
    if device == "meta":       # the shift mask is built on the CPU at forward time
        ref_layers.shift_mask = lambda *a: mask_fn(*a).to("meta")
    try:
        rows = trace_shapes(dec, lambda: dec(z, size), names)
    finally:
        ref_layers.shift_mask = mask_fn
    for n, s in rows:
        print(f"  {n:<24} -> {s}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", action="store_true", help="print parameter counts against Appendix B")
    ap.add_argument("--table", action="store_true", help="print the decoder's parameter table (stable names)")
    ap.add_argument("--tasks", choices=sorted(SPECS), default="nyud")
    ap.add_argument("--variant", choices=("code", "paper"), default="code",
                    help="paper: dynamic FPN weights (+4 scalars per task); losses/LPS differ in mtcp_loss")
    ap.add_argument("--unused", action="store_true", help="with --table: include what the code allocates but never uses")
    ap.add_argument("--cfm-stride", type=int, choices=(4, 8), default=4)
    ap.add_argument("--shapes", default=None, metavar="HxW", help="print the data flow for one HxW image")
    a = ap.parse_args(argv)
    if a.shapes:
        size = tuple(int(v) for v in a.shapes.split("x"))
        shapes(a.tasks, size, a.cfm_stride, device="meta" if size[0] * size[1] > 200 * 200 else "cpu")
        return
    used, dec = counts(a.tasks, a.variant)
    code, dec_u = counts(a.tasks, a.variant, allocate_unused=True)
    print(f"MT-CP decoder {a.tasks} tasks={dec.tasks} variant={a.variant}")
    tg = TARGETS.get(a.tasks, {})
    for k in used:
        extra = ""
        part = k.replace("per task: ", "")
        if part in TARGETS and a.variant == "code":
            extra = f"   target {TARGETS[part]:,} {'OK' if used[k] == TARGETS[part] else 'DIFFERS'}; as in code {code[k]:,}" \
                    f" (target {TARGETS[part + ' (as in code)']:,} {'OK' if code[k] == TARGETS[part + ' (as in code)'] else 'DIFFERS'})"
        elif k == "intermediate heads (all tasks)" and tg:
            extra = f"   target {tg['inter']:,} {'OK' if used[k] == tg['inter'] else 'DIFFERS'}"
        elif k == "final heads (all tasks)" and tg:
            extra = f"   target {tg['final']:,} {'OK' if used[k] == tg['final'] else 'DIFFERS'}"
        print(f"  {k:<32} {used[k]:>12,}{extra}")
    if tg and a.variant == "code":
        print(f"  {'heads total used':<32} {used['total']:>12,}   target {tg['used']:,} {'OK' if used['total'] == tg['used'] else 'DIFFERS'}")
        print(f"  {'heads total as in code':<32} {code['total']:>12,}   target {tg['code']:,} {'OK' if code['total'] == tg['code'] else 'DIFFERS'}")
    if a.table:
        d = dec_u if a.unused else dec
        names = d.stable_names()
        rows = [(names[n], list(p.shape), p.numel()) for n, p in d.named_parameters()]
        w = max(len(r[0]) for r in rows)
        for n, s, k in rows:
            print(f"  {n:<{w}}  {str(s):<22} {k:>10,}")
        print(f"  {'decoder total':<{w}}  {'':<22} {sum(r[2] for r in rows):>10,}")


if __name__ == "__main__":
    main()
