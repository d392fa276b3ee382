#!/usr/bin/env python3
"""docs/ablation.md's table, mean +- sd over seeds, from scripts/ablation.sh's output folders
and the kept scores (docs/ablation-runs, with its earlier-seeds.csv).

    python3 scripts/ablation_table.py ablation docs/ablation-runs
    python3 scripts/ablation_table.py --recipe /tmp/abl27 docs/ablation-runs-27   # issue 27's columns

A (row, seed) found in more than one place is counted once: the first root given wins, then the
CSV. A column some seeds lack is averaged over the seeds that have it, with their count.
"""
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
    "3a_spatial": "default + spatial augmentation",
    "3b_intensity": "default + intensity augmentation",
    "3c_schedule": "default + warm-up and poly schedule",
    "3d_ema": "default + weight average (EMA 0.99)",
    "3e_paste": "default + lesion copy-paste (p 0.5)",
    "3f_recipe": "default + the whole recipe",
    "4f_every_level_recipe": "transformers at every level + the whole recipe",
    "6f_hpunet_geco_recipe": "HPU-Net (GECO + top-k) + the whole recipe",
    "6g_hpunet_geco_topk10": "HPU-Net (GECO + top-k 10%)",
    "6r_hpunet_geco_rate": "HPU-Net (GECO + top-k 2%, multiplier step 5e-4)",
    "6s_hpunet_geco_rate_prior": "HPU-Net (GECO + top-k 2%, multiplier step 5e-4, output from p = 0.5)",
    "6t_hpunet_deepmind": "HPU-Net (GECO + top-k 2%, multiplier step 5e-4, output from p = 0.5, orthogonal weights)",
    "6u_hpunet_deepmind_schedule": "HPU-Net as 6t + the poly schedule (warm-up 5 epochs) and EMA 0.99",
    "torch_hpunet_geco_topk10": "PyTorch HPU-Net, DeepMind's GECO + top-k 10% (bench/torch_hpunet_train.py)",
    "torch_hpunet_geco_topk2": "PyTorch HPU-Net, DeepMind's GECO + top-k 2% (the reference)",
    "torch_hpunet_geco_topk2_ptinit": "PyTorch HPU-Net, GECO + top-k 2%, PyTorch's default init",
    "torch_hpunet_geco_topk2_bias": "PyTorch HPU-Net, GECO + top-k 2%, output from p = 0.05 as apunet's",
    "3p_painted": "default + painted lesions (painter, half of each batch)",
    "3q_pasted": "default + the same lesions pasted (copy-paste twins, half of each batch)",
}
COLS = ("ged", "hm_iou", "sample_diversity", "annotator_diversity", "empty", "lesion_agreement", "train_s", "dice_majority", "empty_3", "outside", "dice_marked")


def from_run(seed_dir):
    """One run's scores from its folder (eval/metrics.json, eval/per_image.csv, train_seconds)."""
    m = json.load(open(seed_dir / "eval" / "metrics.json"))
    rows = list(csv.DictReader(open(seed_dir / "eval" / "per_image.csv")))
    secs = seed_dir / "train_seconds"
    return {
        "ged": m["metrics"]["ged"]["mean"],
        "hm_iou": m["metrics"]["hm_iou"]["mean"],
        "sample_diversity": m["metrics"]["sample_diversity"]["mean"],
        "annotator_diversity": m["metrics"]["annotator_diversity"]["mean"],
        "empty": sum(r["prediction_empty"] == "true" for r in rows),
        "images": len(rows),
        "lesion_agreement": m.get("lesion_agreement"),
        "train_s": sum(float(x) for x in secs.read_text().split()) if secs.exists() else None,
        # Columns of eval from 2026-12-06 on (issue 27); older runs lack them.
        "dice_majority": m["metrics"]["dice_majority"]["mean"],
        "empty_3": sum(r["prediction_empty"] == "true" and int(r["experts_marked"]) >= 3 for r in rows) if "experts_marked" in rows[0] else None,
        "outside": statistics.mean(float(r["area_outside_experts"]) for r in rows) if "area_outside_experts" in rows[0] else None,
        # Dice on the crops whose majority (two or more of four, ties count) marks a lesion.
        "dice_marked": statistics.mean(float(r["dice_majority"]) for r in rows if int(r["experts_marked"]) * 2 >= int(m["annotators"]))
        if "experts_marked" in rows[0] else None,
    }


def from_csv(path):
    out = {}
    for r in csv.DictReader(open(path)):
        vals = {k: (float(r[k]) if r.get(k) not in ("", None) else None) for k in COLS}
        vals["images"] = int(r["images"])
        out[(r["row"], int(r["seed"]))] = vals
    return out


def collect(roots):
    runs = {}
    for root in map(Path, roots):
        for row in NAMES:
            for seed_dir in sorted((root / row).glob("seed*")):
                key = (row, int(seed_dir.name[4:]))
                if key not in runs and (seed_dir / "eval" / "metrics.json").exists():
                    runs[key] = from_run(seed_dir)
    for root in map(Path, roots):
        if (root / "earlier-seeds.csv").exists():
            for key, vals in from_csv(root / "earlier-seeds.csv").items():
                runs.setdefault(key, vals)
    return runs


def fmt(values, seeds, digits=3):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    text = f"{values[0]:.{digits}f}" if len(values) == 1 else f"{statistics.mean(values):.{digits}f} +- {statistics.stdev(values):.{digits}f}"
    n = len(values)
    return text if n == seeds else f"{text} ({n} seed{'' if n == 1 else 's'})"


def main(roots):
    runs = collect(roots)
    recipe = "--recipe" in roots
    roots = [r for r in roots if r != "--recipe"]
    if recipe:
        return recipe_table(collect(roots))
    runs = collect(roots)
    print("| model | seeds | GED (lower is better) | HM-IoU | sample diversity / annotator diversity | empty mean masks | lesion agreement | train s | train img/s (64 px) | sampled masks/s (128 px) | params |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row, name in NAMES.items():
        mine = [v for (r, _), v in sorted(runs.items()) if r == row]
        if not mine:
            continue
        n = len(mine)
        col = {k: [v[k] for v in mine] for k in COLS}
        bench = next((json.load(open(b)) for b in (Path(r) / row / "bench.json" for r in roots) if b.exists()), {})
        print(
            f"| {name} | {n} | {fmt(col['ged'], n)} | {fmt(col['hm_iou'], n)} | {fmt(col['sample_diversity'], n)} / {fmt(col['annotator_diversity'], n)} "
            f"| {fmt(col['empty'], n, 1)} of {mine[0]['images']} | {fmt(col['lesion_agreement'], n)} | {fmt(col['train_s'], n, 0)} "
            f"| {bench.get('train_images_per_s_64', float('nan')):.2f} | {bench.get('sampled_masks_per_s_128', float('nan')):.1f} | {bench.get('params', '-')} |"
        )


def recipe_table(runs):
    """Issue 27's table: the recipe's columns, the rows that have them."""
    print("| model | seeds | GED | HM-IoU | Dice mean mask vs majority (on the crops the majority marks) | lesion agreement | empty mean masks (of them, crops >= 3 experts marked) | area outside every expert (px per crop) | sample / annotator diversity | train s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row, name in NAMES.items():
        name = "default PU-Net (today's recipe)" if row == "3_coarsest" else name
        mine = [v for (r, _), v in sorted(runs.items()) if r == row and v.get("outside") is not None]
        if not mine:
            continue
        n = len(mine)
        col = {k: [v[k] for v in mine] for k in COLS}
        print(
            f"| {name} | {n} | {fmt(col['ged'], n)} | {fmt(col['hm_iou'], n)} | {fmt(col['dice_majority'], n)} ({fmt(col['dice_marked'], n)}) | {fmt(col['lesion_agreement'], n)} "
            f"| {fmt(col['empty'], n, 1)} ({fmt(col['empty_3'], n, 1)}) of {mine[0]['images']} | {fmt(col['outside'], n, 1)} "
            f"| {fmt(col['sample_diversity'], n)} / {fmt(col['annotator_diversity'], n)} | {fmt(col['train_s'], n, 0)} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["ablation"])
