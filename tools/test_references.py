#!/usr/bin/env python3
"""Self-checks of the from-spec references (tools/tif_reference.py, tools/kem_reference.py):
parameter counts against the design document's acceptance numbers, float64 gradchecks of tiny
SAFF / SFD / LTHD (+ affinity upsampling) / KEM (top-k gaps enforced) / sKEM / cross-attention /
Swin block instances, top-k closed forms and tie rule, ETF properties.  Exit status 1 on any
failure.  Runs in well under two minutes on one thread:  python3 tools/test_references.py
"""
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402
from torch.func import functional_call  # noqa: E402

torch.set_num_threads(1)
import kem_reference as K  # noqa: E402
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


def main():
    t = time.time()
    for f in (test_counts, test_topk, test_etf, test_load_and_run, test_exchange, test_gradchecks, test_swin_vs_timm, test_end_to_end):
        t0 = time.time()
        f()
        print(f"----  {f.__name__}: {time.time() - t0:.1f}s", flush=True)
    print(f"{len(FAILURES)} failure(s) in {time.time() - t:.1f}s")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
