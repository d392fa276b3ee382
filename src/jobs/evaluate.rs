//! `eval`, `metrics` and `plot` as library calls: sampling a dataset with a run and scoring it,
//! scoring any model's samples from files, and a run's training curves.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ndarray::Axis;

use crate::data::Dataset;
use crate::data::npz::{self, NpzEntry};
use crate::eval::report::{self, Report, read_masks};
use crate::eval::{figures, metrics, plots, publish};
use crate::inference;
use crate::jobs::sample::RunSampling;
use crate::train;

/// What `eval` is asked to do.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    pub sampling: RunSampling,
    pub data: PathBuf,
    pub out: PathBuf,
    /// Images in samples.png (indices); `None`: the first 8.
    pub images: Option<Vec<usize>>,
    /// Masks as contours over the CT in samples.png.
    pub overlay: bool,
    /// Write review.html.
    pub review: bool,
    /// Open it when done.
    pub open: bool,
}

/// metrics.json, per_image.csv, report.md and the GED histogram.
pub fn write_outputs(report: &Report, dir: &Path, title: &str) -> Result<()> {
    report.write(dir, title)?;
    let geds: Vec<f64> = report.per_image.iter().map(|p| p.ged).collect();
    plots::ged_histogram(&geds, &dir.join("ged_histogram.png"))
}

/// `apunet eval`: samples `req.data` with the run, scores the samples against the experts and
/// writes samples.npz, metrics.json, per_image.csv, report.md, the histogram, samples.png and the
/// review page's files into `req.out`.
pub fn evaluate_run(req: &EvalRequest) -> Result<Report> {
    let a = req;
    let s = &a.sampling;
    let (device, cfg, model) = s.load()?;
    let ds = Dataset::load(&a.data)?;
    s.check_data(&cfg, &ds, &a.data)?;
    cfg.model.check_size(ds.height(), ds.width())?;
    let m = ds.annotators();
    if !s.n.is_multiple_of(m) {
        bail!("--n {} must be a multiple of the {m} annotators in {} for Hungarian-matched IoU", s.n, a.data.display());
    }
    let pb = crate::progress::bar(ds.len() as u64, false, "eval");
    let samples = inference::sample_images(&model, &ds.images, &s.sampling(&cfg)?, &device, |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let (masks, mean) = (samples.masks.clone().into_dyn(), samples.mean.clone().into_dyn());
    npz::write_npz(&a.out.join("samples.npz"), &[("samples", NpzEntry::U8(&masks)), ("mean", NpzEntry::F32(&mean))])?;
    let report = report::evaluate(samples.masks.view(), ds.masks.view(), s.seed)?;
    write_outputs(&report, &a.out, &format!("apunet eval: {} on {}", s.run.display(), a.data.display()))?;
    let record = publish::ReviewRecord {
        kind: "eval".into(),
        run: s.run.clone(),
        data: a.data.clone(),
        seed: s.seed,
        units: publish::dataset_units(ds.preprocess.as_ref()),
        volume: false,
    };
    let arrays = publish::Arrays {
        images: ds.display_images().to_owned(),
        masks: ds.masks.clone(),
        samples: samples.masks.clone(),
        mean: samples.mean.clone(),
    };
    publish::publish(&a.out, &arrays, &record, Some(&report), a.review, a.open)?;
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
    let imgs = sub.display_images().as_standard_layout().into_owned();
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
    Ok(report)
}

/// `apunet metrics`: any model's `samples` [N,n,H,W] against `masks` [N,M,H,W] from two npz
/// files, with the report written into `out` when given.
pub fn score_files(samples: &Path, labels: &Path, out: Option<&Path>) -> Result<Report> {
    let s = read_masks(samples, "samples", "[N, n, H, W]")?;
    let l = read_masks(labels, "masks", "[N, M, H, W]")?;
    let (s_name, l_name) = (samples.display().to_string(), labels.display().to_string());
    report::check_inputs(&s.view(), &l.view(), &s_name, &l_name)?;
    let report = report::evaluate(s.view(), l.view(), 0)?;
    if let Some(dir) = out {
        write_outputs(&report, dir, &format!("apunet metrics: {s_name} vs {l_name}"))?;
    }
    Ok(report)
}

/// `apunet plot`: a run's training curves into `out` (default RUN/curves.png); the path written.
pub fn plot_run(run: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let csv = run.join("metrics.csv");
    let history = train::read_metrics(&csv).with_context(|| format!("reading {}", csv.display()))?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| run.join("curves.png"));
    plots::training_curves(&train::history::curve_panels(&history), &out)?;
    Ok(out)
}
