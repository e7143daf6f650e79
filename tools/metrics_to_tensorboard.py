#!/usr/bin/env python3
"""Turn the metrics.jsonl of one or several mtl runs into TensorBoard event files.

usage: tools/metrics_to_tensorboard.py RUN_DIR [RUN_DIR ...] --out LOGDIR
       tensorboard --logdir LOGDIR

Each run becomes LOGDIR/<run name> (the run directory's name; a parent/name pair when two runs
share a name). Every numeric field of a record is a scalar at the record's step, under a tag made of
its kind and its key:
  train records: train/loss.<task>, train/lr, train/samples_per_s, train/grad_norm,
                 train/step_time_max_s, train/compute_s, train/comm_s, train/coef.<task>,
                 train/method.<name> (method weights, σ, λ, ...)
  eval records:  eval/<task>.<metric> (and any other numeric field)
Booleans are written as 0/1; strings (split, kind) are not scalars. Needs the `tensorboard` package
from PyPI (its own event writer; no torch or TensorFlow needed).
"""
import argparse
import json
import math
import os
import sys


def records(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: not found (expected an mtl run directory with metrics.jsonl)")
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not a JSON object ({e.msg})")
            if not isinstance(rec, dict) or "step" not in rec:
                raise SystemExit(f"{path}:{n}: expected a record with 'kind' and 'step'")
            yield rec


def scalars(rec):
    """(tag, value) pairs of one record."""
    kind = rec.get("kind", "record")
    for key, value in rec.items():
        if key in ("kind", "step"):
            continue
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            yield f"{kind}/{key}", float(value)


def run_names(run_dirs):
    names = [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    out = []
    for d, n in zip(run_dirs, names):
        if names.count(n) > 1:
            parent = os.path.basename(os.path.dirname(os.path.normpath(d)))
            n = f"{parent}/{n}"
        out.append(n)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="mtl run directories")
    ap.add_argument("--out", required=True, help="TensorBoard log directory")
    a = ap.parse_args()
    try:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
    except ImportError as e:
        print(f"the tensorboard package is needed (pip install tensorboard): {e}", file=sys.stderr)
        sys.exit(77)
    for run_dir, name in zip(a.runs, run_names(a.runs)):
        writer = EventFileWriter(os.path.join(a.out, name))
        count = 0
        for rec in records(run_dir):
            values = [Summary.Value(tag=t, simple_value=v) for t, v in scalars(rec)]
            if values:
                writer.add_event(Event(step=int(rec["step"]), summary=Summary(value=values)))
                count += len(values)
        writer.close()
        print(f"{run_dir} → {os.path.join(a.out, name)}: {count} scalars")


if __name__ == "__main__":
    main()
