#!/usr/bin/env python3
"""mtl bench next to ../shared/bench/torch_ref.py, in alternating runs on the same machine.

For each row (model, width, threads, ...) the three programs run one after the other — mtl,
PyTorch NCHW, PyTorch channels_last — and that triple is repeated --pairs times; each ratio is
the median of the per-triple ratios torch_ms / mtl_ms (so a slow phase of the machine hits both
sides of a pair). Peak RSS is the child's ru_maxrss (wait4). Prints a markdown table and, with
--json FILE, every measurement.

  tools/bench_pairs.py --pairs 5                       # the rows of docs/PERFORMANCE.md
  tools/bench_pairs.py --pairs 5 --rows bench:32:2 --mtl-args "--conv-backend blas"
  tools/bench_pairs.py --compare "--conv-backend blas" "--conv-backend onednn" --rows bench:32:2
Rows: MODEL:WIDTH:THREADS[:BATCH:HEIGHT:WIDE:HEAD_CHANNELS]; the default set is bench 32/64 × 1/2
threads (batch 4, 128×256) and resnet50-deeplab width 64, head channels 256, batch 2, 144×192,
2 threads. Models with their own PyTorch reference in tools/ (TORCH_REFS): swin_t-baseline
(bench_swin_torch.py; defaults batch 2, 224×288, head channels 256), hrnet18s-baseline, tif-hrnet18 and
kem-swin_s (batch 4, 128×256; the last two have no channels_last column: nan), mtcp-swin_t, e.g.
  tools/bench_pairs.py --pairs 5 --rows swin_t-baseline:0:2
"""
import argparse, json, os, platform, shlex, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_REFS = {"swin_t-baseline": "bench_swin_torch.py", "mtcp-swin_t": "bench_mtcp_torch.py",
              "hrnet18s-baseline": "bench_hrnet_torch.py", "tif-hrnet18": "bench_tif_torch.py",
              "kem-swin_s": "bench_kem_torch.py"}
# References without a --channels-last mode (from-spec modules whose layers are not memory-format aware).
NO_CHANNELS_LAST = {"tif-hrnet18", "kem-swin_s"}
DEFAULT_ROWS = ["bench:32:1", "bench:32:2", "bench:64:1", "bench:64:2",
                "resnet50-deeplab:64:2:2:144:192:256"]


def parse_row(text):
    f = text.split(":")
    model, width, threads = f[0], int(f[1]), int(f[2])
    deeplab, swin = model == "resnet50-deeplab", model == "swin_t-baseline"
    batch = int(f[3]) if len(f) > 3 else (2 if deeplab or swin else 4)
    height = int(f[4]) if len(f) > 4 else (144 if deeplab else 224 if swin else 128)
    wide = int(f[5]) if len(f) > 5 else (192 if deeplab else 288 if swin else 256)
    head = int(f[6]) if len(f) > 6 else 256
    return dict(model=model, width=width, threads=threads, batch=batch, height=height, wide=wide, head=head)


def flags(r):
    out = ["--model", r["model"], "--width", str(r["width"]), "--threads", str(r["threads"]),
           "--batch", str(r["batch"]), "--height", str(r["height"]), "--wide", str(r["wide"])]
    if r["model"] in ("resnet50-deeplab", "swin_t-baseline"):
        out += ["--head-channels", str(r["head"])]
    return out


def measure(cmd, env):
    """Runs cmd; returns (parsed last JSON line, peak RSS MB of the child)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            os.execvpe(cmd[0], cmd, env)
        finally:
            os._exit(127)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench_pairs: {' '.join(cmd)} failed with status {os.waitstatus_to_exitcode(status)}")
    lines = [l for l in out.strip().splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"bench_pairs: {' '.join(cmd)} printed no JSON line")
    return json.loads(lines[-1]), usage.ru_maxrss / 1024.0


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--rows", nargs="*", default=DEFAULT_ROWS)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--method", default="ew")
    p.add_argument("--mtl", default=os.environ.get("MTL_BIN", os.path.join(ROOT, ".build/release/mtl")))
    p.add_argument("--torch-ref", default=os.environ.get("TORCH_REF", os.path.join(ROOT, "../shared/bench/torch_ref.py")))
    p.add_argument("--mtl-args", default="", help="extra arguments for mtl bench")
    p.add_argument("--mtl-env", default="", help="extra environment for mtl, e.g. 'OPENBLAS_CORETYPE=Haswell'")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"),
                   help="instead of PyTorch: two sets of mtl bench arguments (e.g. '--method ial' '--method ew'), "
                        "ratio A_ms / B_ms; --method is not added in this mode")
    p.add_argument("--json", help="write every measurement to this file")
    a = p.parse_args()

    base_env = dict(os.environ)
    mtl_env = dict(base_env)
    for kv in a.mtl_env.split():
        k, v = kv.split("=", 1)
        mtl_env[k] = v
    print(f"CPU: {cpu_model()}; {a.pairs} alternating runs per row, {a.steps} timed steps each, method {a.method}")
    records = []
    if a.compare:
        print(f"| row | A: {a.compare[0]} ms | B: {a.compare[1]} ms | A / B (median of per-pair ratios) |")
        print("| --- | --- | --- | --- |")
    else:
        print("| model | width | threads | batch | size | mtl ms | torch ms | torch CL ms | torch / mtl | torch CL / mtl "
              "| mtl GFLOP/s | % sgemm peak | mtl RSS MB | torch RSS MB | torch CL RSS MB |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for text in a.rows:
        r = parse_row(text)
        base = flags(r) + ["--steps", str(a.steps)]
        common = base + ["--method", a.method]
        mtl_cmd = [a.mtl, "bench", "--json"] + common + shlex.split(a.mtl_args)
        env_t = dict(base_env, OMP_NUM_THREADS=str(r["threads"]))
        ref = os.path.join(ROOT, "tools", TORCH_REFS[r["model"]]) if r["model"] in TORCH_REFS else a.torch_ref
        torch_cmd = [sys.executable, ref] + common
        if a.compare:
            ta, tb = [], []
            for _ in range(a.pairs):
                ja, _ = measure([a.mtl, "bench", "--json"] + base + shlex.split(a.compare[0]), mtl_env)
                jb, _ = measure([a.mtl, "bench", "--json"] + base + shlex.split(a.compare[1]), mtl_env)
                ta.append(ja["ms_per_step_median"])
                tb.append(jb["ms_per_step_median"])
            ratio = statistics.median(x / y for x, y in zip(ta, tb))
            records.append(dict(row=text, a=ta, b=tb, ratio=ratio))
            print(f"| {text} | {statistics.median(ta):.1f} | {statistics.median(tb):.1f} | {ratio:.3f} |")
            sys.stdout.flush()
            continue
        m, t, tc = [], [], []
        for _ in range(a.pairs):
            m.append(measure(mtl_cmd, mtl_env))
            t.append(measure(torch_cmd, env_t))
            if r["model"] not in NO_CHANNELS_LAST:
                tc.append(measure(torch_cmd + ["--channels-last"], env_t))
        ms = [x[0]["ms_per_step_median"] for x in m]
        ts = [x[0]["ms_per_step_median"] for x in t]
        tcs = [x[0]["ms_per_step_median"] for x in tc]
        ratio = statistics.median(y / x for x, y in zip(ms, ts))
        ratio_cl = statistics.median(y / x for x, y in zip(ms, tcs)) if tcs else float("nan")
        med = lambda v: statistics.median(v)
        gf = med([x[0]["gflops"] for x in m])
        pf = med([x[0]["peak_fraction"] for x in m])
        rec = dict(row=r, mtl_ms=ms, torch_ms=ts, torch_cl_ms=tcs, ratio=ratio, ratio_cl=ratio_cl,
                   mtl_rss=[x[1] for x in m], torch_rss=[x[1] for x in t], torch_cl_rss=[x[1] for x in tc],
                   gflops=gf, peak_fraction=pf, sgemm_peak=med([x[0]["sgemm_peak_gflops"] for x in m]))
        records.append(rec)
        print(f"| {r['model']} | {r['width']} | {r['threads']} | {r['batch']} | {r['height']}×{r['wide']} "
              f"| {med(ms):.1f} | {med(ts):.1f} | {med(tcs) if tcs else float('nan'):.1f} | {ratio:.2f}× | {ratio_cl:.2f}× "
              f"| {gf:.1f} | {100 * pf:.0f}% | {max(rec['mtl_rss']):.0f} | {max(rec['torch_rss']):.0f} "
              f"| {max(rec['torch_cl_rss'], default=float('nan')):.0f} |")
        sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(cpu=cpu_model(), pairs=a.pairs, records=records), f, indent=1)


if __name__ == "__main__":
    main()
