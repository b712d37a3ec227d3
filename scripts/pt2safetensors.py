"""Converts a torch.save'd state_dict (zip or pre-1.6 format) into a safetensors file, for `glowd import`.

    python scripts/pt2safetensors.py <checkpoint.pt> <out.safetensors>

glowd embeds this file and runs it with the project venv's Python only when libtorch cannot read a checkpoint
itself. Needs nothing but torch; loads with weights_only=True, so a checkpoint cannot run code. Names are kept as
they are (glowd strips a `module.` prefix itself).
"""
import ctypes
import json
import struct
import sys

import torch

DTYPES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}


def main(src, dst):
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # one line for glowd's error message
        first = (str(e).strip().splitlines() or [""])[0]
        sys.exit(f"{src}: torch.load failed: {type(e).__name__}: {first}")
    if not isinstance(state, dict):
        sys.exit(f"{src}: holds a {type(state).__name__}, not a state_dict")
    others = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if others:
        sys.exit(f"{src}: entries that are not tensors: {', '.join(map(str, others[:10]))}")
    header, blobs, offset = {}, [], 0
    for name in sorted(state):
        t = state[name].detach().contiguous()
        if t.dtype not in DTYPES:
            sys.exit(f"{src}: tensor `{name}` has unsupported dtype {t.dtype}")
        size = t.numel() * t.element_size()
        blobs.append(ctypes.string_at(t.data_ptr(), size) if size else b"")
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
