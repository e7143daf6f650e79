"""Shared float64 building blocks for the from-spec references (tools/tif_reference.py,
tools/kem_reference.py). Written from docs/ARCHITECTURES.md and the design document
(SEED-ARCHITECTURES.md §1.1, §1.3), never from mtl's Swift code.

Every layer is an nn.Module that only *holds* parameters (so that named_parameters() gives stable
names); the forward passes use plain functional torch ops (F.conv2d, F.batch_norm with batch
statistics, F.layer_norm, F.interpolate, softmax, matmul ...).  No running statistics are kept:
BatchNorm always normalises with the batch statistics (training mode, biased variance, eps 1e-5).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPE = torch.float64
torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# parameter-holding layers
# ----------------------------------------------------------------------------------------------
def _init_uniform(t, fan_in):
    bound = 1.0 / math.sqrt(max(fan_in, 1))
    with torch.no_grad():
        t.uniform_(-bound, bound)


class Conv(nn.Module):
    """Conv2d, padding k//2, stride 1 unless given.  weight [out, in/groups, k, k], bias [out]."""

    def __init__(self, cin, cout, k=1, bias=True, groups=1, stride=1):
        super().__init__()
        self.k, self.groups, self.stride = k, groups, stride
        self.weight = nn.Parameter(torch.empty(cout, cin // groups, k, k, dtype=DTYPE))
        _init_uniform(self.weight, cin // groups * k * k)
        if bias:
            self.bias = nn.Parameter(torch.empty(cout, dtype=DTYPE))
            _init_uniform(self.bias, cin // groups * k * k)
        else:
            self.bias = None

    def forward(self, x, padding=None):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.k // 2 if padding is None else padding,
                        1, self.groups)


class BN(nn.Module):
    """BatchNorm2d in training mode (batch statistics, biased variance, eps 1e-5); weight, bias."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c, dtype=DTYPE))
        self.bias = nn.Parameter(torch.zeros(c, dtype=DTYPE))

    def forward(self, x):
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, 1e-5)


class LN(nn.Module):
    """LayerNorm over the last axis, eps 1e-5."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c, dtype=DTYPE))
        self.bias = nn.Parameter(torch.zeros(c, dtype=DTYPE))

    def forward(self, x):
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, 1e-5)


class Linear(nn.Module):
    """y = x Wᵀ + b on the last axis; weight [out, in]."""

    def __init__(self, cin, cout, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, dtype=DTYPE))
        _init_uniform(self.weight, cin)
        if bias:
            self.bias = nn.Parameter(torch.empty(cout, dtype=DTYPE))
            _init_uniform(self.bias, cin)
        else:
            self.bias = None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class FFN(nn.Module):
    """Pre-norm feed-forward: fc2(GELU(fc1(LN(x)))), GELU exact (erf).  The LN is `norm`."""

    def __init__(self, d, ratio=4, norm=True):
        super().__init__()
        self.norm = LN(d) if norm else None
        self.fc1 = Linear(d, ratio * d)
        self.fc2 = Linear(ratio * d, d)

    def forward(self, x):
        if self.norm is not None:
            x = self.norm(x)
        return self.fc2(F.gelu(self.fc1(x)))


# ----------------------------------------------------------------------------------------------
# layout helpers
# ----------------------------------------------------------------------------------------------
def to_tokens(x):
    """NCHW -> [B, H*W, C], row-major (y, x) tokens."""
    b, c, h, w = x.shape
    return x.flatten(2).transpose(1, 2)


def from_tokens(t, h, w):
    b, l, c = t.shape
    return t.transpose(1, 2).reshape(b, c, h, w)


def resize(x, size, align_corners=False):
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def avg_pool_to(x, size):
    """Average pool by the integer factor that maps x's grid to `size` (k×k, stride k); falls back
    to adaptive average pooling when the grid is not an exact multiple."""
    h, w = x.shape[-2:]
    if h % size[0] == 0 and w % size[1] == 0 and h // size[0] == w // size[1]:
        f = h // size[0]
        return x if f == 1 else F.avg_pool2d(x, f, f)
    return F.adaptive_avg_pool2d(x, size)


# ----------------------------------------------------------------------------------------------
# Swin (dense variant: pad after LN1, then roll; shift in every odd block; padded tokens unmasked)
# ----------------------------------------------------------------------------------------------
def window_partition(x, ws):
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(wins, ws, b, h, w):
    c = wins.shape[-1]
    x = wins.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def relative_position_index(ws):
    a = torch.arange(ws)
    coords = torch.stack(torch.meshgrid(a, a, indexing="ij")).flatten(1)  # [2, ws*ws]
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + ws - 1) * (2 * ws - 1) + (rel[1] + ws - 1)  # [ws*ws, ws*ws]


def shift_mask(hp, wp, ws, s):
    lab = torch.zeros(hp, wp, dtype=torch.long)

    def region(n, i):
        return 0 if i < n - ws else (1 if i < n - s else 2)

    for y in range(hp):
        for x in range(wp):
            lab[y, x] = 3 * region(hp, y) + region(wp, x)
    lw = window_partition(lab.view(1, hp, wp, 1), ws).squeeze(-1)  # [nW, ws*ws]
    m = (lw[:, :, None] != lw[:, None, :]).to(DTYPE) * -100.0
    return m  # [nW, N, N]


class SwinBlock(nn.Module):
    """One Swin block.  window=None gives a global-attention (ViT-style) block without the
    relative-position table and without shift."""

    def __init__(self, dim, heads, window=7, shifted=False, mlp_ratio=4):
        super().__init__()
        self.dim, self.heads, self.ws, self.shifted = dim, heads, window, shifted and window is not None
        self.norm1 = LN(dim)
        self.attn = nn.Module()
        if window is not None:
            self.attn.relative_position_bias_table = nn.Parameter(
                0.02 * torch.randn((2 * window - 1) ** 2, heads, dtype=DTYPE))
            self.register_buffer("rel_index", relative_position_index(window), persistent=False)
        self.attn.qkv = Linear(dim, 3 * dim)
        self.attn.proj = Linear(dim, dim)
        self.norm2 = LN(dim)
        self.mlp = FFN(dim, mlp_ratio, norm=False)

    def _attention(self, u, bias, mask):
        # u [nB, N, C]; bias [heads, N, N] or None; mask [nW, N, N] or None (windows image-major)
        nb, n, c = u.shape
        hd = c // self.heads
        qkv = self.attn.qkv(u).view(nb, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        s = (q * hd ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            s = s + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            s = (s.view(nb // nw, nw, self.heads, n, n) + mask[None, :, None]).view(nb, self.heads, n, n)
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(nb, n, c)
        return self.attn.proj(o)

    def forward(self, x, h, w):
        b, l, c = x.shape
        u = self.norm1(x)
        if self.ws is None:
            u = self._attention(u, None, None)
        else:
            ws, s = self.ws, self.ws // 2
            hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
            u = F.pad(u.view(b, h, w, c), (0, 0, 0, wp - w, 0, hp - h))
            if self.shifted:
                u = torch.roll(u, (-s, -s), (1, 2))
            bias = self.attn.relative_position_bias_table[self.rel_index.reshape(-1)].view(ws * ws, ws * ws, -1)
            bias = bias.permute(2, 0, 1)
            mask = shift_mask(hp, wp, ws, s) if self.shifted else None
            o = self._attention(window_partition(u, ws), bias, mask)
            u = window_reverse(o, ws, b, hp, wp)
            if self.shifted:
                u = torch.roll(u, (s, s), (1, 2))
            u = u[:, :h, :w, :].reshape(b, h * w, c)
        x = x + u
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = LN(4 * dim)
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x, h, w):
        b, l, c = x.shape
        x = x.view(b, h, w, c)
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        h2, w2 = x.shape[1], x.shape[2]
        return self.reduction(self.norm(x.reshape(b, h2 * w2, 4 * c))), h2, w2


class SwinStage(nn.Module):
    def __init__(self, dim, depth, heads, window=7, downsample=False):
        super().__init__()
        self.blocks = nn.ModuleList(SwinBlock(dim, heads, window, b % 2 == 1) for b in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None


class SwinDense(nn.Module):
    """Swin, dense/segmentation variant: outputs norm0..norm3 of every stage (before merging).
    Names follow the official checkpoint layout (patch_embed.*, layers.s.blocks.b.*,
    layers.s.downsample.*, norm{i}.*)."""

    VARIANTS = {"swin_t": (96, (2, 2, 6, 2), (3, 6, 12, 24)), "swin_s": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
                "swin_b": (128, (2, 2, 18, 2), (4, 8, 16, 32))}

    def __init__(self, variant="swin_t", window=7):
        super().__init__()
        embed, depths, heads = self.VARIANTS[variant]
        self.channels = tuple(embed * 2 ** i for i in range(4))
        self.patch_embed = nn.Module()
        self.patch_embed.proj = Conv(3, embed, 4, bias=True, stride=4)
        self.patch_embed.norm = LN(embed)
        self.layers = nn.ModuleList(SwinStage(embed * 2 ** s, depths[s], heads[s], window, s < 3) for s in range(4))
        for i in range(4):
            setattr(self, f"norm{i}", LN(embed * 2 ** i))

    def forward(self, img):
        hh, ww = img.shape[-2:]
        img = F.pad(img, (0, -ww % 4, 0, -hh % 4))
        x = self.patch_embed.proj(img, padding=0)
        h, w = x.shape[-2:]
        x = self.patch_embed.norm(to_tokens(x))
        outs = []
        for s, stage in enumerate(self.layers):
            for blk in stage.blocks:
                x = blk(x, h, w)
            outs.append(from_tokens(getattr(self, f"norm{s}")(x), h, w))
            if stage.downsample is not None:
                x, h, w = stage.downsample(x, h, w)
        return outs


# ----------------------------------------------------------------------------------------------
# utilities shared by the CLIs and the tests
# ----------------------------------------------------------------------------------------------
def count(module):
    return sum(p.numel() for p in module.parameters())


def param_table(module, prefix="", group_depth=None):
    """Rows (name, shape, numel) for every parameter; prefix is prepended to the names."""
    return [(prefix + n, tuple(p.shape), p.numel()) for n, p in module.named_parameters()]


def print_param_table(module, prefix="", file=None, max_rows=None):
    rows = param_table(module, prefix)
    width = max(len(r[0]) for r in rows) if rows else 10
    for i, (n, s, k) in enumerate(rows):
        if max_rows is not None and i >= max_rows:
            print(f"  ... {len(rows) - max_rows} more", file=file)
            break
        print(f"  {n:<{width}}  {str(list(s)):<20} {k:>12,}", file=file)
    print(f"  {'total':<{width}}  {'':<20} {sum(r[2] for r in rows):>12,}", file=file)


def load_named(module, tensors, prefix=""):
    """Copy tensors (a dict name -> tensor) into module's parameters.  Names may be the module's
    own (e.g. `s0.xl.weight`) or carry `prefix` (e.g. `decoder.saff.s0.xl.weight`).  Every
    parameter must be given; unknown names raise."""
    own = dict(module.named_parameters())
    seen = set()
    for name, t in tensors.items():
        key = name[len(prefix):] if prefix and name.startswith(prefix) else name
        if key not in own:
            raise KeyError(f"unexpected tensor {name}")
        p = own[key]
        if tuple(p.shape) != tuple(t.shape):
            raise ValueError(f"{name}: shape {tuple(t.shape)} != {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(torch.as_tensor(t, dtype=p.dtype))
        seen.add(key)
    missing = sorted(set(own) - seen)
    if missing:
        raise KeyError(f"missing tensors: {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def forward_backward(module, inputs, cotangents=None, seed=0, call=None):
    """Run `module(*inputs)` (or `call(module, *inputs)`), then the backward of the linear functional
    Σ <c_i, y_i> over the flattened tensor outputs.  cotangents: list matching the outputs, or None
    (then standard-normal with `seed`).  Returns (outputs, input_grads, param_grads by name,
    cotangents)."""
    inputs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    module.zero_grad(set_to_none=True)
    out = call(module, *inputs) if call is not None else module(*inputs)
    outs = flatten_outputs(out)
    if cotangents is None:
        g = torch.Generator().manual_seed(seed)
        cotangents = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs]
    loss = sum((o * c).sum() for o, c in zip(outs, cotangents))
    if torch.is_tensor(loss) and loss.requires_grad:
        loss.backward()
    grads_in = [x.grad for x in inputs]
    grads_p = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in module.named_parameters()}
    return [o.detach() for o in outs], grads_in, grads_p, cotangents


def flatten_outputs(out):
    if torch.is_tensor(out):
        return [out]
    res = []
    if isinstance(out, dict):
        out = list(out.values())
    for o in out:
        res += flatten_outputs(o)
    return res


def trace_shapes(model, run, names):
    """Run `run()` with forward hooks on the sub-modules whose dotted names are in `names`;
    returns [(name, [output shapes])] in call order."""
    rows, hooks = [], []
    mods = dict(model.named_modules())
    for n in names:
        def hook(m, inp, out, n=n):
            rows.append((n, [tuple(o.shape) for o in flatten_outputs(out)]))
        hooks.append(mods[n].register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return rows
