#!/usr/bin/env python3
"""PyTorch side of `cargo run --release --example conv_gflops [-- THREADS]`: the same 3x3
convolutions, forward, input gradient and weight gradient each timed alone (best of 5 after a
warm-up call), in GFLOP/s of the forward's multiply-adds and as a share of the core's fp32 FMA
peak, which `apunet bench --fma-peak` measures first with a register-only loop (APUNET_BIN, else
target/release/apunet; without it the shares are left out).

    python3 bench/torch_conv.py [THREADS]
"""
import json
import os
import subprocess
import sys
import time

import torch

# (batch, c_in, c_out, size, pad), as in examples/conv_gflops.rs.
GEOMS = [
    (8, 32, 32, 128, 1), (8, 64, 64, 64, 1), (8, 128, 128, 32, 1), (8, 192, 192, 16, 1), (8, 96, 32, 128, 1),
    (1, 256, 256, 34, 0), (1, 256, 256, 66, 0), (1, 64, 64, 34, 0),
    (8, 16, 16, 64, 1), (8, 48, 16, 64, 1), (8, 32, 32, 32, 1), (8, 64, 64, 16, 1), (8, 96, 96, 8, 1),
]


def best_of_5(f):
    f()
    times = []
    for _ in range(5):
        s = time.perf_counter()
        f()
        times.append(time.perf_counter() - s)
    return min(times)


def fma_peak():
    """One core's fp32 FMA peak in GFLOP/s, from apunet's register-only loop, or None."""
    binary = os.environ.get("APUNET_BIN", os.path.join(os.path.dirname(__file__), "..", "target", "release", "apunet"))
    try:
        out = subprocess.run([binary, "bench", "--fma-peak"], capture_output=True, text=True, check=True).stdout
        return json.loads(out)["fma_peak_gflops_per_core"]
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError):
        return None


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(threads)
    peak = fma_peak()
    print(f"FMA peak, one thread: {peak:.1f} GFLOP/s" if peak else "FMA peak unknown (no apunet binary): shares left out", flush=True)
    share = (lambda t, gflop: f" {100 * gflop / t / (peak * threads):3.0f}%") if peak else (lambda t, gflop: "")
    back = torch.ops.aten.convolution_backward
    with torch.no_grad():
        for n, ci, co, hw, pad in GEOMS:
            x = torch.randn(n, ci, hw, hw)
            w = torch.randn(co, ci, 3, 3)
            out = hw + 2 * pad - 2
            g = torch.randn(n, co, out, out)
            gflop = 2 * n * out * out * ci * co * 9 / 1e9
            conv = [1, 1], [pad, pad], [1, 1], False, [0, 0], 1
            fwd = best_of_5(lambda: torch.nn.functional.conv2d(x, w, padding=pad))
            dx = best_of_5(lambda: back(g, x, w, None, *conv, [True, False, False]))
            dw = best_of_5(lambda: back(g, x, w, None, *conv, [False, True, False]))
            print(
                f"n{n} {ci:>3}->{co:<3} @{hw:<3}  forward {fwd * 1e3:6.1f} ms {gflop / fwd:5.1f} GFLOP/s{share(fwd, gflop)} | "
                f"input grad {dx * 1e3:6.1f} ms {gflop / dx:5.1f}{share(dx, gflop)} | "
                f"weight grad {dw * 1e3:6.1f} ms {gflop / dw:5.1f}{share(dw, gflop)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
