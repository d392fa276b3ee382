#!/usr/bin/env python3
"""The known-truth set of docs/small-data.md (numpy): 24x24 crops, background 0.2 with noise,
an obvious disc (0.8) all four experts mark (p = 1) and a subtle one (0.45) two of four mark
(p = 0.5). tests/it/truth.rs builds the same design in Rust.

    python3 scripts/known_truth.py make DIR          # DIR/train.npz (48 crops), DIR/test.npz (16)
    python3 scripts/known_truth.py check DIR S.npz   # sample frequency per known probability
"""
import sys
import numpy as np


def make(n, size, seed):
    rng = np.random.default_rng(seed)
    img = 0.2 + 0.03 * rng.standard_normal((n, size, size)).astype(np.float32)
    masks = np.zeros((n, 4, size, size), np.uint8)
    prob = np.zeros((n, size, size), np.float32)
    yy, xx = np.mgrid[:size, :size]
    r = 3.5
    for i in range(n):
        for value, experts, p in [(0.8, 4, 1.0), (0.45, 2, 0.5)]:
            while True:
                cy, cx = rng.uniform(r + 1, size - r - 2, 2)
                if not (prob[i][np.hypot(yy - cy, xx - cx) <= r + 3] > 0).any():
                    break
            d = np.hypot(yy - cy, xx - cx) <= r
            img[i][d] = value
            masks[i, :experts, d] = 1
            prob[i][d] = p
    return np.clip(img, 0, 1).astype(np.float32), masks, prob


def main():
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "make":
        for name, n, seed in [("train", 48, 1), ("test", 16, 2)]:
            im, m, p = make(n, 24, seed)
            np.savez(f"{d}/{name}.npz", images=im, masks=m, prob=p, series_uid=np.array([f"s{i}" for i in range(n)]))
        return
    p = np.load(f"{d}/test.npz")["prob"]
    f = np.load(sys.argv[3])["samples"].mean(1)
    for v in [1.0, 0.5, 0.0]:
        sel = p == v
        print(f"known {v}: sample frequency mean {f[sel].mean():.3f} (pixels {sel.sum()}); per-pixel error {np.abs(f[sel] - v).mean():.3f}")


if __name__ == "__main__":
    main()
