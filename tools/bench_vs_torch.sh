#!/usr/bin/env bash
# Runs `mtl bench` and ../shared/bench/torch_ref.py on the same machine, in the same run, for
# widths 32 and 64 and 1 and 2 threads (and the methods given), and prints a markdown table.
# Needs torch for python3 (pip install torch). Usage: tools/bench_vs_torch.sh [ew pcgrad ial ...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ref="${TORCH_REF:-$root/../shared/bench/torch_ref.py}"
mtl="${MTL_BIN:-$root/.build/release/mtl}"
[ -x "$mtl" ] || (cd "$root" && swift build -c release --product mtl >&2)
methods=("${@:-ew}")
json() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['$1'])"; }
echo "| method | width | threads | mtl ms/step | torch ms/step | torch / mtl | mtl GFLOP/s | % of sgemm peak | mtl peak RSS MB |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for m in "${methods[@]}"; do
  for w in 32 64; do
    for t in 1 2; do
      out=$(OPENBLAS_NUM_THREADS=$t "$mtl" bench --width "$w" --threads "$t" --method "$m" --json)
      ms=$(echo "$out" | json ms_per_step_median)
      gf=$(echo "$out" | json gflops); pf=$(echo "$out" | json peak_fraction); rss=$(echo "$out" | json peak_rss_mb)
      tms=$(OMP_NUM_THREADS=$t python3 "$ref" --width "$w" --threads "$t" --method "$m" | json ms_per_step_median)
      python3 -c "print(f'| $m | $w | $t | {float($ms):.1f} | {float($tms):.1f} | {float($tms)/float($ms):.2f}x | {float($gf):.1f} | {100*float($pf):.0f}% | {float($rss):.0f} |')"
    done
  done
done
