//! `apunet eval`, `apunet metrics` and `apunet plot`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::ProgressBar;
use ndarray::{Array4, Axis, Ix4};

use crate::data::Dataset;
use crate::data::npz::{self, NpyArray, NpzEntry};
use crate::eval::report::{self, Report};
use crate::eval::{figures, metrics, plots};
use crate::inference;
use crate::train;

use super::SamplingArgs;
use super::review;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Dataset npz to sample and score (its masks are the experts).
    #[arg(long)]
    pub data: PathBuf,
    /// Directory for metrics.json, per_image.csv, report.md, samples.npz and figures.
    #[arg(long)]
    pub out: PathBuf,
    /// Images shown in the figure (indices); default: the first 8.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub images: Option<Vec<usize>>,
    /// Draw masks as contours over the CT.
    #[arg(long)]
    pub overlay: bool,
    /// Do not write review.html, the page to look through every case [default: write it].
    #[arg(long)]
    pub no_review: bool,
    /// Open review.html in the default browser when done.
    #[arg(long)]
    pub open: bool,
}

#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// npz with `samples` uint8 [N,n,H,W] (any model's).
    #[arg(long)]
    pub samples: PathBuf,
    /// npz with `masks` uint8 [N,M,H,W] (the annotators').
    #[arg(long)]
    pub labels: PathBuf,
    /// Also write metrics.json, per_image.csv, report.md and the GED histogram here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print only the summary, not every image.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// The run directory whose metrics.csv is drawn.
    #[arg(long)]
    pub run: PathBuf,
    /// Default: RUN/curves.png.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// A uint8 4-D array under `key`, with errors that name the file and the expected shape.
pub fn read_masks(path: &Path, key: &str, expected: &str) -> Result<Array4<u8>> {
    let mut arrays = npz::read_npz(path)?;
    let arr = match arrays.remove(key) {
        Some(NpyArray::U8(a)) => a,
        Some(NpyArray::I64(a)) => {
            if let Some(v) = a.iter().find(|&&v| !(0..=1).contains(&v)) {
                bail!("{}: '{key}' must be binary (0 or 1), found {v}", path.display());
            }
            a.mapv(|v| v as u8)
        }
        Some(other) => bail!("{}: '{key}' must be uint8 {expected}, got {}", path.display(), other.kind()),
        None => bail!(
            "{}: no '{key}' array (found {:?}); expected '{key}' with shape {expected}",
            path.display(),
            arrays.keys().collect::<Vec<_>>()
        ),
    };
    let shape = arr.shape().to_vec();
    arr.into_dimensionality::<Ix4>()
        .map_err(|_| anyhow::anyhow!("{}: '{key}' has shape {shape:?}; expected {expected}", path.display()))
}

fn write_outputs(report: &Report, dir: &Path, title: &str) -> Result<()> {
    report.write(dir, title)?;
    let geds: Vec<f64> = report.per_image.iter().map(|p| p.ged).collect();
    plots::ged_histogram(&geds, &dir.join("ged_histogram.png"))
}

fn print_summary(report: &Report) {
    let s = &report.summary;
    let get = |k: &str| report.stat(k).map(|s| format!("{:.4} [{:.4}, {:.4}]", s.mean, s.ci95[0], s.ci95[1]));
    crate::say!(
        "{} images x {} samples x {} annotators\nGED    {}\nHM-IoU {}\nDice (majority) {}\nECE {:.4}",
        s.images,
        s.samples_per_image,
        s.annotators,
        get("ged").unwrap_or_default(),
        get("hm_iou").unwrap_or_default(),
        get("dice_majority").unwrap_or_default(),
        s.ece
    );
}

pub fn metrics_cmd(a: MetricsArgs) -> Result<()> {
    let samples = read_masks(&a.samples, "samples", "[N, n, H, W]")?;
    let labels = read_masks(&a.labels, "masks", "[N, M, H, W]")?;
    let (s_name, l_name) = (a.samples.display().to_string(), a.labels.display().to_string());
    report::check_inputs(&samples.view(), &labels.view(), &s_name, &l_name)?;
    let started = std::time::Instant::now();
    let report = report::evaluate(samples.view(), labels.view(), 0)?;
    let scored_in = started.elapsed().as_secs_f64();
    if !a.quiet {
        crate::say!("image,ged,hm_iou");
        for p in &report.per_image {
            crate::say!("{},{:.9},{:.9}", p.index, p.ged, p.hm_iou);
        }
    }
    print_summary(&report);
    crate::say!("scored in {scored_in:.3} s (all metrics, bootstrap included; reading the files not counted)");
    if let Some(dir) = &a.out {
        write_outputs(&report, dir, &format!("apunet metrics: {s_name} vs {l_name}"))?;
        crate::say!("wrote {}/metrics.json, per_image.csv, report.md, ged_histogram.png", dir.display());
    }
    Ok(())
}

pub fn eval_cmd(a: EvalArgs) -> Result<()> {
    let s = &a.sampling;
    let (device, cfg, model) = s.load()?;
    let ds = Dataset::load(&a.data)?;
    s.check_data(&cfg, &ds, &a.data)?;
    cfg.model.check_size(ds.height(), ds.width())?;
    let m = ds.annotators();
    if s.n % m != 0 {
        bail!("--n {} must be a multiple of the {m} annotators in {} for Hungarian-matched IoU", s.n, a.data.display());
    }
    let pb = ProgressBar::new(ds.len() as u64);
    let samples =
        inference::sample_images(&model, &ds.images, &s.sampling(&cfg)?, &device, |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let (masks, mean) = (samples.masks.clone().into_dyn(), samples.mean.clone().into_dyn());
    npz::write_npz(&a.out.join("samples.npz"), &[("samples", NpzEntry::U8(&masks)), ("mean", NpzEntry::F32(&mean))])?;
    let report = report::evaluate(samples.masks.view(), ds.masks.view(), s.seed)?;
    write_outputs(&report, &a.out, &format!("apunet eval: {} on {}", s.run.display(), a.data.display()))?;
    let record = review::ReviewRecord {
        kind: "eval".into(),
        run: s.run.clone(),
        data: a.data.clone(),
        seed: s.seed,
        units: review::dataset_units(ds.preprocess.as_ref()),
        volume: false,
    };
    let arrays = review::Arrays {
        images: ds.images.clone(),
        masks: ds.masks.clone(),
        samples: samples.masks.clone(),
        mean: samples.mean.clone(),
    };
    review::publish(&a.out, &arrays, &record, Some(&report), !a.no_review, a.open)?;
    drop(arrays);

    let idx: Vec<usize> = match &a.images {
        Some(v) => {
            if let Some(bad) = v.iter().find(|&&i| i >= ds.len()) {
                bail!("--images: index {bad} is out of range for {} images", ds.len());
            }
            v.clone()
        }
        None => (0..ds.len().min(8)).collect(),
    };
    let (h, w) = (ds.height(), ds.width());
    let hw = h * w;
    let sub = ds.subset(&idx);
    let smp = samples.masks.select(Axis(0), &idx);
    let smp = smp.as_standard_layout();
    let smp = smp.as_slice().expect("standard layout");
    let imgs = sub.images.as_standard_layout();
    let msks = sub.masks.as_standard_layout();
    let (img, msk) = (imgs.as_slice().expect("standard layout"), msks.as_slice().expect("standard layout"));
    let shown = s.n.min(6);
    let columns: Vec<figures::Column<'_>> = idx
        .iter()
        .enumerate()
        .map(|(c, &i)| {
            let p: Vec<f32> = samples.mean.index_axis(Axis(0), i).iter().copied().collect();
            figures::Column {
                image: &img[c * hw..(c + 1) * hw],
                labels: (0..m).map(|k| &msk[(c * m + k) * hw..(c * m + k + 1) * hw]).collect(),
                samples: (0..shown).map(|k| &smp[(c * s.n + k) * hw..(c * s.n + k + 1) * hw]).collect(),
                heat: vec![p.clone(), metrics::entropy(&p)],
            }
        })
        .collect();
    let opts = figures::GridOptions { overlay: a.overlay, heat_labels: vec!["mean prob".into(), "entropy".into()] };
    let fig = figures::sample_grid(&columns, h, w, &format!("{} samples per image; mean probability and entropy (bits)", s.n), &opts);
    figures::save_png(&fig, &a.out.join("samples.png"))?;
    print_summary(&report);
    crate::say!(
        "wrote {}: metrics.json, per_image.csv, report.md, samples.npz, samples.png, ged_histogram.png, inputs.npz{}",
        a.out.display(),
        if a.no_review { "" } else { ", review.html" }
    );
    Ok(())
}

pub fn plot_cmd(a: PlotArgs) -> Result<()> {
    let csv = a.run.join("metrics.csv");
    let history = train::read_metrics(&csv).with_context(|| format!("reading {}", csv.display()))?;
    let out = a.out.unwrap_or_else(|| a.run.join("curves.png"));
    plots::training_curves(&history, &out)?;
    crate::say!("wrote {}", out.display());
    Ok(())
}
