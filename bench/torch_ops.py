#!/usr/bin/env python3
"""PyTorch side of `cargo run --release --example op_profile`: the same ops at the same shapes.

    python3 bench/torch_ops.py [gan]
"""
import sys
import time

import torch
import torch.nn as nn


def t(name, reps, f):
    f()
    s = time.perf_counter()
    for _ in range(reps):
        f()
    print(f"{name:<44} {(time.perf_counter() - s) * 1e3 / reps:>9.1f} ms", flush=True)


def gan_ops():
    x = torch.randn(1, 1, 256, 256, requires_grad=True)
    stem = nn.Conv2d(1, 64, 7)
    pad3, pad1 = nn.ReflectionPad2d(3), nn.ReflectionPad2d(1)
    t("c7s1-64: reflect pad 3 + conv7x7 @256 fwd+bwd", 3, lambda: stem(pad3(x)).sum().backward())
    for ci, co, s in [(64, 128, 256), (128, 256, 128)]:
        c = nn.Conv2d(ci, co, 3, stride=2, padding=1)
        xi = torch.randn(1, ci, s, s, requires_grad=True)
        t(f"d{co}: conv3x3/2 {ci}->{co} @{s} fwd+bwd", 3, lambda: c(xi).sum().backward())
    r = nn.Conv2d(256, 256, 3)
    x = torch.randn(1, 256, 64, 64, requires_grad=True)
    t("R256 conv3x3 256->256 @64 fwd+bwd (x18/G)", 3, lambda: r(pad1(x)).sum().backward())
    t("reflect pad 1 256 @64 fwd+bwd", 3, lambda: pad1(x).sum().backward())
    inorm = nn.InstanceNorm2d(256, affine=True)
    t("instance norm 256 @64 fwd+bwd", 3, lambda: inorm(x).sum().backward())
    for ci, co, s in [(256, 128, 64), (128, 64, 128)]:
        up = nn.ConvTranspose2d(ci, co, 3, stride=2, padding=1, output_padding=1)
        xi = torch.randn(1, ci, s, s, requires_grad=True)
        t(f"u{co}: convT3x3/2 {ci}->{co} @{s} fwd+bwd", 3, lambda: up(xi).sum().backward())
    for ci, co, stride, s in [(1, 64, 2, 256), (64, 128, 2, 128), (128, 256, 2, 64), (256, 512, 1, 32)]:
        c = nn.Conv2d(ci, co, 4, stride=stride, padding=1)
        xi = torch.randn(1, ci, s, s, requires_grad=True)
        t(f"PatchGAN conv4x4/{stride} {ci}->{co} @{s} fwd+bwd", 3, lambda: c(xi).sum().backward())


if "gan" in sys.argv[1:]:
    gan_ops()
    sys.exit(0)

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
