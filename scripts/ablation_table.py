#!/usr/bin/env python3
"""docs/ablation.md's table from scripts/ablation.sh's output directory: mean +- sd over seeds."""
import csv, json, statistics, sys
from pathlib import Path

NAMES = {
    "1_punet": "PU-Net (plain U-Net)",
    "2_gates": "+ attention gates",
    "3_coarsest": "+ transformer at the coarsest level",
    "4_every_level": "+ transformers at every level",
    "5_hpunet_elbo": "HPU-Net (ELBO)",
    "6_hpunet_geco": "HPU-Net (GECO + top-k)",
    "7_hpaunet_geco": "Hierarchical Probabilistic Attention U-Net (GECO + top-k)",
}


def fmt(values, digits=3):
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def main(root):
    root = Path(root)
    print("| model | seeds | GED (lower is better) | HM-IoU | sample diversity / annotator diversity | empty mean masks | lesion agreement | train s | train img/s (64 px) | sampled masks/s (128 px) | params |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row, name in NAMES.items():
        runs = sorted((root / row).glob("seed*/eval/metrics.json"))
        if not runs:
            continue
        cols = {k: [] for k in ("ged", "hm_iou", "sd", "ad", "empty", "lesion", "secs")}
        for m_path in runs:
            m = json.load(open(m_path))
            cols["ged"].append(m["metrics"]["ged"]["mean"])
            cols["hm_iou"].append(m["metrics"]["hm_iou"]["mean"])
            cols["sd"].append(m["metrics"]["sample_diversity"]["mean"])
            cols["ad"].append(m["metrics"]["annotator_diversity"]["mean"])
            if m.get("lesion_agreement") is not None:
                cols["lesion"].append(m["lesion_agreement"])
            rows = list(csv.DictReader(open(m_path.parent / "per_image.csv")))
            cols["empty"].append(sum(r["prediction_empty"] == "true" for r in rows))
            secs = m_path.parent.parent / "train_seconds"
            if secs.exists():
                cols["secs"].append(sum(float(x) for x in secs.read_text().split()))
        b = root / row / "bench.json"
        bench = json.load(open(b)) if b.exists() else {}
        print(
            f"| {name} | {len(runs)} | {fmt(cols['ged'])} | {fmt(cols['hm_iou'])} | {fmt(cols['sd'])} / {fmt(cols['ad'])} "
            f"| {fmt(cols['empty'], 1)} of {len(rows)} | {fmt(cols['lesion'])} | {fmt(cols['secs'], 0)} "
            f"| {bench.get('train_images_per_s_64', float('nan')):.2f} | {bench.get('sampled_masks_per_s_128', float('nan')):.1f} | {bench.get('params', '-')} |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ablation")
