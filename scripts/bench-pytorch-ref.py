#!/usr/bin/env python3
"""Eager PyTorch reference for `glowd bench`: rosinality/glow-pytorch's model (its model.py, which this repo does not
ship: put it in REF_DIR) on the glow-64 shape (L=4, K=32, hidden 512, affine, LU) with random weights.

    python3 scripts/bench-pytorch-ref.py REF_DIR [--device cpu|cuda] [--batch 8] [--iters 3] [--threads 2]

Prints encode and decode images/s, timed the way `glowd bench` times (one warm-up, then the median of --iters).
"""
import argparse, sys, time

p = argparse.ArgumentParser()
p.add_argument("ref_dir")
p.add_argument("--device", default="cpu")
p.add_argument("--batch", type=int, default=8)
p.add_argument("--iters", type=int, default=5)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--size", type=int, default=64)
p.add_argument("--levels", type=int, default=4)
a = p.parse_args()
sys.path.insert(0, a.ref_dir)
import torch
from model import Glow

torch.set_num_threads(a.threads)
torch.manual_seed(0)
# The port's coupling width is fixed at 512, glow-64's hidden width: its Glow() takes no width argument.
model = Glow(3, n_flow=32, n_block=a.levels, affine=True, conv_lu=True).to(a.device).eval()
x = torch.rand(a.batch, 3, a.size, a.size, device=a.device) - 0.5


def sync():
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(f):
    f()
    sync()
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        f()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


with torch.no_grad():
    model(x)  # the port initialises ActNorm on its first forward
    _, _, z = model(x)
    enc = timed(lambda: model(x))
    dec = timed(lambda: model.reverse(z, reconstruct=True))
tf32 = torch.backends.cudnn.allow_tf32 if a.device.startswith("cuda") else None
print(f"pytorch {torch.__version__} {a.device} batch {a.batch} (cudnn tf32: {tf32})")
print(f"pytorch encode images/s: {a.batch / enc:.2f}")
print(f"pytorch decode images/s: {a.batch / dec:.2f}")
