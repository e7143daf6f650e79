#!/usr/bin/env python3
"""From-spec float64 PyTorch reference of KEM / sKEM (SGW-based multi-task learning, ACCV 2024)
on the MTFormer-T skeleton, written from the paper (/work/shared/papers/kem-sgw-multitask.txt)
and the design document's reconstruction (SEED-ARCHITECTURES.md §3, P22, P23).  No public code
exists; nothing here is taken from mtl's Swift code.  docs/ARCHITECTURES.md documents every
equation, switch and confidence tag.  Only for cross-checks and counting.

  python3 tools/kem_reference.py --count --tasks nyud|pascal [--mixer memory|cross_attention|none]
      [--skem] [--etf-role tasks|slots] [--no-etf-proj] [--no-unused] [--table]

Importable pieces (float64):
  topk_softmax(s, k, variant, dim)  P22, variants 'A' (SGW: softmax, keep k largest) / 'B' (renormalised);
                                    ties go to the lower index
  householder_qr(G)                 thin QR by Householder reflections in float64, sign-fixed diag(R) > 0
  etf_from_gaussian(G)              P23: E = sqrt(K/(K-1)) U (I - 11^T/K), U = Q of the given d x K matrix
  KEM(d, m, k, ...)                 memory mixer (retrieve / write / broadcast), KEM or sKEM
  CrossAttention(d, tasks)          the 'KEM w/ CA' baseline mixer
  TaskTransformer(d)                MTFormer's 256-d transformer: (unused patch embed), 2 Swin blocks, LN
  KEMR(tasks, mixer=...)            Swin-S (frozen) + 1x1 reduce + shared stage + task enc/dec + heads
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ref_layers import (BN, DTYPE, LN, Conv, Linear, SwinBlock, SwinDense, count, from_tokens,  # noqa: E402
                        resize, to_tokens, trace_shapes)

TASKS = {"nyud": {"semseg": 40, "depth": 1}, "pascal": {"semseg": 21, "human_parts": 7, "sal": 1}}


# ----------------------------------------------------------------------------------------------
# P22 top-k softmax, P23 ETF
# ----------------------------------------------------------------------------------------------
def topk_mask(s, k, dim=-1):
    """Boolean mask of the k largest entries along dim; among equal values the lower index wins
    (stable descending sort)."""
    k = min(k, s.shape[dim])
    idx = torch.sort(s.detach(), dim=dim, descending=True, stable=True).indices.narrow(dim, 0, k)
    return torch.zeros_like(s, dtype=torch.bool).scatter(dim, idx, True)


def topk_softmax(s, k, variant="A", dim=-1):
    """A (SGW): p = softmax(s) over all entries, keep the k largest, no renormalisation.
    B: softmax over the k selected entries only, zero elsewhere."""
    mask = topk_mask(s, k, dim)
    if variant == "A":
        return s.softmax(dim) * mask
    if variant == "B":
        return s.masked_fill(~mask, float("-inf")).softmax(dim)
    raise ValueError(variant)


def topk_gap(s, k, dim=-1):
    """Smallest gap between the k-th and (k+1)-th largest entries (for finite-difference checks)."""
    v = torch.sort(s.detach(), dim=dim, descending=True).values
    if v.shape[dim] <= k:
        return float("inf")
    return (v.narrow(dim, k - 1, 1) - v.narrow(dim, k, 1)).min().item()


def householder_qr(a):
    """Thin QR of a [d, K] (d >= K) by Householder reflections, float64; signs fixed so that
    diag(R) > 0 (which makes Q unique for a full-rank a).  Returns Q [d, K], R [K, K]."""
    a = a.detach().to(torch.float64)          # the ETF is a constant: no gradient flows through it
    d, k = a.shape
    r = a.clone()
    q = torch.eye(d, dtype=torch.float64)
    for j in range(k):
        x = r[j:, j].clone()
        nx = torch.linalg.vector_norm(x)
        if nx == 0:
            continue
        alpha = -nx if x[0] >= 0 else nx          # reflect onto -sign(x0)|x| e1 (no cancellation)
        v = x.clone()
        v[0] -= alpha
        v = v / torch.linalg.vector_norm(v)
        r[j:, :] -= 2.0 * torch.outer(v, v @ r[j:, :])
        q[:, j:] -= 2.0 * torch.outer(q[:, j:] @ v, v)
    q, r = q[:, :k], torch.triu(r[:k, :k])
    sgn = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(torch.float64)
    return q * sgn, r * sgn[:, None]


def etf_from_gaussian(g):
    """E = sqrt(K/(K-1)) U (I_K - 1 1^T / K), U = Q factor of the given d x K matrix g."""
    d, k = g.shape
    u, _ = householder_qr(g)
    return math.sqrt(k / (k - 1)) * u @ (torch.eye(k, dtype=torch.float64) - torch.full((k, k), 1.0 / k,
                                                                                         dtype=torch.float64))


def gaussian(d, k, seed=0):
    return torch.randn(d, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# KEM / sKEM
# ----------------------------------------------------------------------------------------------
class KEM(nn.Module):
    """Knowledge extraction module over the tokens of all tasks.

    X = [X_1; ...; X_T]  (B, T*L, d)
    Retrieve (eq. 1):  S = (M W_q1)(X W_k1)^T / sqrt(d)           m x TL
                       M' = TopKSoftmax_k(S, over tokens) (X W_v1)    m x d
    Write (eq. 2):     Z_t = softmax((X_t W_q2)(M' W_k2)^T / sqrt(d)) (M' W_v2)   L x d
    Broadcast (eq. 3): X_t <- X_t + lam Z_t
    topk_axis='slots': the retrieve softmax is plain and Step 2 keeps each token's k best slots.
    sKEM (stable=True), fixed ETF E (d x K), etf_role:
      'tasks' (K = T, the paper's text):  S = ((M W_q1) E)((X' W_k1) E)^T / sqrt(K),
               X' = X W_p + b_p (the 'additional projection layer') if etf_proj else X
      'slots' (K = m, design sKEM-A):     S = E^T (X' )^T / sqrt(d), X' = X W_p + b_p if etf_proj
               else X W_k1 (M and W_q1 then do not enter the scores)
    The ETF is built from `gaussian_matrix` (d x K) if given, else from a seeded float64 draw.
    """

    def __init__(self, d=256, m=20, k=3, ntasks=2, lam=1.0, topk_variant="A", topk_axis="tokens", stable=False,
                 etf_role="tasks", etf_proj=True, gaussian_matrix=None, etf_seed=0):
        super().__init__()
        self.d, self.m, self.k, self.ntasks, self.lam = d, m, k, ntasks, lam
        self.variant, self.axis, self.stable, self.role = topk_variant, topk_axis, stable, etf_role
        self.memory = nn.Parameter(torch.randn(m, d, dtype=DTYPE) * 0.02)
        self.retrieve = nn.Module()
        self.retrieve.q, self.retrieve.k, self.retrieve.v = Linear(d, d), Linear(d, d), Linear(d, d)
        self.write = nn.Module()
        self.write.q, self.write.k, self.write.v = Linear(d, d), Linear(d, d), Linear(d, d)
        self.proj = Linear(d, d) if stable and etf_proj else None
        if stable:
            kk = ntasks if etf_role == "tasks" else m
            if kk < 2:
                raise ValueError("the ETF needs K >= 2")
            g = gaussian(d, kk, etf_seed) if gaussian_matrix is None else torch.as_tensor(gaussian_matrix,
                                                                                           dtype=torch.float64)
            self.register_buffer("etf", etf_from_gaussian(g))
        else:
            self.etf = None

    def set_gaussian(self, g):
        self.etf = etf_from_gaussian(torch.as_tensor(g, dtype=torch.float64))

    def scores(self, x):
        """Retrieve logits S [B, m, TL] for the stacked tokens x [B, TL, d]."""
        if not self.stable:
            return (self.retrieve.q(self.memory) @ self.retrieve.k(x).transpose(1, 2)) / math.sqrt(self.d)
        xp = self.proj(x) if self.proj is not None else x
        if self.role == "tasks":
            q = self.retrieve.q(self.memory) @ self.etf                          # m x K
            kx = self.retrieve.k(xp) @ self.etf                                  # B x TL x K
            return (q @ kx.transpose(1, 2)) / math.sqrt(self.etf.shape[1])
        if self.proj is None:
            xp = self.retrieve.k(x)
        return (self.etf.t() @ xp.transpose(1, 2)) / math.sqrt(self.d)         # B x m x TL

    def forward(self, *xs):
        xs = list(xs[0]) if len(xs) == 1 and isinstance(xs[0], (list, tuple)) else list(xs)
        lens = [x.shape[1] for x in xs]
        x = torch.cat(xs, 1)
        s = self.scores(x)
        p = topk_softmax(s, self.k, self.variant, -1) if self.axis == "tokens" else s.softmax(-1)
        mem = p @ self.retrieve.v(x)                                           # B x m x d
        km, vm = self.write.k(mem), self.write.v(mem)
        out = []
        for xt in xs:
            a = (self.write.q(xt) @ km.transpose(1, 2)) / math.sqrt(self.d)   # B x L x m
            a = topk_softmax(a, self.k, self.variant, -1) if self.axis == "slots" else a.softmax(-1)
            out.append(xt + self.lam * (a @ vm))
        return out


class CrossAttention(nn.Module):
    """'KEM w/ CA' baseline [RECON-L]: per task t, Z_t = softmax((X_t W_q^t)(X W_k^t)^T/sqrt(d)) (X W_v^t) W_o^t
    over the tokens X of all tasks; X_t <- X_t + lam Z_t."""

    def __init__(self, d, tasks, lam=1.0):
        super().__init__()
        self.d, self.lam = d, lam
        self.task = nn.ModuleDict()
        for t in tasks:
            mod = nn.Module()
            mod.q, mod.k, mod.v, mod.o = Linear(d, d), Linear(d, d), Linear(d, d), Linear(d, d)
            self.task[t] = mod

    def forward(self, *xs):
        xs = list(xs[0]) if len(xs) == 1 and isinstance(xs[0], (list, tuple)) else list(xs)
        x = torch.cat(xs, 1)
        out = []
        for xt, mod in zip(xs, self.task.values()):
            a = (mod.q(xt) @ mod.k(x).transpose(1, 2)) / math.sqrt(self.d)
            out.append(xt + self.lam * mod.o(a.softmax(-1) @ mod.v(x)))
        return out


# ----------------------------------------------------------------------------------------------
# MTFormer-T skeleton
# ----------------------------------------------------------------------------------------------
class TaskTransformer(nn.Module):
    """MTFormer's 256-d transformer: patch_embed (allocated but never used in MTFormer's code;
    counted 'as in code'), `depth` Swin blocks (W-MSA, SW-MSA, ...), output LN.  window=None makes the
    blocks global-attention ViT blocks (the paper's '2-layer ViT' wording)."""

    def __init__(self, d=256, depth=2, heads=4, window=7, allocate_unused=True):
        super().__init__()
        if allocate_unused:
            self.patch_embed = nn.Module()
            self.patch_embed.proj = Conv(d, d, 4, bias=True, stride=4)
            self.patch_embed.norm = LN(d)
        self.blocks = nn.ModuleList(SwinBlock(d, heads, window, b % 2 == 1) for b in range(depth))
        self.norm = LN(d)

    def forward(self, x, h, w):
        for b in self.blocks:
            x = b(x, h, w)
        return self.norm(x)


class SegHead(nn.Module):
    """Conv1x1(d->d, no bias) -> BN -> ReLU -> Conv1x1(d->C) [-> Up x2, align_corners=True]."""

    def __init__(self, d, c, up=True):
        super().__init__()
        self.up = up
        self.conv1, self.bn1, self.conv2 = Conv(d, d, 1, bias=False), BN(d), Conv(d, c, 1, bias=True)

    def forward(self, x):
        y = self.conv2(F.relu(self.bn1(self.conv1(x))))
        if self.up:
            y = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
        return y


class DepthHead(nn.Module):
    """Conv1x1(d->128) -> Up x2 (align_corners=True) -> Conv1x1(128->32) -> ReLU -> Conv1x1(32->1) -> ReLU."""

    def __init__(self, d):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = Conv(d, 128, 1), Conv(128, 32, 1), Conv(32, 1, 1)

    def forward(self, x):
        y = F.interpolate(self.conv1(x), scale_factor=2, mode="bilinear", align_corners=True)
        return F.relu(self.conv3(F.relu(self.conv2(y))))


def make_head(task, d, c):
    if task == "depth":
        return DepthHead(d)
    return SegHead(d, c, up=(task != "sal"))


class KEMDecoder(nn.Module):
    """Everything trainable: decoder.reduce, decoder.shared, decoder.task_enc.<task>, decoder.kem |
    decoder.cross_attention.<task>, decoder.task_dec.<task>, decoder.head.<task>, decoder.log_vars.<task>."""

    def __init__(self, tasks, d=256, in_channels=(192, 384, 768), mixer="memory", allocate_unused=True,
                 window=7, align_corners=False, **kem_kw):
        super().__init__()
        self.tasks, self.mixer_kind, self.align = dict(tasks), mixer, align_corners
        self.reduce = Conv(sum(in_channels), d, 1, bias=True)
        self.shared = TaskTransformer(d, window=window, allocate_unused=allocate_unused)
        self.task_enc = nn.ModuleDict({t: TaskTransformer(d, window=window, allocate_unused=allocate_unused)
                                       for t in self.tasks})
        if mixer == "memory":
            self.kem = KEM(d, ntasks=len(self.tasks), **kem_kw)
        elif mixer == "cross_attention":
            self.cross_attention = CrossAttention(d, self.tasks)
        elif mixer != "none":
            raise ValueError(mixer)
        self.task_dec = nn.ModuleDict({t: TaskTransformer(d, window=window, allocate_unused=allocate_unused)
                                       for t in self.tasks})
        self.head = nn.ModuleDict({t: make_head(t, d, c) for t, c in self.tasks.items()})
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros((), dtype=DTYPE)) for t in self.tasks})

    def mix(self, xs):
        if self.mixer_kind == "memory":
            return self.kem(xs)
        if self.mixer_kind == "cross_attention":
            return self.cross_attention(xs)
        return xs

    def forward(self, feats, image_size):
        x1, x2, x3 = feats[1], feats[2], feats[3]
        size = x1.shape[-2:]
        z = self.reduce(torch.cat([x1, resize(x2, size, self.align), resize(x3, size, self.align)], 1))
        h, w = z.shape[-2:]
        z = self.shared(to_tokens(z), h, w)
        xs = [self.task_enc[t](z, h, w) for t in self.tasks]
        xs = self.mix(xs)
        out = {}
        for t, x in zip(self.tasks, xs):
            y = self.head[t](from_tokens(self.task_dec[t](x, h, w), h, w))
            out[t] = resize(y, image_size, False)
        return out


class KEMR(nn.Module):
    """Swin-S dense backbone (frozen: no gradient, no BN so eval == train) + KEMDecoder."""

    def __init__(self, tasks="nyud", backbone="swin_s", **kw):
        super().__init__()
        t = TASKS[tasks] if isinstance(tasks, str) else tasks
        self.backbone = SwinDense(backbone)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.decoder = KEMDecoder(t, in_channels=self.backbone.channels[1:], **kw)

    def forward(self, img):
        with torch.no_grad():
            feats = self.backbone(img)
        return self.decoder(feats, tuple(img.shape[-2:]))


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", action="store_true")
    ap.add_argument("--table", action="store_true", help="print the decoder's parameter table")
    ap.add_argument("--tasks", choices=sorted(TASKS), default="nyud")
    ap.add_argument("--mixer", choices=("memory", "cross_attention", "none"), default="memory")
    ap.add_argument("--skem", action="store_true", help="stable KEM (ETF)")
    ap.add_argument("--etf-role", choices=("tasks", "slots"), default="tasks")
    ap.add_argument("--no-etf-proj", action="store_true")
    ap.add_argument("--no-unused", action="store_true", help="do not allocate MTFormer's unused patch embeddings")
    ap.add_argument("--vit-blocks", action="store_true", help="global-attention blocks instead of Swin windows")
    ap.add_argument("--shapes", default=None, metavar="HxW",
                    help="run the decoder (batch 1) on random Swin-S-shaped features and print the data flow")
    a = ap.parse_args(argv)
    tasks = TASKS[a.tasks]
    if a.shapes:
        size = tuple(int(v) for v in a.shapes.split("x"))
        dec = KEMDecoder(tasks, mixer=a.mixer, stable=a.skem) if a.mixer == "memory" else KEMDecoder(tasks, mixer=a.mixer)
        feats = [torch.randn(1, c, -(-size[0] // 2 ** (i + 2)), -(-size[1] // 2 ** (i + 2)), dtype=DTYPE)
                 for i, c in enumerate((96, 192, 384, 768))]
        t0 = next(iter(tasks))
        names = ["reduce", "shared", f"task_enc.{t0}"] + (["kem"] if a.mixer == "memory" else []) + \
            (["cross_attention"] if a.mixer == "cross_attention" else []) + [f"task_dec.{t0}", f"head.{t0}"]
        print(f"KEM-R {a.tasks} at {size[0]}x{size[1]}; Swin-S features", [tuple(f.shape) for f in feats])
        for n, s in trace_shapes(dec, lambda: dec(feats, size), names):
            print(f"  {n:<22} -> {s}")
        return
    kem_kw = dict(stable=a.skem, etf_role=a.etf_role, etf_proj=not a.no_etf_proj) if a.mixer == "memory" else {}
    backbone = SwinDense("swin_s")
    dec = KEMDecoder(tasks, mixer=a.mixer, allocate_unused=not a.no_unused, window=None if a.vit_blocks else 7,
                     **kem_kw)
    bb = count(backbone)
    skel = count(dec) - (count(dec.kem) if a.mixer == "memory" else 0) - \
        (count(dec.cross_attention) if a.mixer == "cross_attention" else 0)
    unused = sum(count(m.patch_embed) for m in [dec.shared, *dec.task_enc.values(), *dec.task_dec.values()]
                 if hasattr(m, "patch_embed"))
    print(f"KEM-R {a.tasks} tasks={list(tasks)} mixer={a.mixer}"
          + (f" sKEM etf_role={a.etf_role} etf_proj={not a.no_etf_proj}" if a.skem else "")
          + (" (no unused patch embeddings)" if a.no_unused else " (as in code)"))
    rows = [("backbone Swin-S dense (frozen)", bb), ("reduce 1x1", count(dec.reduce)),
            ("transformer (each of 1+2T)", count(dec.shared)), ("heads", count(dec.head)),
            ("log-vars", count(dec.log_vars)), ("unused patch embeddings", unused),
            ("MTFormer-T skeleton total", bb + skel), ("  without unused patch embeddings", bb + skel - unused)]
    if a.mixer == "memory":
        rows.append(("KEM module" if not a.skem else "sKEM module", count(dec.kem)))
    if a.mixer == "cross_attention":
        rows.append(("cross-attention mixer", count(dec.cross_attention)))
    rows += [("KEM-R total", bb + count(dec)), ("trainable (total - backbone)", count(dec)),
             ("trainable without unused", count(dec) - unused)]
    for k, v in rows:
        print(f"  {k:<36} {v:>12,}")
    if a.table or not a.count:
        for n, p in dec.named_parameters():
            print(f"  decoder.{n:<60} {str(list(p.shape)):<20} {p.numel():>10,}")


if __name__ == "__main__":
    main()
