# GPU check of glowd's bf16 design (issue 14) in plain PyTorch: a random glow-64 (L=4, K=32, hidden 512, affine,
# LU 1x1 convs) built the way glowd's inference form is (ActNorm folded into the 1x1 conv, W and W^-1 in float64),
# run with the coupling networks in fp32 (TF32 off), TF32, bf16 with a float32 state, and bf16 with a float64
# state (glowd's choice). Prints round-trip failures on 64 real faces and encode/decode images/s per batch.
import sys, time, torch, numpy as np
dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
torch.manual_seed(0)
L, K, H = 4, 32, 512
faces = torch.from_numpy(np.load(".gpu/faces64.npy")).to(dev)
CL = torch.channels_last if dev == "cpu" else torch.contiguous_format
def rot(c):
    q, _ = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64)); return q
class Step: pass
levels = []
c = 3
for i in range(L):
    c *= 4; steps = []
    for k in range(K):
        s = Step(); w = rot(c)
        P, Lo, U = torch.linalg.lu(w)
        Lo = Lo + torch.randn(c, c, dtype=torch.float64).tril(-1) * 0.002
        U = U + torch.randn(c, c, dtype=torch.float64).triu(1) * 0.002
        W = P @ Lo @ U
        a_s = torch.exp(torch.randn(c, dtype=torch.float64) * 0.05); a_b = torch.randn(c, dtype=torch.float64) * 0.05
        s.fw64 = (W * a_s.view(1, c)).view(c, c, 1, 1).to(dev); s.fb64 = (W @ (a_s * a_b)).to(dev)
        s.rw64 = (torch.linalg.inv(W) / a_s.view(c, 1)).view(c, c, 1, 1).to(dev); s.rb64 = (-a_b).to(dev)
        s.fw32 = (W.float() * a_s.float().view(1, c)).view(c, c, 1, 1).to(dev); s.fb32 = s.fb64.float()
        s.rw32 = s.rw64.float(); s.rb32 = s.rb64.float()
        h = c // 2
        s.w0 = (torch.randn(H, h, 3, 3) * 0.05).to(dev); s.b0 = torch.zeros(H, device=dev)
        s.w2 = (torch.randn(H, H, 1, 1) * 0.05).to(dev); s.b2 = torch.zeros(H, device=dev)
        s.w4 = (torch.randn(c, H, 3, 3) * 0.002).to(dev); s.b4 = (torch.randn(c) * 0.002).to(dev)
        for n in ["w0", "b0", "w2", "b2", "w4", "b4"]:
            setattr(s, n + "h", getattr(s, n).to(torch.bfloat16))
        steps.append(s)
    levels.append(steps)
    if i < L - 1: c //= 2
MODE = "fp32"
def net(s, xa):
    if MODE.startswith("bf16"):
        x = xa.to(torch.bfloat16).contiguous(memory_format=CL)
        h = torch.relu(torch.conv2d(x, s.w0h, s.b0h, padding=1)); h = torch.relu(torch.conv2d(h, s.w2h, s.b2h))
        return torch.conv2d(h, s.w4h, s.b4h, padding=1).to(xa.dtype)
    h = torch.relu(torch.conv2d(xa, s.w0, s.b0, padding=1)); h = torch.relu(torch.conv2d(h, s.w2, s.b2))
    return torch.conv2d(h, s.w4, s.b4, padding=1)
def sq(x):
    n, c, h, w = x.shape; return x.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, c * 4, h // 2, w // 2)
def usq(x):
    n, c, h, w = x.shape; return x.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, h * 2, w * 2)
def f64(): return MODE == "bf16-f64"
def encode(x):
    zs = []; h = x
    for i, steps in enumerate(levels):
        h = sq(h)
        for s in steps:
            h = torch.conv2d(h, s.fw64, s.fb64) if f64() else torch.conv2d(h, s.fw32, s.fb32)
            a, b = h.chunk(2, 1); o = net(s, a); hh, t = o.chunk(2, 1)
            h = torch.cat([a, (b + t) * torch.sigmoid(hh + 2)], 1)
        if i < L - 1:
            a, z = h.chunk(2, 1); zs.append(z); h = a
        else: zs.append(h)
    return zs
def decode(zs):
    h = None
    for i in reversed(range(L)):
        x = zs[i] if h is None else torch.cat([h, zs[i]], 1)
        for s in reversed(levels[i]):
            a, b = x.chunk(2, 1); o = net(s, a); hh, t = o.chunk(2, 1)
            x = torch.cat([a, b / torch.sigmoid(hh + 2) - t], 1)
            x = torch.conv2d(x, s.rw64, s.rb64) if f64() else torch.conv2d(x, s.rw32, s.rb32)
        h = usq(x)
    return h
def sync():
    if dev != "cpu": torch.cuda.synchronize()
torch.backends.cudnn.deterministic = True
for MODE in ["fp32", "tf32", "bf16-f32", "bf16-f64"]:
    torch.backends.cudnn.allow_tf32 = MODE == "tf32"; torch.backends.cuda.matmul.allow_tf32 = MODE == "tf32"
    kind = torch.float64 if f64() else torch.float32
    with torch.no_grad():
        x = ((faces.to(kind) + 0.5) / 256 - 0.5)
        bad = bad_img = 0
        for s0 in range(0, 64, 16):
            p = faces[s0:s0 + 16]; xr = decode(encode(x[s0:s0 + 16]))
            q = ((xr + 0.5) * 256).floor().clamp(0, 255).to(torch.uint8); d = q != p
            bad += d.sum().item(); bad_img += d.flatten(1).any(1).sum().item()
        line = f"{MODE}: round trip on 64 faces: {bad} pixels of {bad_img} faces differ;"
        for batch in [8, 32, 64] if dev != "cpu" else [8]:
            xb = x[:8].repeat(batch // 8, 1, 1, 1)
            zs = encode(xb); decode(zs); sync()
            t = time.time(); [encode(xb) for _ in range(3)]; sync(); e = 3 * batch / (time.time() - t)
            t = time.time(); [decode(zs) for _ in range(3)]; sync(); d = 3 * batch / (time.time() - t)
            line += f" batch {batch}: encode {e:.0f}, decode {d:.0f} images/s;"
        print(line, flush=True)
