#!/usr/bin/env python3
"""PyTorch baselines for bench/gpu_bench.mjs, on the same GPU and shape:
N = 512, d = 512, C in {100000, 1000000}, adaptive margin (m1 = 0.03, m2 = 0.5), s = 64.

(a) eager: the face-recognition recipe as users write it — normalise X and W,
    X̂·Ŵᵀ (TF32), the margin on the target logit only (gather → arccos → cos →
    scatter, with the monotonic fallback where the margined angle exceeds π),
    ·s, cross_entropy, autograd backward to X and W.
(b) matmuls: the three products alone (X̂·Ŵᵀ, G·Ŵ, Gᵀ·X̂) in TF32 on
    preallocated operands: the floor any unfused implementation pays.

Timings: CUDA events, median over --iters runs after --warmup runs. Memory:
torch.cuda.max_memory_allocated() above what the inputs hold. Prints one JSON
object (and writes it to --json FILE). Needs no network.
"""
import argparse
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F


def timed(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def adaptive_loss(x, w, y, s=64.0, m1=0.03, m2=0.5):
    xn = F.normalize(x, dim=1)
    wn = F.normalize(w, dim=1)
    cos = xn @ wn.t()
    ct = cos.gather(1, y[:, None]).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.acos(ct)
    phi = theta + m1 * torch.sin(theta) ** 2 + m2
    zt = torch.where(phi > math.pi, ct - m2 * math.sin(m2), torch.cos(phi))
    logits = cos.scatter(1, y[:, None], zt) * s
    return F.cross_entropy(logits, y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--c", default="100000,1000000")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    out = {"n": a.n, "d": a.d, "margin": {"kind": "adaptive", "m1": 0.03, "m2": 0.5}, "scale": 64, "tf32": True,
           "eager": [], "matmuls": []}
    if not torch.cuda.is_available():
        out["error"] = "no CUDA device visible to PyTorch"
        print(json.dumps(out, indent=1))
        return 1
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cuda")
    out["device"] = torch.cuda.get_device_name(0)
    out["torch"] = torch.__version__
    g = torch.Generator(device=dev).manual_seed(0)
    for c in [int(v) for v in a.c.split(",")]:
        n, d = a.n, a.d
        flops = 6.0 * n * d * c
        # (a) eager autograd
        x = torch.randn(n, d, device=dev, generator=g).requires_grad_()
        w = torch.randn(c, d, device=dev, generator=g).requires_grad_()
        y = torch.randint(0, c, (n,), device=dev, generator=g)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        held = torch.cuda.memory_allocated()

        def fwd():
            with torch.no_grad():
                adaptive_loss(x, w, y)

        def fwd_bwd():
            x.grad = None
            w.grad = None
            adaptive_loss(x, w, y).backward()

        row = {"c": c}
        try:
            row["forward_ms"] = round(timed(fwd, a.iters, a.warmup), 3)
            row["fwd_bwd_ms"] = round(timed(fwd_bwd, a.iters, a.warmup), 3)
            row["backward_ms"] = round(row["fwd_bwd_ms"] - row["forward_ms"], 3)
            row["tflops_fwd_bwd"] = round(flops / (row["fwd_bwd_ms"] * 1e-3) / 1e12, 3)
            row["peak_bytes_above_inputs"] = torch.cuda.max_memory_allocated() - held
            row["loss"] = float(adaptive_loss(x, w, y))
        except torch.cuda.OutOfMemoryError as e:
            row["error"] = f"out of memory: {str(e)[:200]}"
        out["eager"].append(row)
        print(json.dumps({"eager": row}), file=sys.stderr)
        del x, w, y
        x = w = y = None
        torch.cuda.empty_cache()

        # (b) the three products alone
        xn = F.normalize(torch.randn(n, d, device=dev, generator=g), dim=1)
        wn = F.normalize(torch.randn(c, d, device=dev, generator=g), dim=1)
        gm = torch.randn(n, c, device=dev, generator=g) * 1e-3
        cos = torch.empty(n, c, device=dev)
        dx = torch.empty(n, d, device=dev)
        dw = torch.empty(c, d, device=dev)
        row = {"c": c}
        row["cos_ms"] = round(timed(lambda: torch.matmul(xn, wn.t(), out=cos), a.iters, a.warmup), 3)
        row["dx_ms"] = round(timed(lambda: torch.matmul(gm, wn, out=dx), a.iters, a.warmup), 3)
        row["dw_ms"] = round(timed(lambda: torch.matmul(gm.t(), xn, out=dw), a.iters, a.warmup), 3)
        row["total_ms"] = round(row["cos_ms"] + row["dx_ms"] + row["dw_ms"], 3)
        row["tflops"] = round(flops / (row["total_ms"] * 1e-3) / 1e12, 3)
        out["matmuls"].append(row)
        print(json.dumps({"matmuls": row}), file=sys.stderr)
        del xn, wn, gm, cos, dx, dw
        torch.cuda.empty_cache()
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
