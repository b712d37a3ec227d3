#!/usr/bin/env python3
"""Eager PyTorch reference for `glowd bench`: rosinality/glow-pytorch's model (its model.py, which this repo does not
ship: put it in REF_DIR) on the glow-64 shape (L=4, K=32, hidden 512, affine, LU) with random weights.

    python3 scripts/bench-pytorch-ref.py REF_DIR [--device cpu|cuda] [--batch 8] [--iters 3] [--threads 2]
        [--autocast] [--faces DIR --crop l,t,r,b]

Prints encode and decode images/s, timed the way `glowd bench` times (one warm-up, then the median of --iters), and
the round trip of 8-bit images: decode(encode(x)) quantised back to 8 bits against x (the pixels that do not come
back, and the largest error in the port's [-0.5, 0.5] units; half an 8-bit bin is 0.00195). `--autocast` runs
encode and decode under `torch.autocast(device, torch.bfloat16)`, what a PyTorch user tries for bf16 speed (ActNorm
is initialised in float32 first). The images are random 8-bit noise, or the first --batch pictures of --faces
(cropped to --crop, resized to 64x64). The port needs scipy (`pip install scipy`).
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
p.add_argument("--autocast", action="store_true")
p.add_argument("--faces")
p.add_argument("--crop")
a = p.parse_args()
sys.path.insert(0, a.ref_dir)
import torch
from model import Glow

torch.set_num_threads(a.threads)
torch.manual_seed(0)
# The port's coupling width is fixed at 512, glow-64's hidden width: its Glow() takes no width argument.
model = Glow(3, n_flow=32, n_block=a.levels, affine=True, conv_lu=True).to(a.device).eval()
if a.faces:
    import os
    import numpy as np
    from PIL import Image
    names = sorted(f for f in os.listdir(a.faces) if f.lower().endswith((".jpg", ".png")))[: a.batch]
    pics = []
    for n in names:
        im = Image.open(os.path.join(a.faces, n)).convert("RGB")
        if a.crop:
            im = im.crop(tuple(int(v) for v in a.crop.split(",")))
        pics.append(np.asarray(im.resize((a.size, a.size), Image.LANCZOS)))
    x8 = torch.from_numpy(np.stack(pics)).permute(0, 3, 1, 2).contiguous().to(a.device)
else:
    x8 = torch.randint(0, 256, (a.batch, 3, a.size, a.size), device=a.device, dtype=torch.uint8)
# Bin centres, the port's scaling (k / 256 - 0.5) plus half a bin.
x = (x8.float() + 0.5) / 256 - 0.5


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


import contextlib

with torch.no_grad():
    model(x)  # the port initialises ActNorm on its first forward (in float32)
    mode = torch.autocast(a.device.split(":")[0], dtype=torch.bfloat16) if a.autocast else contextlib.nullcontext()
    with mode:
        _, _, z = model(x)
        enc = timed(lambda: model(x))
        dec = timed(lambda: model.reverse(z, reconstruct=True))
        back = model.reverse(z, reconstruct=True).float()
k = ((back + 0.5) * 256).floor().clamp(0, 255).to(torch.uint8)
wrong = (k != x8)
tf32 = torch.backends.cudnn.allow_tf32 if a.device.startswith("cuda") else None
print(f"pytorch {torch.__version__} {a.device} batch {a.batch} (cudnn tf32: {tf32}, bf16 autocast: {a.autocast})")
print(f"pytorch encode images/s: {a.batch / enc:.2f}")
print(f"pytorch decode images/s: {a.batch / dec:.2f}")
print(f"round trip: {wrong.float().mean().item() * 100:.1f}% of pixels do not come back "
      f"({int(wrong.flatten(1).any(1).sum())} of {a.batch} images), max error {(back - x).abs().max().item():.4f}")
