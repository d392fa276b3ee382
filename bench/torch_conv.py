#!/usr/bin/env python3
"""PyTorch side of `cargo run --release --example conv_gflops [-- THREADS]`: the same 3x3
convolutions, forward, input gradient and weight gradient each timed alone (best of 5 after a
warm-up call), in GFLOP/s of the forward's multiply-adds.

    python3 bench/torch_conv.py [THREADS]
"""
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


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
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
                f"n{n} {ci:>3}->{co:<3} @{hw:<3}  forward {fwd * 1e3:6.1f} ms {gflop / fwd:5.1f} GFLOP/s | "
                f"input grad {dx * 1e3:6.1f} ms {gflop / dx:5.1f} | weight grad {dw * 1e3:6.1f} ms {gflop / dw:5.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
