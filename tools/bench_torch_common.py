"""What the PyTorch bench references (tools/bench_*_torch.py) share with each other and with
../shared/bench/torch_ref.py: the bench tasks' synthetic batch and losses (seg 13 classes CE ignore
-1, depth L1 on depth > 0, normals 1 - cos on valid pixels), MTI-Net's multiscale baseline head, and
the timing loop that prints the one JSON line tools/bench_pairs.py reads.

A reference script parses the common flags, builds its network after torch.manual_seed(0), and
hands over the modules to train and a forward that maps the input to one prediction per task:

    a = bench_parser(height=128, wide=256, batch=4).parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = MyNet()
    run_bench(a, [net], lambda x: net(x), model="my-net")    # prints the JSON line
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

TASK_CHANNELS = (("seg", 13), ("depth", 1), ("normals", 3))


def bench_batch(B, H, W):
    """The input and the (seg, depth, normals) targets, drawn from torch's global generator in this order."""
    x = torch.randn(B, 3, H, W)
    seg = torch.randint(-1, 13, (B, H, W))
    depth = torch.rand(B, 1, H, W)
    normals = F.normalize(torch.randn(B, 3, H, W), dim=1)
    return x, (seg, depth, normals)


def task_losses(preds, seg, depth, normals):
    """[seg CE, depth L1, normals 1 - cos], each a mean over its valid pixels (as mtl's losses)."""
    ls = F.cross_entropy(preds["seg"], seg, ignore_index=-1)
    valid = depth > 0
    ld = (preds["depth"] - depth).abs()[valid].mean()
    n = F.normalize(preds["normals"], dim=1)
    nvalid = normals.abs().sum(1) > 0
    ln = (1 - (n * normals).sum(1))[nvalid].mean()
    return [ls, ld, ln]


class MultiScaleHead(nn.Module):
    """MTI-Net's HighResolutionHead: scales 1.. resized to scale 0, concat, 1x1 conv + BN + ReLU, 1x1
    classifier, bilinear to the input size (mtl's `model.decoder: multiscale`)."""

    def __init__(self, widths, cout, hidden=270):
        super().__init__()
        self.last_layer = nn.Sequential(nn.Conv2d(sum(widths), hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(),
                                        nn.Conv2d(hidden, cout, 1))

    def forward(self, xs, size):
        h, w = xs[0].shape[-2:]
        ys = [xs[0]] + [F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False) for x in xs[1:]]
        return F.interpolate(self.last_layer(torch.cat(ys, 1)), size=size, mode="bilinear", align_corners=False)


def bench_parser(height, wide, batch, channels_last=True):
    """--height --wide --batch --threads --steps (and --channels-last), with this model's defaults; --method ew,
    --model and --width are accepted for tools/bench_pairs.py."""
    p = argparse.ArgumentParser()
    p.add_argument("--height", type=int, default=height)
    p.add_argument("--wide", type=int, default=wide)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--method", default="ew", choices=("ew",), help="only ew: these references time the plain step")
    p.add_argument("--model", default="", help="ignored (tools/bench_pairs.py passes it)")
    p.add_argument("--width", type=int, default=0, help="ignored (tools/bench_pairs.py passes it)")
    if channels_last:
        p.add_argument("--channels-last", action="store_true")
    return p


def run_bench(a, modules, forward, **fields):
    """Times a.steps training steps (Adam lr 1e-4 over the modules' parameters, the bench batch and
    losses at a's size; the modules and the input in channels_last with --channels-last) and prints the
    JSON line with `fields` (model=..., parameters=...) and the parsed size and thread count."""
    opt = torch.optim.Adam([q for m in modules for q in m.parameters()], lr=1e-4)
    x, targets = bench_batch(a.batch, a.height, a.wide)
    channels_last = getattr(a, "channels_last", False)
    if channels_last:
        for m in modules:
            m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def step():
        opt.zero_grad(set_to_none=True)
        sum(task_losses(forward(x), *targets)).backward()
        opt.step()

    if hasattr(a, "channels_last"):
        fields["channels_last"] = channels_last
    report(time_steps(step, a.steps), **fields, batch=a.batch, height=a.height, width_px=a.wide, threads=a.threads)


def time_steps(step, steps, warmup=2):
    """Milliseconds of each of `steps` calls of step() after `warmup` untimed ones, and the GFLOP of one
    more untimed call as torch.utils.flop_counter counts them (matrix products, convolutions and
    attention, forward and backward): the figure mtl bench's gflop_per_step is compared with."""
    for _ in range(warmup):
        step()
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    return times, counter.get_total_flops() / 1e9


def report(timed, **fields):
    """Prints one JSON line: the fields (method defaults to ew), the GFLOP per step, then the median and
    minimum ms per step (`timed` is what time_steps returns)."""
    times, gflop = timed
    out = dict(fields)
    out["gflop_per_step"] = round(gflop, 3)
    out.setdefault("method", "ew")
    out["ms_per_step_median"] = round(statistics.median(times), 2)
    out["ms_per_step_min"] = round(min(times), 2)
    print(json.dumps(out))
