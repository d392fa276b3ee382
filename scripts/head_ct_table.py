#!/usr/bin/env python3
"""docs/head-ct.md's table from the kept scores of scripts/head_ct_windows.sh:

    python3 scripts/head_ct_table.py docs/head-ct-runs
"""
import csv, json, statistics, sys
from pathlib import Path


def fmt(v):
    return f"{v[0]:.3f}" if len(v) == 1 else f"{statistics.mean(v):.3f} +- {statistics.stdev(v):.3f}"


def main(root):
    print("| input window | seeds | GED (lower is better) | HM-IoU | Dice mean mask vs majority | empty mean masks | area outside every expert (px per crop) | per seed: GED / Dice |")
    print("|---|---|---|---|---|---|---|---|")
    labels = {"lung": "lung", "brain": "brain", "stacked": "brain, subdural, bone as 3 channels"}
    for w in labels:
        runs = sorted((Path(root) / w).glob("seed*"))
        runs = [r for r in runs if (r / "eval/metrics.json").exists()]
        if not runs:
            continue
        m = [json.load(open(r / "eval/metrics.json"))["metrics"] for r in runs]
        rows = [list(csv.DictReader(open(r / "eval/per_image.csv"))) for r in runs]
        ged = [x["ged"]["mean"] for x in m]
        dice = [x["dice_majority"]["mean"] for x in m]
        empty = [float(sum(p["prediction_empty"] == "true" for p in rr)) for rr in rows]
        outside = [statistics.mean(float(p["area_outside_experts"]) for p in rr) for rr in rows]
        per = ", ".join(f"{r.name}: {g:.3f} / {d:.3f}" for r, g, d in zip(runs, ged, dice))
        print(f"| {labels[w]} | {len(runs)} | {fmt(ged)} | {fmt([x['hm_iou']['mean'] for x in m])} | {fmt(dice)} | {fmt(empty)} of {len(rows[0])} | {fmt(outside)} | {per} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/head-ct-runs")
