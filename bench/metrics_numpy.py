#!/usr/bin/env python3
"""Peer for `apunet metrics`: GED and Hungarian-matched IoU written as PHiSeg's numpy loop
(generalised_energy_distance with a per-pair IoU), with scipy's linear_sum_assignment.

    python3 bench/metrics_numpy.py --images 1000 --out /tmp/mbench
    apunet metrics --samples /tmp/mbench/samples.npz --labels /tmp/mbench/labels.npz --out /tmp/mbench/apunet --quiet

It writes the two npz inputs, times its own loop, and writes per-image values to
ged_numpy.csv, so apunet's per_image.csv can be checked against an independent implementation.
"""
import argparse, os, time

import numpy as np
from scipy.optimize import linear_sum_assignment


def dist_fct(m1, m2):
    s1, s2 = np.sum(m1), np.sum(m2)
    if s1 == 0 and s2 == 0:
        return 0.0
    if s1 == 0 or s2 == 0:
        return 1.0
    return 1.0 - np.sum(np.logical_and(m1, m2)) / np.sum(np.logical_or(m1, m2))


def ged(s, y):
    n, m = len(s), len(y)
    d_sy = [dist_fct(s[i], y[j]) for i in range(n) for j in range(m)]
    d_ss = [dist_fct(s[i], s[j]) for i in range(n) for j in range(n)]
    d_yy = [dist_fct(y[i], y[j]) for i in range(m) for j in range(m)]
    return 2.0 / (n * m) * sum(d_sy) - sum(d_ss) / n**2 - sum(d_yy) / m**2


def hm_iou(s, y):
    n, m = len(s), len(y)
    yy = [y[j % m] for j in range(n)]
    cost = np.array([[dist_fct(s[i], yy[j]) for j in range(n)] for i in range(n)])
    r, c = linear_sum_assignment(cost)
    return float(np.mean(1.0 - cost[r, c]))


def make(images, n, m, size, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((images, m, size, size), np.uint8)
    samples = np.zeros((images, n, size, size), np.uint8)
    for i in range(images):
        if rng.random() < 0.15:
            continue
        cy, cx = rng.uniform(size * 0.4, size * 0.6, 2)
        r = rng.uniform(2, size / 10)
        for k in range(m):
            if rng.random() < 0.2:
                continue
            rk = r * rng.uniform(0.7, 1.3)
            labels[i, k] = (yy - cy) ** 2 + (xx - cx) ** 2 <= rk**2
        for k in range(n):
            if rng.random() < 0.1:
                continue
            rk = r * rng.uniform(0.6, 1.4)
            oy, ox = rng.normal(0, 1.5, 2)
            samples[i, k] = (yy - cy - oy) ** 2 + (xx - cx - ox) ** 2 <= rk**2
    return samples, labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--annotators", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    s, y = make(a.images, a.samples, a.annotators, a.size, 0)
    np.savez_compressed(os.path.join(a.out, "samples.npz"), samples=s)
    np.savez_compressed(os.path.join(a.out, "labels.npz"), masks=y)
    t = time.perf_counter()
    rows = [(ged(s[i], y[i]), hm_iou(s[i], y[i])) for i in range(a.images)]
    dt = time.perf_counter() - t
    with open(os.path.join(a.out, "ged_numpy.csv"), "w") as f:
        f.write("image,ged,hm_iou\n")
        for i, (g, h) in enumerate(rows):
            f.write(f"{i},{g:.9f},{h:.9f}\n")
    print(f"numpy loop: {a.images} images x {a.samples} samples x {a.annotators} annotators at {a.size}x{a.size}: "
          f"{dt:.2f} s ({a.images / dt:.1f} images/s); mean GED {np.mean([r[0] for r in rows]):.6f}, "
          f"mean HM-IoU {np.mean([r[1] for r in rows]):.6f}")


if __name__ == "__main__":
    main()
