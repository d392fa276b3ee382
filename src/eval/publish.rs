//! What `eval` and `predict` leave beside their outputs so the review page can be rebuilt
//! (inputs.npz, review.json), the page itself, and `apunet review`'s rebuild.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ndarray::{Array3, Array4, Ix3};
use serde::{Deserialize, Serialize};

use crate::data::intensity::Window;
use crate::data::npz::{self, NpyArray, NpzEntry};
use crate::data::preprocess::Preprocess;
use crate::eval::report::{self, Report, read_masks};
use crate::eval::review::{self, ReviewInput, Units};
use crate::fsio;

/// What `eval` and `predict` record beside their outputs so that the page can be rebuilt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewRecord {
    /// "eval" or "predict".
    pub kind: String,
    pub run: PathBuf,
    /// The dataset or scan.
    pub data: PathBuf,
    pub seed: u64,
    pub units: Units,
    pub volume: bool,
}

/// How a dataset's [0,1] values relate to HU: through one fixed linear window, or unknown
/// (per-file or percentile windows, CLAHE, or data that was never in HU).
pub fn dataset_units(p: Option<&Preprocess>) -> Units {
    match p {
        Some(Preprocess { window: Some(w), clahe: false, .. }) if !matches!(w, Window::File | Window::Percentile) => {
            match w.resolve(None) {
                Some((width, level)) => Units::Mapped { width, level },
                None => Units::Intensity,
            }
        }
        _ => Units::Intensity,
    }
}

/// Everything a page is drawn from, as the folder holds it.
pub struct Arrays {
    pub images: Array3<f32>,
    /// [N, A, H, W]; A = 0 for predict.
    pub masks: Array4<u8>,
    pub samples: Array4<u8>,
    pub mean: Array3<f32>,
}

/// Writes inputs.npz and review.json into `dir` (samples.npz is the command's own output):
/// what [`review_cmd`] reads.
fn record_inputs(dir: &Path, a: &Arrays, record: &ReviewRecord) -> Result<()> {
    let (i, m) = (a.images.clone().into_dyn(), a.masks.clone().into_dyn());
    let mut entries = vec![("images", NpzEntry::F32(&i))];
    if a.masks.dim().1 > 0 {
        entries.push(("masks", NpzEntry::U8(&m)));
    }
    npz::write_npz(&dir.join("inputs.npz"), &entries)?;
    fsio::write_atomic(&dir.join("review.json"), serde_json::to_string_pretty(record)?.as_bytes())
}

/// What `eval` and `predict` leave for the review: the inputs, the record, and (unless
/// `page` is false) review.html, opened when `open`.
pub fn publish(dir: &Path, a: &Arrays, record: &ReviewRecord, report: Option<&Report>, page: bool, open: bool) -> Result<()> {
    record_inputs(dir, a, record)?;
    if page {
        let out = dir.join("review.html");
        write_review(&out, record, a, report)?;
        if open {
            open_in_browser(&out);
        }
    }
    Ok(())
}

/// Writes the page.
pub fn write_review(out: &Path, record: &ReviewRecord, a: &Arrays, report: Option<&Report>) -> Result<()> {
    let input = ReviewInput {
        title: format!("apunet {}: {} with {}", record.kind, record.data.display(), record.run.display()),
        images: a.images.view(),
        experts: a.masks.view(),
        samples: a.samples.view(),
        mean: a.mean.view(),
        report,
        units: record.units,
        volume: record.volume,
        run: Some(record.run.clone()),
    };
    review::write_page(&input, out).with_context(|| format!("writing the review page {}", out.display()))
}

/// What `rebuild` wrote.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    pub page: PathBuf,
    pub cases: usize,
    pub volume: bool,
}

/// `apunet review DIR`: the page again from what `eval` or `predict` left in `dir`, into `out`
/// (default DIR/review.html).
pub fn rebuild(dir: &Path, out: Option<&Path>) -> Result<Rebuilt> {
    let need = |name: &str| {
        let p = dir.join(name);
        if !p.exists() {
            bail!(
                "{} has no {name}: review reads a folder written by `apunet eval` or `apunet predict` (rerun it to add the file)",
                dir.display()
            );
        }
        Ok(p)
    };
    let record: ReviewRecord = serde_json::from_str(&std::fs::read_to_string(need("review.json")?)?)
        .with_context(|| format!("parsing {}", dir.join("review.json").display()))?;
    let arrays = read_arrays(&need("inputs.npz")?, &need("samples.npz")?)?;
    let rep = if arrays.masks.dim().1 > 0 {
        report::check_inputs(&arrays.samples.view(), &arrays.masks.view(), "samples.npz", "inputs.npz")?;
        Some(report::evaluate(arrays.samples.view(), arrays.masks.view(), record.seed)?)
    } else {
        None
    };
    let page = out.map(Path::to_path_buf).unwrap_or_else(|| dir.join("review.html"));
    write_review(&page, &record, &arrays, rep.as_ref())?;
    Ok(Rebuilt { page, cases: arrays.images.dim().0, volume: record.volume })
}

fn read_arrays(inputs: &Path, samples_file: &Path) -> Result<Arrays> {
    let mut inp = npz::read_npz(inputs)?;
    let images = match inp.remove("images") {
        Some(NpyArray::F32(a)) => a.into_dimensionality::<Ix3>().ok(),
        _ => None,
    };
    let Some(images) = images else { bail!("{}: no float32 'images' array [N,H,W]", inputs.display()) };
    let (n, h, w) = images.dim();
    let masks = if inp.contains_key("masks") { read_masks(inputs, "masks", "[N,A,H,W]")? } else { Array4::zeros((n, 0, h, w)) };
    let samples = read_masks(samples_file, "samples", "[N,S,H,W]")?;
    let mean = match npz::read_npz(samples_file)?.remove("mean") {
        Some(NpyArray::F32(a)) => a.into_dimensionality::<Ix3>().ok(),
        _ => None,
    };
    let Some(mean) = mean else { bail!("{}: no float32 'mean' array [N,H,W]", samples_file.display()) };
    Ok(Arrays { images, masks, samples, mean })
}

/// Best effort: the page is written either way.
pub fn open_in_browser(page: &Path) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else if cfg!(windows) {
        "explorer"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(opener).arg(page).spawn() {
        eprintln!("could not start {opener} ({e}); open {} in a browser", page.display());
    }
}
