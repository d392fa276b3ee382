//! Scoring sampled masks against annotators over a dataset: per-image metrics, means with 95%
//! bootstrap intervals, and the files `eval` and `metrics` write (metrics.json, per_image.csv,
//! report.md).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Result, bail};
use ndarray::{Array4, ArrayView3, ArrayView4, Axis, Ix4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use super::metrics::{self, BitMask, Calibration};
use crate::data::npz::{self, NpyArray};
use crate::fsio;

/// One image's scores.
#[derive(Debug, Clone, Serialize)]
pub struct PerImage {
    pub index: usize,
    pub ged: f64,
    pub hm_iou: f64,
    /// Dice of the mean-probability mask (threshold 0.5) against each annotator.
    pub dice: Vec<f64>,
    pub iou: Vec<f64>,
    pub dice_majority: f64,
    pub iou_majority: f64,
    pub sample_diversity: f64,
    pub annotator_diversity: f64,
    pub annotators_all_empty: bool,
    pub annotators_all_lesion: bool,
    pub prediction_empty: bool,
    /// Pixels of the mean-probability mask that no annotator marked.
    pub area_outside_experts: usize,
    /// Annotators whose mask is not empty.
    pub experts_marked: usize,
}

/// A mean with its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub mean: f64,
    pub ci95: [f64; 2],
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub images: usize,
    pub samples_per_image: usize,
    pub annotators: usize,
    pub metrics: Vec<(String, Stat)>,
    /// Of the images no annotator marked, the share where the prediction is empty too.
    pub empty_agreement: Option<f64>,
    /// Of the images every annotator marked, the share where the prediction is not empty.
    pub lesion_agreement: Option<f64>,
    /// Expected calibration error of the mean probability against annotator frequency (10 bins).
    pub ece: f64,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub per_image: Vec<PerImage>,
    pub summary: Summary,
}

/// Checks that samples [N,n,H,W] and labels [N,M,H,W] fit together and hold 0/1 only.
pub fn check_inputs(samples: &ArrayView4<'_, u8>, labels: &ArrayView4<'_, u8>, s_name: &str, l_name: &str) -> Result<()> {
    let (ss, ls) = (samples.shape(), labels.shape());
    if ss[0] == 0 || ss[1] == 0 {
        bail!("{s_name}: samples have shape {ss:?}; expected [N, n, H, W] with N, n >= 1");
    }
    if ls[1] == 0 {
        bail!("{l_name}: labels have shape {ls:?}; expected [N, M, H, W] with M >= 1");
    }
    if ss[0] != ls[0] || ss[2] != ls[2] || ss[3] != ls[3] {
        bail!(
            "{s_name} has samples of shape {ss:?} but {l_name} has labels of shape {ls:?}; expected samples [{}, n, {}, {}]",
            ls[0],
            ls[2],
            ls[3]
        );
    }
    if let Some(v) = samples.iter().find(|&&v| v > 1) {
        bail!("{s_name}: samples must be binary (0 or 1), found {v}");
    }
    if let Some(v) = labels.iter().find(|&&v| v > 1) {
        bail!("{l_name}: labels must be binary (0 or 1), found {v}");
    }
    if ss[1] % ls[1] != 0 {
        bail!(
            "{s_name}: Hungarian-matched IoU needs the samples per image ({}) to be a multiple of the annotators per image ({}) in {l_name}",
            ss[1],
            ls[1]
        );
    }
    Ok(())
}

fn score_image(index: usize, samples: ArrayView3<'_, u8>, labels: ArrayView3<'_, u8>, calib: &mut Calibration) -> Result<PerImage> {
    let hw = samples.shape()[1] * samples.shape()[2];
    let s = samples.as_standard_layout();
    let y = labels.as_standard_layout();
    let s_raw: Vec<&[u8]> = s.as_slice().expect("standard layout").chunks(hw).collect();
    let y_raw: Vec<&[u8]> = y.as_slice().expect("standard layout").chunks(hw).collect();
    let sb: Vec<BitMask> = s_raw.iter().map(|m| BitMask::new(m)).collect();
    let yb: Vec<BitMask> = y_raw.iter().map(|m| BitMask::new(m)).collect();
    let freq_s = metrics::frequency(&s_raw);
    let freq_y = metrics::frequency(&y_raw);
    calib.add(&freq_s, &freq_y);
    let pred: Vec<u8> = freq_s.iter().map(|&p| (p >= 0.5) as u8).collect();
    let pred = BitMask::new(&pred);
    let maj = BitMask::new(&metrics::majority(&y_raw));
    Ok(PerImage {
        index,
        ged: metrics::ged(&sb, &yb),
        hm_iou: metrics::hungarian_iou(&sb, &yb)?,
        dice: yb.iter().map(|l| metrics::dice(&pred, l)).collect(),
        iou: yb.iter().map(|l| metrics::iou(&pred, l)).collect(),
        dice_majority: metrics::dice(&pred, &maj),
        iou_majority: metrics::iou(&pred, &maj),
        sample_diversity: metrics::diversity(&sb),
        annotator_diversity: metrics::diversity(&yb),
        annotators_all_empty: yb.iter().all(BitMask::is_empty),
        annotators_all_lesion: yb.iter().all(|l| !l.is_empty()),
        prediction_empty: pred.is_empty(),
        area_outside_experts: freq_s.iter().enumerate().filter(|&(j, &p)| p >= 0.5 && y_raw.iter().all(|l| l[j] == 0)).count(),
        experts_marked: yb.iter().filter(|l| !l.is_empty()).count(),
    })
}

/// Scores every image (in parallel) and summarises with 1,000 bootstrap resamples.
pub fn evaluate(samples: ArrayView4<'_, u8>, labels: ArrayView4<'_, u8>, seed: u64) -> Result<Report> {
    let n = samples.shape()[0];
    let scored: Vec<(PerImage, Calibration)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut c = Calibration::new(10);
            let p = score_image(i, samples.index_axis(Axis(0), i), labels.index_axis(Axis(0), i), &mut c)?;
            Ok((p, c))
        })
        .collect::<Result<_>>()?;
    let mut calib = Calibration::new(10);
    let mut per_image = Vec::with_capacity(n);
    for (p, c) in scored {
        calib.merge(&c);
        per_image.push(p);
    }
    let m = labels.shape()[1];
    let mut columns: Vec<(String, Vec<f64>)> =
        vec![("ged".into(), per_image.iter().map(|p| p.ged).collect()), ("hm_iou".into(), per_image.iter().map(|p| p.hm_iou).collect())];
    for k in 0..m {
        columns.push((format!("dice_annotator_{}", k + 1), per_image.iter().map(|p| p.dice[k]).collect()));
    }
    for k in 0..m {
        columns.push((format!("iou_annotator_{}", k + 1), per_image.iter().map(|p| p.iou[k]).collect()));
    }
    columns.push(("dice_majority".into(), per_image.iter().map(|p| p.dice_majority).collect()));
    columns.push(("iou_majority".into(), per_image.iter().map(|p| p.iou_majority).collect()));
    columns.push(("sample_diversity".into(), per_image.iter().map(|p| p.sample_diversity).collect()));
    columns.push(("annotator_diversity".into(), per_image.iter().map(|p| p.annotator_diversity).collect()));
    columns.push(("area_outside_experts".into(), per_image.iter().map(|p| p.area_outside_experts as f64).collect()));
    let metrics = columns.into_iter().map(|(k, v)| (k, bootstrap(&v, seed))).collect();
    let share = |sel: &dyn Fn(&PerImage) -> bool, ok: &dyn Fn(&PerImage) -> bool| {
        let chosen: Vec<&PerImage> = per_image.iter().filter(|p| sel(p)).collect();
        (!chosen.is_empty()).then(|| chosen.iter().filter(|p| ok(p)).count() as f64 / chosen.len() as f64)
    };
    let summary = Summary {
        images: n,
        samples_per_image: samples.shape()[1],
        annotators: m,
        metrics,
        empty_agreement: share(&|p| p.annotators_all_empty, &|p| p.prediction_empty),
        lesion_agreement: share(&|p| p.annotators_all_lesion, &|p| !p.prediction_empty),
        ece: calib.ece(),
    };
    Ok(Report { per_image, summary })
}

/// Mean and percentile 95% interval over 1,000 resamples of the images.
pub fn bootstrap(values: &[f64], seed: u64) -> Stat {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return Stat { mean, ci95: [mean, mean] };
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..1000).map(|_| (0..n).map(|_| values[rng.gen_range(0..n)]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    Stat { mean, ci95: [means[24], means[974]] }
}

impl Report {
    pub fn stat(&self, name: &str) -> Option<Stat> {
        self.summary.metrics.iter().find(|(k, _)| k == name).map(|(_, s)| *s)
    }

    /// metrics.json's content: counts, each metric's mean and interval, agreement, ECE.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        let mut json = serde_json::Map::new();
        json.insert("images".into(), self.summary.images.into());
        json.insert("samples_per_image".into(), self.summary.samples_per_image.into());
        json.insert("annotators".into(), self.summary.annotators.into());
        let mut m = serde_json::Map::new();
        for (k, s) in &self.summary.metrics {
            m.insert(k.clone(), serde_json::to_value(s)?);
        }
        json.insert("metrics".into(), m.into());
        json.insert("empty_agreement".into(), serde_json::to_value(self.summary.empty_agreement)?);
        json.insert("lesion_agreement".into(), serde_json::to_value(self.summary.lesion_agreement)?);
        json.insert("ece".into(), self.summary.ece.into());
        json.insert(
            "definitions".into(),
            "ged: squared generalized energy distance with d = 1 - IoU (d = 0 for two empty masks), self-pairs included, \
             averaged over images (PHiSeg/MoSE); hm_iou: Hungarian-matched IoU with labels repeated to the sample count; \
             dice/iou: mean-probability mask (sample frequency >= 0.5) against each annotator and the majority vote; \
             area_outside_experts: pixels of that mask no annotator marked; \
             intervals: 95% percentile bootstrap over images (1000 resamples)"
                .into(),
        );
        Ok(json.into())
    }

    /// Writes metrics.json, per_image.csv and report.md into `dir`.
    pub fn write(&self, dir: &Path, title: &str) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        fsio::write_atomic(&dir.join("metrics.json"), serde_json::to_string_pretty(&self.to_json()?)?.as_bytes())?;

        let m = self.summary.annotators;
        let mut csv = String::from("image,ged,hm_iou");
        for k in 1..=m {
            write!(csv, ",dice_annotator_{k}")?;
        }
        for k in 1..=m {
            write!(csv, ",iou_annotator_{k}")?;
        }
        csv.push_str(",dice_majority,iou_majority,sample_diversity,annotator_diversity,annotators_all_empty,prediction_empty,area_outside_experts,experts_marked\n");
        for p in &self.per_image {
            write!(csv, "{},{:.9},{:.9}", p.index, p.ged, p.hm_iou)?;
            for v in p.dice.iter().chain(&p.iou) {
                write!(csv, ",{v:.9}")?;
            }
            writeln!(
                csv,
                ",{:.9},{:.9},{:.9},{:.9},{},{},{},{}",
                p.dice_majority,
                p.iou_majority,
                p.sample_diversity,
                p.annotator_diversity,
                p.annotators_all_empty,
                p.prediction_empty,
                p.area_outside_experts,
                p.experts_marked
            )?;
        }
        fsio::write_atomic(&dir.join("per_image.csv"), csv.as_bytes())?;

        let mut md = format!("# {title}\n\n");
        writeln!(
            md,
            "{} images, {} samples per image, {} annotators.\n\n| metric | mean | 95% CI |\n|---|---|---|",
            self.summary.images, self.summary.samples_per_image, m
        )?;
        for (k, s) in &self.summary.metrics {
            writeln!(md, "| {k} | {:.4} | [{:.4}, {:.4}] |", s.mean, s.ci95[0], s.ci95[1])?;
        }
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.3}"));
        writeln!(md, "| ece | {:.4} | |", self.summary.ece)?;
        writeln!(md, "| empty_agreement | {} | |", opt(self.summary.empty_agreement))?;
        writeln!(md, "| lesion_agreement | {} | |", opt(self.summary.lesion_agreement))?;
        md.push_str(
            "\nGED is the squared generalized energy distance with d = 1 - IoU (PHiSeg / MoSE); lower is better. \
             HM-IoU is the Hungarian-matched IoU; higher is better.\n",
        );
        fsio::write_atomic(&dir.join("report.md"), md.as_bytes())
    }
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
    arr.into_dimensionality::<Ix4>().map_err(|_| anyhow::anyhow!("{}: '{key}' has shape {shape:?}; expected {expected}", path.display()))
}
