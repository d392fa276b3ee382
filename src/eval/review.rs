//! The review page: one self-contained HTML file (no network, no build step) to look through
//! every case's CT, expert contours, sampled masks as a flip-book, mean probability and entropy.
//!
//! Each case travels as one zlib-deflated, base64 blob in its own `<script>` tag: the CT as
//! 16-bit values, the expert and sample masks as packed bits, the mean probability as bytes.
//! The page decodes a case only when it is opened (the browser's DecompressionStream), so a
//! thousand cases open as fast as their table.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use flate2::Compression;
use flate2::write::ZlibEncoder;
use ndarray::{ArrayView3, ArrayView4, Axis};
use serde_json::{Value, json};

use super::metrics;
use super::report::Report;
use crate::fsio;

const PAGE: &str = include_str!("review/review.html");
const STYLE: &str = include_str!("review/review.css");
const SCRIPT: &str = include_str!("review/review.js");

/// What the CT values of a page are.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Units {
    /// The model's input in [0,1], with no known mapping to HU.
    Intensity,
    /// The model's input in [0,1], mapped there by this HU window.
    Mapped { width: f64, level: f64 },
    /// Hounsfield units, with the file's own window (width, level) where it has one.
    Hounsfield { file_window: Option<(f64, f64)> },
}

impl Units {
    fn to_units(self, v: f32) -> f32 {
        match self {
            Units::Mapped { width, level } => (level - width / 2.0 + v as f64 * width) as f32,
            _ => v,
        }
    }
}

/// What a page shows.
pub struct ReviewInput<'a> {
    pub title: String,
    pub images: ArrayView3<'a, f32>,
    /// [N, A, H, W]; A may be 0 where no expert masks exist.
    pub experts: ArrayView4<'a, u8>,
    /// [N, S, H, W] sampled masks.
    pub samples: ArrayView4<'a, u8>,
    /// [N, H, W] mean probability over the samples.
    pub mean: ArrayView3<'a, f32>,
    pub report: Option<&'a Report>,
    pub units: Units,
    /// The cases are the slices of one volume (a slice slider), not separate images.
    pub volume: bool,
    /// The run whose config.toml and metrics.csv the page shows.
    pub run: Option<PathBuf>,
}

/// Writes the page to `path` (atomically).
pub fn write_page(input: &ReviewInput<'_>, path: &Path) -> Result<()> {
    let (n, h, w) = input.images.dim();
    let s = input.samples.dim();
    if s.0 != n || s.2 != h || s.3 != w {
        bail!("review: the samples [{}, {}, {}, {}] do not match the {n} images of {h}x{w}", s.0, s.1, s.2, s.3);
    }
    if input.mean.dim() != (n, h, w) {
        let m = input.mean.dim();
        bail!("review: the mean map [{}, {}, {}] does not match the {n} images of {h}x{w}", m.0, m.1, m.2);
    }
    if input.experts.dim().1 > 0 && (input.experts.dim().0 != n || input.experts.dim().2 != h || input.experts.dim().3 != w) {
        bail!("review: the expert masks ({:?}) do not match the {n} images of {h}x{w}", input.experts.dim());
    }
    let to_units = |v: f32| input.units.to_units(v);
    let (lo, hi) = input.images.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo.is_finite() { (to_units(lo), to_units(hi).max(to_units(lo) + 1e-6)) } else { (0.0, 1.0) };
    let mut blobs = String::new();
    let mut cases = Vec::with_capacity(n);
    for i in 0..n {
        let blob = case_blob(input, i, lo, hi, &to_units)?;
        blobs.push_str(&format!("<script id=\"case-{i}\" type=\"application/octet-stream\">{}</script>\n", base64(&blob)));
        cases.push(case_meta(input, i));
    }
    let manifest = manifest(input, cases, (lo, hi));
    let html = PAGE
        .replace("/*STYLE*/", STYLE)
        .replace("/*W*/", &w.to_string())
        .replace("/*H*/", &h.to_string())
        .replace("/*MANIFEST*/", &serde_json::to_string(&manifest)?.replace("</", "<\\/"))
        .replace("/*SCRIPT*/", SCRIPT)
        .replace("/*CASES*/", &blobs);
    fsio::write_atomic(path, html.as_bytes())
}

/// One case's bytes, deflated: CT u16 (scaled to [lo, hi]), experts and samples as packed
/// bits, mean probability as u8.
fn case_blob(input: &ReviewInput<'_>, i: usize, lo: f32, hi: f32, to_units: &dyn Fn(f32) -> f32) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    for &v in input.images.index_axis(Axis(0), i).iter() {
        let q = ((to_units(v) - lo) / (hi - lo) * 65535.0).round().clamp(0.0, 65535.0) as u16;
        raw.extend_from_slice(&q.to_le_bytes());
    }
    for masks in [input.experts.index_axis(Axis(0), i), input.samples.index_axis(Axis(0), i)] {
        for m in masks.outer_iter() {
            raw.extend(pack_bits(m.iter().map(|&v| v > 0)));
        }
    }
    raw.extend(input.mean.index_axis(Axis(0), i).iter().map(|&p| (p.clamp(0.0, 1.0) * 255.0).round() as u8));
    let mut z = ZlibEncoder::new(Vec::new(), Compression::fast());
    z.write_all(&raw)?;
    Ok(z.finish()?)
}

fn pack_bits(bits: impl Iterator<Item = bool>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, b) in bits.enumerate() {
        if k % 8 == 0 {
            out.push(0);
        }
        if b {
            *out.last_mut().expect("pushed above") |= 0x80 >> (k % 8);
        }
    }
    out
}

/// The table row of case `i`.
fn case_meta(input: &ReviewInput<'_>, i: usize) -> Value {
    let mean: Vec<f32> = input.mean.index_axis(Axis(0), i).iter().copied().collect();
    let entropy: f32 = metrics::entropy(&mean).iter().sum();
    let experts = input.experts.index_axis(Axis(0), i);
    let a = experts.dim().0;
    let lesion_px = if a > 0 { experts.iter().filter(|&&v| v > 0).count() as f64 / a as f64 } else { f64::NAN };
    let mut row = json!({ "index": i, "entropy": entropy, "lesion_px": finite(lesion_px) });
    if let Some(p) = input.report.and_then(|r| r.per_image.get(i)) {
        row["ged"] = finite(p.ged);
        row["hm_iou"] = finite(p.hm_iou);
        row["sample_diversity"] = finite(p.sample_diversity);
        row["annotator_diversity"] = finite(p.annotator_diversity);
        row["dice_majority"] = finite(p.dice_majority);
        row["experts_agree"] = json!(p.annotator_diversity <= AGREE);
        row["prediction_empty"] = json!(p.prediction_empty);
    }
    row
}

/// Experts "agree" when their masks differ by at most this mean pairwise 1 - IoU.
const AGREE: f64 = 0.2;

fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

fn manifest(input: &ReviewInput<'_>, cases: Vec<Value>, range: (f32, f32)) -> Value {
    let (n, h, w) = input.images.dim();
    let mut entropies: Vec<f64> = cases.iter().filter_map(|c| c["entropy"].as_f64()).collect();
    entropies.sort_by(f64::total_cmp);
    // "Model unsure": the quarter of cases with the most entropy.
    let unsure = entropies.get(entropies.len() * 3 / 4).copied().unwrap_or(0.0);
    let full = json!({"name": "full range", "width": range.1 - range.0, "level": (range.0 + range.1) / 2.0});
    // Every named window (lung, mediastinum, the head-CT ones, bone, soft tissue), after the
    // data's or the file's own.
    let named =
        || crate::data::intensity::PRESETS.iter().map(|(_, name, width, level)| json!({"name": name, "width": width, "level": level}));
    let hu = |first: Option<Value>| -> Vec<Value> { first.into_iter().chain(named()).chain([full.clone()]).collect() };
    let (presets, units) = match input.units {
        Units::Mapped { width, level } => (hu(Some(json!({"name": "data's window", "width": width, "level": level}))), "HU"),
        Units::Hounsfield { file_window: Some((width, level)) } => {
            (hu(Some(json!({"name": "file's window", "width": width, "level": level}))), "HU")
        }
        Units::Hounsfield { file_window: None } => (hu(None), "HU"),
        Units::Intensity => (vec![full], "intensity (0-1, as the model saw it)"),
    };
    let default = presets[0].clone();
    let summary = match input.report {
        Some(r) => {
            let s = |k: &str| r.stat(k).map_or("n/a".into(), |s| format!("{:.3}", s.mean));
            format!(
                "{n} cases, {} samples each, {} experts. GED {}, HM-IoU {}, Dice (majority) {}",
                input.samples.dim().1,
                input.experts.dim().1,
                s("ged"),
                s("hm_iou"),
                s("dice_majority")
            )
        }
        None => format!("{n} cases, {} samples each", input.samples.dim().1),
    };
    let run_file = |name: &str| input.run.as_ref().and_then(|r| std::fs::read_to_string(r.join(name)).ok());
    json!({
        "title": input.title, "summary": summary, "width": w, "height": h,
        "annotators": input.experts.dim().1, "samples_per_image": input.samples.dim().1,
        "value_range": [range.0, range.1], "value_units": units, "window_presets": presets, "default_window": default,
        "volume": input.volume,
        "unsure_entropy": unsure, "cases": cases, "definitions": definitions(),
        "config": run_file("config.toml"), "curves": run_file("metrics.csv").map(|c| curves(&c)),
    })
}

fn definitions() -> Value {
    json!({
        "ged": "generalized energy distance between samples and experts (d = 1 - IoU); lower is better",
        "hm_iou": "Hungarian-matched IoU of samples and experts; higher is better",
        "dice_majority": "Dice of the mean mask (sample frequency >= 0.5) against the experts' majority vote",
        "sample_diversity": "mean pairwise 1 - IoU among the samples",
        "annotator_diversity": "mean pairwise 1 - IoU among the experts",
        "entropy": "summed per-pixel entropy (bits) of the mean probability: how unsure the model is",
        "lesion_px": "mean area of the experts' masks, in pixels",
        "experts_agree": "the experts' masks differ by at most 0.2 mean pairwise 1 - IoU",
        "prediction_empty": "the mean mask marks nothing",
    })
}

/// metrics.csv as columns: epoch and each loss series.
fn curves(csv: &str) -> Value {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let keep = ["loss", "val_loss", "val_ged"];
    let mut cols: Vec<Vec<Value>> = vec![Vec::new(); header.len()];
    for line in lines {
        for (j, v) in line.split(',').enumerate().take(header.len()) {
            cols[j].push(v.trim().parse::<f64>().ok().filter(|x| x.is_finite()).map_or(Value::Null, |x| json!(x)));
        }
    }
    let mut out = serde_json::Map::new();
    for (j, name) in header.iter().enumerate() {
        if *name == "epoch" || keep.contains(name) {
            out.insert((*name).to_string(), Value::Array(cols[j].clone()));
        }
    }
    Value::Object(out)
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let v = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                s.push(T[(v >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn bits_pack_most_significant_first() {
        assert_eq!(pack_bits([true, false, false, false, false, false, false, true, true].into_iter()), vec![0x81, 0x80]);
    }
}
