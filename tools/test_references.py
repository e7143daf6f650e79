#!/usr/bin/env python3
"""Self-checks of the from-spec references (tools/tif_reference.py, tools/kem_reference.py,
tools/mtcp_reference.py): parameter counts against the design document's acceptance numbers,
float64 gradchecks of tiny SAFF / SFD / LTHD (+ affinity upsampling) / KEM (top-k gaps enforced) /
sKEM / cross-attention / Swin block instances, top-k closed forms and tie rule, ETF properties;
MT-CP: counts (Appendix B), gradchecks of CBAM / task transformer / FPN / CFM / SRM / heads and a
fast gradcheck of the whole tiny decoder, chunked CFM == dense CFM (forward, autograd and the
explicit block backward), LPS closed form == the released code's arithmetic.  Exit status 1 on any
failure.  Runs in about two minutes on one thread:  python3 tools/test_references.py [--only mtcp]
"""
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call  # noqa: E402

torch.set_num_threads(1)
import kem_reference as K  # noqa: E402
import mtcp_reference as M  # noqa: E402
import tif_reference as T  # noqa: E402
from ref_layers import DTYPE, SwinBlock, count, forward_backward, load_named, flatten_outputs  # noqa: E402

FAILURES = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'}  {name}{'  ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILURES.append(name)


def rnd(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=DTYPE))


def gradcheck_module(name, module, inputs, call=None, seed=1):
    """gradcheck w.r.t. every input and every parameter: full Jacobian of a random linear functional
    of the outputs, plus torch's fast (random-projection) check of the vector-valued map."""
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in module.named_parameters()]
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    ni = len(xs)

    def f(*args):
        d = dict(zip(names, args[ni:]))
        if call is None:
            out = functional_call(module, d, tuple(args[:ni]))
        else:
            out = call(lambda *a: functional_call(module, d, a), *args[:ni])
        return tuple(flatten_outputs(out))

    outs = f(*xs, *params)
    g = torch.Generator().manual_seed(seed)
    cs = [torch.randn(o.shape, generator=g, dtype=DTYPE) for o in outs]

    def scalar(*args):
        return sum((o * c).sum() for o, c in zip(f(*args), cs))

    t = time.time()
    n = sum(x.numel() for x in xs) + sum(p.numel() for p in params)
    try:
        ok1 = torch.autograd.gradcheck(scalar, (*xs, *params), eps=1e-6, atol=1e-7, rtol=1e-5)
        ok2 = torch.autograd.gradcheck(f, (*xs, *params), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)
        check(f"gradcheck {name}", ok1 and ok2, f"({n} input+parameter elements, {time.time() - t:.1f}s)")
    except Exception as e:  # gradcheck raises on mismatch
        check(f"gradcheck {name}", False, str(e).split("\n")[0][:300])


# ----------------------------------------------------------------------------------------------
def test_counts():
    targets = [("swin_t", "nyud", {}, 32_971_175), ("swin_t", "nyud", {"lthd": False}, 31_835_815),
               ("hrnet18s", "nyud", {}, 5_398_137), ("swin_t", "pascal", {}, 34_263_451),
               ("hrnet18s", "pascal", {}, 5_849_477), ("hrnet18s", "nyud", {"lthd": False}, 5_324_697)]
    for bb, ds, kw, want in targets:
        res, dec, mod = T.counts(bb, ds, **kw)
        check(f"count TIF-R {bb} {ds} {kw or ''}", res["total"] == want, f"{res['total']:,} vs {want:,}")
    res, dec, mod = T.counts("swin_t", "nyud")
    check("count TIF-R Swin-T parts (SAFF 932,832 / SFD 429,568 / LTHD 283,840 / fuse 414,912)",
          (res["saff (shared)"], res["per task: sfd"], res["per task: lthd"], res["per task: fuse"])
          == (932_832, 429_568, 283_840, 414_912))
    res, _, mod = T.counts("hrnet18s", "nyud")
    check("count HRNet18-S backbone module 3,860,720", mod is not None and count(mod) == 3_860_720)
    names = dec.stable_names()
    m = T.TIFR("hrnet18s", "nyud")
    full = dict(m.named_parameters())
    check("TIF stable names (decoder.<module>.<task>.<layer>.*, backbone.*)",
          "decoder.sfd.semseg.s2.q.weight" in full and "decoder.saff.s0.xl.weight" in full
          and "decoder.lthd.edge.s1.fuse_bn.bias" in full and "decoder.head.normals.weight" in full
          and "backbone.stage4.1.fuse_layers.3.0.0.0.weight" in full and count(m) == 5_398_137)

    sws = count(K.SwinDense("swin_s"))
    check("count Swin-S dense 48,838,602", sws == 48_838_602, f"{sws:,}")
    check("count Swin-T dense 27,520,698", count(K.SwinDense("swin_t")) == 27_520_698)
    for ds, want, want_used in (("nyud", 62_449_949, 57_203_229), ("pascal", 67_803_618, 60_458_210)):
        d1 = K.KEMDecoder(K.TASKS[ds], mixer="none")
        d2 = K.KEMDecoder(K.TASKS[ds], mixer="none", allocate_unused=False)
        check(f"count MTFormer-T {ds} as in code / used", (sws + count(d1), sws + count(d2)) == (want, want_used),
              f"{sws + count(d1):,} / {sws + count(d2):,}")
    for ds, want in (("nyud", (62_849_821, 14_011_219, 8_764_499)), ("pascal", (68_203_490, 19_364_888, 12_019_480))):
        d1 = K.KEMDecoder(K.TASKS[ds])
        d2 = K.KEMDecoder(K.TASKS[ds], allocate_unused=False)
        got = (sws + count(d1), count(d1), count(d2))
        check(f"count KEM-R {ds} total / trainable / trainable used", got == want, " / ".join(f"{v:,}" for v in got))
    kem = count(K.KEM(256))
    ska = count(K.KEM(256, stable=True, etf_role="slots"))
    skb = count(K.KEM(256, stable=True, etf_role="tasks"))
    check("count KEM module 399,872", kem == 399_872, f"{kem:,}")
    check("count sKEM-A module 465,664 (and sKEM tasks-role with projection, same)", ska == skb == 465_664,
          f"{ska:,} / {skb:,}")


def test_topk():
    s = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0]], dtype=DTYPE)
    m = K.topk_mask(s, 2)
    check("top-k ties go to the lower index", m.tolist() == [[False, True, True, False, False]])
    s = rnd(3, 7, seed=5)
    for variant in ("A", "B"):
        y = K.topk_softmax(s, 3, variant)
        mask = K.topk_mask(s, 3)
        p = s.softmax(-1)
        if variant == "A":
            ref = p * mask
            jac = lambda r: (torch.diag(p[r]) - torch.outer(p[r], p[r])) * mask[r][:, None]  # noqa: E731
        else:
            e = torch.exp(s) * mask
            ref = e / e.sum(-1, keepdim=True)
            jac = lambda r: torch.diag(ref[r]) - torch.outer(ref[r], ref[r])  # noqa: E731
        jz = torch.autograd.functional.jacobian(lambda x: K.topk_softmax(x, 3, variant), s)
        err = max((jz[r, :, r, :] - jac(r)).abs().max().item() for r in range(3))
        check(f"top-k softmax {variant}: forward and Jacobian = closed form", torch.allclose(y, ref, atol=1e-14)
              and err < 1e-12, f"max Jacobian error {err:.1e}")


def test_etf():
    for d, k in ((256, 20), (256, 2), (256, 3), (7, 5)):
        g = K.gaussian(d, k, seed=d + k)
        q, r = K.householder_qr(g)
        qr_err = (q @ r - g).abs().max().item()
        orth = (q.t() @ q - torch.eye(k, dtype=DTYPE)).abs().max().item()
        q2, r2 = torch.linalg.qr(g)
        sgn = torch.sign(torch.diagonal(r2))
        lap = (q - q2 * sgn).abs().max().item()
        e = K.etf_from_gaussian(g)
        gram = e.t() @ e
        off = gram[~torch.eye(k, dtype=torch.bool)]
        props = max((torch.diagonal(gram) - 1).abs().max().item(), (off + 1 / (k - 1)).abs().max().item(),
                    e.sum(1).abs().max().item())
        check(f"ETF d={d} K={k}: unit columns, <e_i,e_j> = -1/(K-1), zero sum (1e-6); Householder QR",
              props < 1e-6 and qr_err < 1e-12 and orth < 1e-12 and lap < 1e-10 and bool((torch.diagonal(r) > 0).all()),
              f"props {props:.1e}, QR {qr_err:.1e}, orth {orth:.1e}, vs LAPACK {lap:.1e}")


def test_load_and_run():
    saff = T.SAFF(channels=(3, 4, 5, 6), widths=(3, 4, 4, 4))
    w = {"decoder.saff." + n: rnd(*p.shape, seed=i) for i, (n, p) in enumerate(saff.named_parameters())}
    load_named(saff, w, prefix="decoder.saff.")
    xs = [rnd(2, c, 16 // 2 ** i, 16 // 2 ** i, seed=10 + i) for i, c in enumerate((3, 4, 5, 6))]
    o1, gi1, gp1, cs = forward_backward(saff, xs, seed=3, call=lambda m, *x: m(list(x)))
    o2, gi2, gp2, _ = forward_backward(saff, xs, cotangents=cs, call=lambda m, *x: m(list(x)))
    same = all(torch.equal(a, b) for a, b in zip(o1 + gi1, o2 + gi2)) and all(torch.equal(gp1[n], gp2[n]) for n in gp1)
    check("load_named by name + forward_backward reproducible", same and [o.shape[1] for o in o1] == [3, 4, 4, 4])


def test_exchange():
    """tools/ref_exchange.py on an HDF5 file gives the same numbers as the direct call."""
    try:
        import h5py
    except ImportError:
        print("SKIP  ref_exchange (no h5py)")
        return
    import json
    import subprocess
    import tempfile
    here = os.path.dirname(os.path.abspath(__file__))
    lt = T.LTHD(3, ffn_ratio=2)
    randomize(lt, 11)
    xs = [rnd(2, 3, 4, 8, seed=12), rnd(2, 8, 8, seed=13)]
    o, dx, gp, cs = forward_backward(lt, xs, seed=5, call=lambda m, x, a: m(x, a, (2, 4)))
    g = K.gaussian(16, 4, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        p1, p2 = os.path.join(tmp, "lthd.h5"), os.path.join(tmp, "etf.h5")
        with h5py.File(p1, "w") as f:
            f.attrs["module"] = "tif_reference.LTHD"
            f.attrs["kwargs"] = json.dumps({"d": 3, "ffn_ratio": 2})
            f.attrs["forward_kwargs"] = json.dumps({"grid": [2, 4]})
            for n, p in lt.named_parameters():
                f[f"state/{n}"] = p.detach().numpy()
            for i, x in enumerate(xs):
                f[f"in/{i}"] = x.numpy()
            f["dy/0"] = cs[0].numpy()
        with h5py.File(p2, "w") as f:
            f.attrs["module"] = "kem_reference.etf_from_gaussian"
            f["in/0"] = g.numpy()
        ok = subprocess.run([sys.executable, os.path.join(here, "ref_exchange.py"), p1, p2]).returncode == 0
        with h5py.File(p1, "r") as f:
            ok = ok and torch.equal(torch.from_numpy(f["out/0"][()]), o[0]) \
                and all(torch.equal(torch.from_numpy(f[f"dx/{i}"][()]), dx[i]) for i in range(2)) \
                and all(torch.equal(torch.from_numpy(f[f"grad/{n}"][()]), gp[n]) for n in gp)
        with h5py.File(p2, "r") as f:
            ok = ok and torch.equal(torch.from_numpy(f["out/0"][()]), K.etf_from_gaussian(g))
    check("ref_exchange.py: HDF5 in/state/dy -> out/dx/grad equal to the direct call (LTHD, ETF)", ok)


def test_gradchecks():
    # SAFF, all four scales, tiny widths
    saff = T.SAFF(channels=(2, 3, 4, 5), widths=(2, 3, 3, 4))
    randomize(saff, 1)
    xs = [rnd(2, c, 8 // 2 ** i, 8 // 2 ** i, seed=20 + i) for i, c in enumerate((2, 3, 4, 5))]
    gradcheck_module("SAFF (4 scales, C=2/3/4/5, d=2/3/3/4, 8x8 base)", saff, xs,
                     call=lambda f, *x: f(list(x)))
    # SFD, N = 3 tasks
    sfd = T.SFD(4, 3, ffn_ratio=2)
    randomize(sfd, 2)
    gradcheck_module("SFD (d=4, N=3, 3x4 grid, outputs RX and A)", sfd, [rnd(2, 4, 3, 4, seed=30)])
    sfd = T.SFD(4, 2, ffn_ratio=2, scale=True)
    randomize(sfd, 9)
    gradcheck_module("SFD scale=True (design reading of eq. 8)", sfd, [rnd(2, 4, 2, 3, seed=31)])
    # LTHD with the affinity upsampling of eq. 11
    lt = T.LTHD(3, ffn_ratio=2)
    randomize(lt, 3)

    def lthd_call(f, x, a3, a2):
        return f(x, T.upsample_affinity(a3, (1, 2), (2, 4)) + a2, (2, 4))
    gradcheck_module("LTHD + Up2(A3) + A2 (d=3, batch 1, X 8x16 pooled /4 to 2x4)", lt,
                     [rnd(1, 3, 8, 16, seed=40), rnd(1, 2, 2, seed=41), rnd(1, 8, 8, seed=42)], call=lthd_call)
    lt2 = T.LTHD(3, ffn_ratio=2, transpose=True)
    randomize(lt2, 4)
    gradcheck_module("LTHD transpose switch", lt2, [rnd(2, 3, 4, 8, seed=43), rnd(2, 8, 8, seed=44)],
                     call=lambda f, x, a: f(x, a, (2, 4)))
    fuse = T.Fuse((2, 3, 3, 3))
    randomize(fuse, 5)
    gradcheck_module("Fuse (eq. 14)", fuse, [rnd(2, c, 8 // 2 ** i, 8 // 2 ** i, seed=50 + i)
                                            for i, c in enumerate((2, 3, 3, 3))], call=lambda f, *x: f(list(x)))

    # KEM: search seeds until every top-k selection has a gap >= 1e-2 (10^4 x the FD step)
    d, m, k, L = 4, 5, 2, 6
    for cfg in (dict(topk_variant="A"), dict(topk_variant="B"), dict(topk_variant="A", topk_axis="slots"),
                dict(topk_variant="A", stable=True, etf_role="tasks"),
                dict(topk_variant="B", stable=True, etf_role="tasks", etf_proj=False),
                dict(topk_variant="A", stable=True, etf_role="slots", d=6)):
        cfg = dict(cfg)
        dd = cfg.pop("d", d)
        for seed in range(200):
            mod = K.KEM(dd, m, k, ntasks=2, etf_seed=seed, **cfg)
            randomize(mod, 100 + seed)
            xs = [rnd(2, L, dd, seed=1000 + 2 * seed), rnd(2, L, dd, seed=1001 + 2 * seed)]
            x = torch.cat(xs, 1)
            if mod.axis == "tokens":
                gap = K.topk_gap(mod.scores(x), k)
            else:
                with torch.no_grad():
                    mem = mod.scores(x).softmax(-1) @ mod.retrieve.v(x)
                    gap = min(K.topk_gap(mod.write.q(xt) @ mod.write.k(mem).transpose(1, 2) / math.sqrt(dd), k)
                              for xt in xs)
            if gap >= 1e-2:
                break
        label = ("sKEM" if cfg.get("stable") else "KEM") + " " + ",".join(f"{a}={b}" for a, b in cfg.items())
        gradcheck_module(f"{label} (d={dd}, m={m}, k={k}, T=2, L={L}; top-k gap {gap:.3f})", mod, xs,
                         call=lambda f, *x: f(list(x)))
    ca = K.CrossAttention(4, ["a", "b"])
    randomize(ca, 7)
    gradcheck_module("cross-attention baseline (d=4, T=2, L=6)", ca, [rnd(2, 6, 4, seed=60), rnd(2, 6, 4, seed=61)],
                     call=lambda f, *x: f(list(x)))
    blk = SwinBlock(4, 2, window=3, shifted=True, mlp_ratio=2)
    randomize(blk, 8)
    gradcheck_module("Swin block (dim 4, 2 heads, window 3, shifted, 4x5 grid: pad + roll + mask)", blk,
                     [rnd(2, 20, 4, seed=70)], call=lambda f, x: f(x, 4, 5))


def test_swin_vs_timm():
    """Where the dense and timm rules coincide (grid a multiple of the window), the Swin block must
    equal timm's SwinTransformerBlock with the same weights (skipped without timm)."""
    try:
        from timm.models.swin_transformer import SwinTransformerBlock
    except Exception:
        print("SKIP  Swin block vs timm (no timm)")
        return
    for shifted in (False, True):
        tb = SwinTransformerBlock(8, (14, 21), num_heads=2, window_size=7, shift_size=3 if shifted else 0).double()
        mb = SwinBlock(8, 2, 7, shifted)
        w = {n: rnd(*p.shape, seed=i, scale=0.3) for i, (n, p) in enumerate(mb.named_parameters())}
        load_named(mb, w)
        tb.load_state_dict(w, strict=False)
        x = rnd(2, 14, 21, 8, seed=90)
        err = (tb(x).reshape(2, -1, 8) - mb(x.reshape(2, -1, 8), 14, 21)).abs().max().item()
        check(f"Swin block = timm SwinTransformerBlock (14x21 grid, shifted={shifted})", err < 1e-12, f"{err:.1e}")


def test_end_to_end():
    torch.manual_seed(0)
    m = T.TIFR("hrnet18s", "nyud")
    y = m(rnd(2, 3, 64, 96, seed=80))
    check("TIF-R HRNet18-S forward 64x96", all(v.shape[-2:] == (64, 96) for v in y.values())
          and all(torch.isfinite(v).all() for v in y.values()))
    d = T.TIFDecoder((18, 36, 72, 144), T.TASKS["nyud"], saff=False, sfd=False)
    check("TIF ablation none: decoder without SAFF/SFD/LTHD builds and runs",
          all(v.shape[1] == c for v, c in zip(d([rnd(1, c, 16 // 2 ** i, 16 // 2 ** i, seed=i)
                                                   for i, c in enumerate((18, 36, 72, 144))], (64, 64)).values(),
                                                T.TASKS["nyud"].values())))
    dec = K.KEMDecoder(K.TASKS["nyud"], d=32, in_channels=(8, 16, 32), stable=True, allocate_unused=False)
    feats = [None, rnd(1, 8, 10, 13, seed=1), rnd(1, 16, 5, 7, seed=2), rnd(1, 32, 3, 4, seed=3)]
    y = dec(feats, (80, 104))
    check("KEM-R decoder forward (10x13 grid: padded windows)", [tuple(v.shape) for v in y.values()]
          == [(1, 40, 80, 104), (1, 1, 80, 104)])


# ----------------------------------------------------------------------------------------------
# MT-CP
# ----------------------------------------------------------------------------------------------
def test_mtcp_counts():
    for ds in ("nyud", "pascal"):
        used, dec = M.counts(ds)
        code, _ = M.counts(ds, allocate_unused=True)
        tg = M.TARGETS[ds]
        parts = [(k, used[f"per task: {k}"], code[f"per task: {k}"], M.TARGETS[k], M.TARGETS[k + " (as in code)"])
                 for k in ("transformer", "fpn", "cfm", "srm")]
        check(f"count MT-CP {ds} per task used / as in code (transformer, FPN, CFM, SRMs)",
              all(u == tu and c == tc for _, u, c, tu, tc in parts),
              "; ".join(f"{k} {u:,}/{c:,}" for k, u, c, _, _ in parts))
        got = (used["intermediate heads (all tasks)"], used["final heads (all tasks)"], used["total"], code["total"])
        check(f"count MT-CP {ds} heads: intermediate / final / used total / as-in-code total",
              got == (tg["inter"], tg["final"], tg["used"], tg["code"]), " / ".join(f"{v:,}" for v in got))
    paper, _ = M.counts("nyud", variant="paper")
    check("count MT-CP paper variant = code + 4 dynamic FPN scalars per task", paper["total"] == 82_664_852 + 12,
          f"{paper['total']:,}")
    four, _ = M.counts("nyud4")
    # T = 4: one more gate (65,792) and a 768 -> 512 fuse (+131,072) per CFM, and a 4th task decoder
    per = 22_323_272 + 1_049_600 + (481_264 + 65_792 + 131_072) + 3_370_040
    check("count MT-CP T=4 (nyud4): per-task CFM 678,128, total = 4 task decoders + heads",
          four["per task: cfm"] == 678_128 and four["total"] == 4 * per + 812_120 + 2 * 131_841 + 180_204 + 66_305,
          f"CFM {four['per task: cfm']:,}, total {four['total']:,}")
    with torch.device("meta"):
        dec = M.MTCPDecoder("nyud", allocate_unused=True)
    names = dec.stable_names().values()
    want = ["decoder.transformer.semseg.layers.1.blocks.1.attn.qkv.weight",
            "decoder.transformer.depth.layers.0.downsample.reduction.weight",
            "decoder.transformer.normals.norm2.bias", "decoder.fpn.semseg.lateral.2.weight",
            "decoder.fpn.depth.smooth.bias", "decoder.cfm.depth.gate.1.weight", "decoder.cfm.normals.cbam_q.mlp.fc1.weight",
            "decoder.cfm.semseg.cbam_o.spatial.bn.weight", "decoder.cfm.semseg.fuse.weight",
            "decoder.srm.normals.s2.conv_p.weight", "decoder.srm.semseg.s0.cbam_p.spatial.conv.weight",
            "decoder.inter.semseg.0.conv2.weight", "decoder.inter.depth.1.out.bias", "decoder.head.depth.conv2.weight",
            "decoder.head.semseg.bn.bias"]
    check("MT-CP stable names decoder.<module>.<task>.<layer>.*", all(n in names for n in want),
          str([n for n in want if n not in names]))


def directional_check(name, module, inputs, call=None, ndirs=3, eps=1e-6, tol=1e-5):
    """Autograd against central differences along `ndirs` random directions through ALL inputs and
    parameters at once: (F(x + εv) − F(x − εv)) / 2ε = <∇F, v> for F = Σ <c, outputs>.  Two forwards per
    direction, so it covers a whole decoder (hundreds of parameter tensors) in seconds."""
    names = [n for n, _ in module.named_parameters()]
    base = [x.detach().clone() for x in inputs] + [p.detach().clone() for _, p in module.named_parameters()]
    ni = len(inputs)

    def f(vals):
        d = dict(zip(names, vals[ni:]))
        out = call(lambda *a: functional_call(module, d, a), *vals[:ni]) if call else functional_call(module, d, tuple(vals[:ni]))
        return flatten_outputs(out)
    g = torch.Generator().manual_seed(17)
    cs = [torch.randn(o.shape, generator=g, dtype=DTYPE) for o in f(base)]

    def scalar(vals):
        return sum((o * c).sum() for o, c in zip(f(vals), cs))
    t = time.time()
    req = [v.clone().requires_grad_(True) for v in base]
    grads = torch.autograd.grad(scalar(req), req, allow_unused=True)
    # a parameter outside the graph (allocated, never used); a bias before a batch-statistics BN is in the
    # graph with an (analytically) zero gradient, which is fine
    unused = [n for n, gr in zip(names, grads[ni:]) if gr is None]
    grads = [gr if gr is not None else torch.zeros_like(v) for gr, v in zip(grads, base)]
    worst = 0.0
    with torch.no_grad():
        for _ in range(ndirs):
            vs = [torch.randn(v.shape, generator=g, dtype=DTYPE) for v in base]
            fd = (scalar([b + eps * v for b, v in zip(base, vs)]) - scalar([b - eps * v for b, v in zip(base, vs)])) / (2 * eps)
            ad = sum((gr * v).sum() for gr, v in zip(grads, vs))
            worst = max(worst, abs(fd - ad).item() / max(abs(ad).item(), 1e-12))
    check(f"directional gradcheck {name}", worst < tol and not unused,
          f"({len(names)} parameter tensors, {ndirs} directions, worst rel. error {worst:.1e}"
          f"{', not in the graph: ' + str(unused[:3]) if unused else ''}, {time.time() - t:.1f}s)")


def test_mtcp_gradchecks():
    cb = M.CBAM(16)
    randomize(cb, 1)
    gradcheck_module("MT-CP CBAM (C=16, reduction 16, 5x6)", cb, [rnd(2, 16, 5, 6, seed=1)])
    tr = M.TaskTransformer(d=2, depths=(1, 2, 1), heads=(2, 2, 2), window=3)
    randomize(tr, 2)
    directional_check("MT-CP task transformer (d=2, depths 1-2-1, heads 2-2-2, window 3, z 7x9: pad, shift, odd merge)",
                      tr, [rnd(2, 2, 7, 9, seed=2)], ndirs=4)
    tr2 = M.TaskTransformer(d=2, depths=(1, 1), heads=(1, 1), window=3)
    randomize(tr2, 5)
    gradcheck_module("MT-CP task transformer, full Jacobian (d=2, depths 1-1, window 3, z 5x7)", tr2, [rnd(2, 2, 5, 7, seed=4)])
    for variant in ("code", "paper"):
        fp = M.FPN((2, 4, 8), 3, variant)
        randomize(fp, 3)
        gradcheck_module(f"MT-CP FPN {variant} (ins 2/4/8 at 7x9, 4x5, 2x3: uneven nearest)", fp,
                         [rnd(2, 2, 7, 9, seed=3), rnd(2, 4, 4, 5, seed=4), rnd(2, 8, 2, 3, seed=5)],
                         call=lambda f, *x: f(list(x)))
    # (the dense CFM equals the chunked one to 1e-13 in test_mtcp_cfm_chunked_equals_dense)
    for chunk, pool, label in ((5, 1, "chunked, blocks of 5 over N=12"), (3, 2, "stride 8: pool 2x2 (ceil) of 3x5, chunked")):
        cf = M.CFM(4, ntasks=3, chunk=chunk, pool=pool)
        randomize(cf, 6)
        hw = (3, 4) if pool == 1 else (3, 5)
        gradcheck_module(f"MT-CP CFM T=3 d=4 ({label})", cf, [rnd(2, 4, *hw, seed=6 + i, scale=0.7) for i in range(3)],
                         call=lambda f, m, *a: f(m, list(a)))
    cf4 = M.CFM(3, ntasks=4, chunk=7)
    randomize(cf4, 7)
    gradcheck_module("MT-CP CFM T=4 d=3 (3 gates, chunked)", cf4, [rnd(2, 3, 3, 3, seed=20 + i, scale=0.7) for i in range(4)],
                     call=lambda f, m, *a: f(m, list(a)))
    sr = M.SRM(4, 8, 4)
    randomize(sr, 8)
    gradcheck_module("MT-CP SRM (pred 4 at 2x3 -> back 8 at 4x5, both outputs)", sr,
                     [rnd(2, 4, 2, 3, seed=30), rnd(2, 8, 4, 5, seed=31)])
    sr2 = M.SRM(8, 4, 4, with_q=False)
    randomize(sr2, 9)
    gradcheck_module("MT-CP SRM without q branch (last SRM; bilinear down-resize 5x6 -> 3x4)", sr2,
                     [rnd(2, 8, 5, 6, seed=32), rnd(2, 4, 3, 4, seed=33)])
    for head, label in ((M.InterHead(4, 3, 2), "intermediate kind 2"), (M.InterHead(4, 2, 1), "intermediate kind 1"),
                        (M.FinalHead(4, 3, "seg", 2), "final seg Up x2 align_corners"),
                        (M.FinalHead(4, 1, "depth", 2, depth_mid=3), "final depth"),
                        (M.FinalHead(4, 3, "plain"), "final plain")):
        randomize(head, 10)
        gradcheck_module(f"MT-CP head {label}", head, [rnd(2, 4, 3, 4, seed=40)])
    dec = M.MTCPDecoder("nyud", d=2, window=3, cfm_chunk=10, depth_mid=2, reduction=16)
    randomize(dec, 11)
    with torch.no_grad():
        for n, p in dec.named_parameters():
            p.mul_(0.6)
            if n.endswith("mlp.fc1.bias"):   # CBAM's single hidden unit (d=2) alive, so that no gradient is 0 by chance
                p.fill_(1.0)
    directional_check("MT-CP whole decoder (NYUD 3 tasks, d=2, window 3, z 6x7, chunked CFM, all outputs at 24x28)",
                      dec, [rnd(2, 2, 6, 7, seed=12)], call=lambda f, z: f(z, (24, 28)), ndirs=4)


def test_mtcp_cfm_chunked_equals_dense():
    g = torch.Generator().manual_seed(3)
    theta = 3 * torch.rand(2, 8, 192, generator=g, dtype=DTYPE)     # non-negative, large logits (max subtraction)
    phi = 3 * torch.rand(2, 8, 192, generator=g, dtype=DTYPE)
    s = torch.randn(2, 5, 192, generator=g, dtype=DTYPE)
    do = torch.randn(2, 5, 192, generator=g, dtype=DTYPE)
    xs = [v.clone().requires_grad_(True) for v in (theta, phi, s)]
    od = M.affinity_dense(*xs)
    gd = torch.autograd.grad((od * do).sum(), xs)
    worst_f, worst_g, worst_e = 0.0, 0.0, 0.0
    for chunk in (1, 7, 50, 192, 500):
        ys = [v.clone().requires_grad_(True) for v in (theta, phi, s)]
        oc = M.affinity_chunked(*ys, chunk)
        gc = torch.autograd.grad((oc * do).sum(), ys)
        ge = M.affinity_chunked_backward(theta, phi, s, do, chunk)
        worst_f = max(worst_f, (oc - od).abs().max().item())
        worst_g = max(worst_g, max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(gc, gd)))
        worst_e = max(worst_e, max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ge, gd)))
    check("P24 chunked affinity == dense (forward; autograd and explicit block backward), chunks 1/7/50/192/500",
          worst_f < 1e-12 and worst_g < 1e-12 and worst_e < 1e-12,
          f"forward {worst_f:.1e}, autograd {worst_g:.1e}, explicit backward {worst_e:.1e}")
    cfm = M.CFM(8, ntasks=3)
    randomize(cfm, 4)
    ins = [rnd(2, 8, 12, 16, seed=50 + i) for i in range(3)]
    call = lambda m, a, b, c, chunk: m(a, [b, c], chunk=chunk)  # noqa: E731
    o1, gi1, gp1, cs = forward_backward(cfm, ins, seed=5, call=lambda m, a, b, c: call(m, a, b, c, None))
    o2, gi2, gp2, _ = forward_backward(cfm, ins, cotangents=cs, call=lambda m, a, b, c: call(m, a, b, c, 37))
    err = max([(a - b).abs().max().item() for a, b in zip(o1 + gi1, o2 + gi2)]
              + [((gp1[n] - gp2[n]).abs().max() / gp1[n].abs().max().clamp(min=1e-300)).item() for n in gp1])
    check("MT-CP CFM chunked (37-pixel query blocks) == dense CFM (outputs, input and parameter gradients)", err < 1e-10,
          f"{err:.1e}")


def test_mtcp_exchange():
    """ref_exchange.py runs mtcp_reference.CFM (call 'args': main, aux...) from HDF5 like the direct call."""
    try:
        import h5py
    except ImportError:
        print("SKIP  MT-CP ref_exchange (no h5py)")
        return
    import json
    import subprocess
    import tempfile
    here = os.path.dirname(os.path.abspath(__file__))
    cfm = M.CFM(4, ntasks=3, chunk=5)
    randomize(cfm, 21)
    xs = [rnd(2, 4, 3, 4, seed=60 + i, scale=0.7) for i in range(3)]
    o, dx, gp, cs = forward_backward(cfm, xs, seed=6)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cfm.h5")
        with h5py.File(path, "w") as f:
            f.attrs["module"] = "mtcp_reference.CFM"
            f.attrs["kwargs"] = json.dumps({"d": 4, "ntasks": 3, "chunk": 5})
            for n, p in cfm.named_parameters():
                f[f"state/{n}"] = p.detach().numpy()
            for i, x in enumerate(xs):
                f[f"in/{i}"] = x.numpy()
            f["dy/0"] = cs[0].numpy()
        ok = subprocess.run([sys.executable, os.path.join(here, "ref_exchange.py"), path]).returncode == 0
        with h5py.File(path, "r") as f:
            ok = ok and torch.equal(torch.from_numpy(f["out/0"][()]), o[0]) \
                and all(torch.equal(torch.from_numpy(f[f"dx/{i}"][()]), dx[i]) for i in range(3)) \
                and all(torch.equal(torch.from_numpy(f[f"grad/{n}"][()]), gp[n]) for n in gp)
    check("ref_exchange.py: mtcp_reference.CFM from HDF5 == the direct call (outputs, input and parameter gradients)", ok)


def test_mtcp_lps_and_losses():
    # paper LPS with K = 1 on RAW means and no floor is exactly the released code's arithmetic
    means = [[1.9, 1.0, 0.45], [1.3, 0.8, 0.40], [0.9, 0.7, 0.4]]
    tot = [sum(m) for m in means]
    code0 = [tot[0] / v for v in means[0]]
    code1 = [(means[1][t] / means[0][t]) / (tot[1] / tot[0]) for t in range(3)]
    mu = sum(code1) / 3
    code1 = [mu + 7.5 * (v - mu) for v in code1]
    w0 = M.lps_weights(means[:1], K=1, spread=7.5, floor=None)
    w1 = M.lps_weights(means[:2], K=1, spread=7.5, floor=None)
    w3 = M.lps_weights(means, K=3, spread=2.5)
    check("LPS closed form K=1 == the released code's weight arithmetic (main_CL_nyud.py, spread 7.5)",
          max(abs(a - b) for a, b in zip(w0 + w1, code0 + code1)) < 1e-14 and w3 == [1 / (v / tot[2]) for v in means[2]],
          f"{[round(v, 4) for v in w1]}")
    dec = M.MTCPDecoder("nyud", d=2, window=3, depth_mid=2)
    randomize(dec, 13)
    with torch.no_grad():
        out = dec(rnd(2, 2, 6, 7, seed=14), (24, 28))
    g = torch.Generator().manual_seed(15)
    tg = {"semseg": torch.randint(0, 40, (2, 24, 28), generator=g),
          "depth": 5 * torch.rand(2, 1, 24, 28, generator=g, dtype=DTYPE),
          "normals": F.normalize(torch.randn(2, 3, 24, 28, generator=g, dtype=DTYPE), dim=1)}
    tg["semseg"][:, :3] = 255
    tg["depth"][:, :, :2] = 255
    tc, fc = M.mtcp_loss(out, tg, "code")
    tp, fp = M.mtcp_loss(out, tg, "paper", weights={"semseg": 0.5, "depth": 1.0, "normals": 2.0})
    by_hand = sum(fc[t] + sum(M.task_loss(t, x, tg[t], "code", True) for x in out[t]["inter"]) / 2 for t in fc)
    normals_inter_is_depth_l1 = torch.equal(M.task_loss("normals", out["normals"]["inter"][0], tg["normals"], "code", True),
                                            M.task_loss("depth", out["normals"]["inter"][0], tg["normals"]))
    shapes_ok = all(o["final"].shape[-2:] == (24, 28) and all(i.shape[-2:] == (24, 28) for i in o["inter"])
                    for o in out.values())
    check("MT-CP losses: code total by hand, NYUD normals intermediates use the depth L1, paper finite, outputs 24x28",
          abs(tc.item() - by_hand.item()) < 1e-12 and normals_inter_is_depth_l1 and torch.isfinite(tp).item() and shapes_ok,
          f"code {tc.item():.4f}, paper {tp.item():.4f}")


def main():
    t = time.time()
    tests = (test_counts, test_topk, test_etf, test_load_and_run, test_exchange, test_gradchecks, test_swin_vs_timm,
             test_end_to_end, test_mtcp_counts, test_mtcp_gradchecks, test_mtcp_cfm_chunked_equals_dense,
             test_mtcp_exchange, test_mtcp_lps_and_losses)
    if "--only" in sys.argv:
        key = sys.argv[sys.argv.index("--only") + 1]
        tests = [f for f in tests if key in f.__name__]
    for f in tests:
        t0 = time.time()
        f()
        print(f"----  {f.__name__}: {time.time() - t0:.1f}s", flush=True)
    print(f"{len(FAILURES)} failure(s) in {time.time() - t:.1f}s")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
