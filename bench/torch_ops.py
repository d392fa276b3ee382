#!/usr/bin/env python3
"""PyTorch side of `cargo run --release --example op_profile`: the same ops at the same shapes."""
import time

import torch
import torch.nn as nn


def t(name, reps, f):
    f()
    s = time.perf_counter()
    for _ in range(reps):
        f()
    print(f"{name:<44} {(time.perf_counter() - s) * 1e3 / reps:>9.1f} ms", flush=True)


b = 8
for cin, c, s in [(32, 32, 128), (64, 64, 64), (128, 128, 32), (192, 192, 16)]:
    conv = nn.Conv2d(cin, c, 3, padding=1, bias=False)
    x = torch.randn(b, cin, s, s, requires_grad=True)
    with torch.no_grad():
        t(f"conv3x3 {cin}->{c} @{s}x{s} fwd", 3, lambda: conv(x).sum().item())
    t(f"conv3x3 {cin}->{c} @{s}x{s} fwd+bwd", 3, lambda: conv(x).sum().backward())
    gn = nn.GroupNorm(8, c)
    y = torch.randn(b, c, s, s, requires_grad=True)
    t(f"groupnorm {c} @{s}x{s} fwd+bwd", 3, lambda: gn(y).sum().backward())
    t(f"relu {c} @{s}x{s} fwd+bwd", 3, lambda: torch.relu(y).sum().backward())
