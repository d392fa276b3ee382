//! `apunet predict`'s work: every scan of an input (a file, a DICOM series, a folder of scans)
//! through the run's preprocessing and the patch-wise sampler, written as PNG, NIfTI in the
//! input's geometry, and the review page's files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use image::{GrayImage, Luma, Rgb, RgbImage};
use ndarray::{Array3, Array4};

use crate::data::dicom_seg::{SegKind, SegRequest, write_seg};
use crate::data::intensity::Window;
use crate::data::npz::{self, NpzEntry};
use crate::data::preprocess::{self, Preprocess, Units};
use crate::data::scan::{self, Geometry, Scan, Slice};
use crate::eval::publish::{self, ReviewRecord};
use crate::eval::review::Units as ReviewUnits;
use crate::eval::{figures, metrics};
use crate::jobs::sample::RunSampling;
use crate::predict::{Prediction, predict_image, window_starts};

/// What `predict` is asked to do.
#[derive(Debug, Clone)]
pub struct PredictRequest {
    pub sampling: RunSampling,
    /// A scan, a DICOM series folder, or a folder of scans.
    pub input: PathBuf,
    /// One subfolder per scan goes here.
    pub out: PathBuf,
    /// Patch overlap in [0, 1).
    pub overlap: f64,
    /// The user's window, over the run's.
    pub window: Option<Window>,
    /// The user's statement of a NIfTI's units.
    pub units: Option<Units>,
    /// Write review.html.
    pub review: bool,
    /// Open each review.html when done.
    pub open: bool,
}

impl PredictRequest {
    /// `predict`'s defaults: overlap 0.5, the run's window, units read from each file, the
    /// review page written and not opened.
    pub fn new(sampling: RunSampling, input: PathBuf, out: PathBuf) -> Self {
        Self { sampling, input, out, overlap: 0.5, window: None, units: None, review: true, open: false }
    }
}

/// One scan's prediction, as `predict` reports it.
#[derive(Debug, Clone)]
pub struct ScanReport {
    pub name: String,
    pub dir: PathBuf,
    pub slices: usize,
    pub height: usize,
    pub width: usize,
    pub units: Units,
    /// What turned the scan into network input.
    pub applied: Preprocess,
    pub patches: usize,
    pub patch: (usize, usize),
    pub seconds: f64,
    /// The DICOM SEG objects written for a DICOM input, or why none could be.
    pub dicom_seg: std::result::Result<Vec<PathBuf>, String>,
}

/// A folder of DICOM files is one series; any other folder is a set of scans.
pub fn inputs(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.exists() {
        bail!("--input {} does not exist", path.display());
    }
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(path)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && scan::is_supported(p)).collect();
    files.sort();
    let dicom = |p: &PathBuf| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm"));
    if !files.is_empty() && files.iter().all(dicom) && files.len() > 1 {
        return Ok(vec![path.to_path_buf()]);
    }
    if files.is_empty() {
        bail!("{} holds no .dcm, .nii(.gz), .png or .tif files", path.display());
    }
    Ok(files)
}

/// Predicts every scan of `req.input`, calling `done` after each.
pub fn predict_files(req: &PredictRequest, mut done: impl FnMut(&ScanReport)) -> Result<Vec<ScanReport>> {
    let s = &req.sampling;
    let (device, cfg, model) = s.load()?;
    let sampling = s.sampling(&cfg)?;
    let (ph, pw) = (cfg.data.height, cfg.data.width);
    if ph == 0 || pw == 0 {
        bail!("{}: config.toml has no [data] crop size; retrain with this version of apunet", s.run.display());
    }
    let mut reports = Vec::new();
    for input in inputs(&req.input)? {
        let scan = scan::read_scan_as(&input, req.units)?;
        let pre = preprocess::for_scan(
            (&format!("run {}", s.run.display()), cfg.data.preprocess.as_ref()),
            (&input.display().to_string(), scan.slices[0].units),
            req.window,
            s.allow_mismatch,
        )?;
        check_channels(&scan, &pre, cfg.model.in_channels, (&input, &s.run), s.allow_mismatch)?;
        let grid = model_grid(&scan, &pre, (&input, &s.run), s.allow_mismatch)?;
        // What is reported as applied: no resampling where the scan kept its own grid.
        let pre = if grid.is_none() { Preprocess { spacing: None, ..pre } } else { pre };
        let name = scan::stem(&input);
        let dir = req.out.join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let total: usize = scan
            .slices
            .iter()
            .map(|sl| {
                let (h, w) = grid.map_or((sl.height, sl.width), |(from, mm)| sl.resampled(from, mm).size());
                window_starts(h.max(ph), ph, req.overlap).len() * window_starts(w.max(pw), pw, req.overlap).len()
            })
            .sum();
        let pb = crate::progress::bar(total as u64, false, &format!("{name} patches"));
        let started = Instant::now();
        // The scan on the model's grid, where the run's record resamples.
        let model_slices: Vec<Slice> =
            scan.slices.iter().map(|sl| grid.map_or_else(|| sl.clone(), |(from, mm)| sl.resampled(from, mm))).collect();
        let mut preds = Vec::with_capacity(scan.slices.len());
        let mut inputs01 = Vec::with_capacity(scan.slices.len());
        for (z, (slice, r)) in scan.slices.iter().zip(&model_slices).enumerate() {
            let x = scan::network_input(&model_slices, z, &pre)?;
            let mut tick = |k: usize| pb.inc(k as u64);
            let pred = predict_image(&model, &x, r.height, r.width, (ph, pw), &sampling, req.overlap, &device, &mut tick)?;
            // Back onto the scan's grid.
            preds.push(if grid.is_some() { pred.resampled(slice.height, slice.width) } else { pred });
            inputs01.push(scan::display_plane(slice, &pre)?);
        }
        pb.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let first = &scan.slices[0];
        let record = ReviewRecord {
            kind: "predict".into(),
            run: s.run.clone(),
            data: input.clone(),
            seed: s.seed,
            units: match first.units {
                Units::Hu => ReviewUnits::Hounsfield { file_window: first.file_window.map(|(c, w)| (w, c)) },
                Units::Unit => ReviewUnits::Intensity,
            },
            volume: scan.slices.len() > 1,
        };
        // The files are independent: written side by side, they took a second on one core.
        let (outputs, (dicom_seg, review)) = rayon::join(
            || write_outputs(&scan, &preds, &inputs01, &dir),
            || {
                rayon::join(
                    || write_dicom_seg(&scan, &preds, &dir),
                    || write_review_files(&scan, &preds, &dir, &record, req.review, req.open),
                )
            },
        );
        outputs?;
        review?;
        let dicom_seg = dicom_seg.map_err(|e| format!("{e:#}"));
        let report = ScanReport {
            name,
            dir,
            slices: scan.slices.len(),
            height: first.height,
            width: first.width,
            units: first.units,
            applied: pre,
            patches: total,
            patch: (ph, pw),
            seconds,
            dicom_seg,
        };
        done(&report);
        reports.push(report);
    }
    Ok(reports)
}

/// Refuses a record whose channels the model does not take, and a single slice where the run
/// stacks neighbouring slices (with `--allow-mismatch`: the slice stands in for its neighbours).
fn check_channels(scan: &Scan, pre: &Preprocess, model_channels: usize, (input, run): (&Path, &Path), allow: bool) -> Result<()> {
    if pre.channels() != model_channels {
        bail!(
            "{}'s model takes {model_channels} input channel(s), but the preprocessing predict would apply ({}) makes {}: the run \
             records no windows or neighbouring slices that made its channels, so they cannot be rebuilt from a scan. Sample \
             inputs made as its training data were with `apunet sample`",
            run.display(),
            preprocess::describe(Some(pre)),
            pre.channels()
        );
    }
    if pre.context_slices > 0 && scan.slices.len() == 1 {
        let text = format!(
            "{} is a single slice, but {} was trained with {} neighbouring slice(s) on each side as channels",
            input.display(),
            run.display(),
            pre.context_slices
        );
        if !allow {
            bail!(
                "{text}. Give the whole volume (a DICOM series folder or a NIfTI), or --allow-mismatch to let the slice stand in for its neighbours"
            );
        }
        tracing::warn!("{text}; the slice stands in for its neighbours as --allow-mismatch asks");
    }
    Ok(())
}

/// Where the run's record resamples scans (`import --spacing`): the scan's own spacing and the
/// run's. A scan that states none is refused, or with `--allow-mismatch` predicted on its grid.
fn model_grid(scan: &Scan, pre: &Preprocess, (input, run): (&Path, &Path), allow: bool) -> Result<Option<((f64, f64), f64)>> {
    let Some(mm) = pre.spacing else { return Ok(None) };
    match scan.spacing() {
        Some(from) => Ok(Some((from, mm))),
        None if allow => {
            tracing::warn!("{} states no pixel spacing; predicting on its own grid as --allow-mismatch asks", input.display());
            Ok(None)
        }
        None => bail!(
            "{} states no pixel spacing (PNG and TIFF have none), but {} was trained on scans resampled to {mm} mm pixels. \
             Give the scan as DICOM or NIfTI, or --allow-mismatch to predict on the file's own grid",
            input.display(),
            run.display()
        ),
    }
}

/// inputs.npz, samples.npz and review.json (what `apunet review` reads), and the page.
fn write_review_files(scan: &Scan, preds: &[Prediction], dir: &Path, record: &ReviewRecord, page: bool, open: bool) -> Result<()> {
    let (h, w, n) = (preds[0].height, preds[0].width, preds[0].probs.len());
    let d = preds.len();
    if preds.iter().zip(&scan.slices).any(|(p, sl)| p.height != h || p.width != w || sl.values.len() != h * w) {
        tracing::warn!("{}: slices of different sizes; no review page", dir.display());
        return Ok(());
    }
    let images = Array3::from_shape_fn((d, h, w), |(z, y, x)| scan.slices[z].values[y * w + x]);
    let samples = Array4::from_shape_fn((d, n, h, w), |(z, k, y, x)| (preds[z].probs[k][y * w + x] > 0.5) as u8);
    let mean = Array3::from_shape_fn((d, h, w), |(z, y, x)| preds[z].mean[y * w + x]);
    let (sd, md) = (samples.clone().into_dyn(), mean.clone().into_dyn());
    npz::write_npz(&dir.join("samples.npz"), &[("samples", NpzEntry::U8(&sd)), ("mean", NpzEntry::F32(&md))])?;
    let arrays = publish::Arrays { images, masks: Array4::zeros((d, 0, h, w)), samples, mean };
    publish::publish(dir, &arrays, record, None, page, open)
}

fn gray_png(values: &[f32], h: usize, w: usize, path: &Path) -> Result<()> {
    let img =
        GrayImage::from_fn(w as u32, h as u32, |x, y| Luma([(values[y as usize * w + x as usize].clamp(0.0, 1.0) * 255.0).round() as u8]));
    crate::fsio::write_atomic_with(path, |tmp| Ok(img.save_with_format(tmp, image::ImageFormat::Png)?))
}

const PALETTE: [[u8; 3]; 6] = [[250, 170, 60], [80, 220, 120], [90, 160, 255], [240, 90, 200], [250, 240, 90], [120, 240, 240]];

/// The windowed scan with every sample's contour in its own colour.
fn overlay(input: &[f32], pred: &Prediction) -> RgbImage {
    let (h, w) = (pred.height, pred.width);
    let gray = figures::display_stretch(input);
    let mut img = RgbImage::from_fn(w as u32, h as u32, |x, y| Rgb([gray[y as usize * w + x as usize]; 3]));
    for (k, p) in pred.probs.iter().enumerate() {
        let mask: Vec<u8> = p.iter().map(|&v| (v > 0.5) as u8).collect();
        let c = PALETTE[k % PALETTE.len()];
        for (q, edge) in figures::contour(&mask, h, w).into_iter().enumerate() {
            if edge {
                img.put_pixel((q % w) as u32, (q / w) as u32, Rgb(c));
            }
        }
    }
    img
}

/// For DICOM input, samples.seg.dcm (binary, one segment per sample) and mean.seg.dcm (the
/// mean probability, fractional) referencing the source slices; nothing for other inputs.
fn write_dicom_seg(scan: &Scan, preds: &[Prediction], dir: &Path) -> Result<Vec<PathBuf>> {
    let Geometry::Dicom(sources) = &scan.geometry else { return Ok(Vec::new()) };
    let (rows, columns, n) = (preds[0].height, preds[0].width, preds[0].probs.len());
    let binary = |m: &[f32]| m.iter().map(|&v| if v > 0.5 { 1.0 } else { 0.0 }).collect::<Vec<f32>>();
    let samples: Vec<Vec<Vec<f32>>> = (0..n).map(|k| preds.iter().map(|p| binary(&p.probs[k])).collect()).collect();
    let mean = vec![preds.iter().map(|p| p.mean.clone()).collect::<Vec<_>>()];
    let outputs = [
        ("samples.seg.dcm", SegKind::Binary, (1..=n).map(|k| format!("apunet sample {k}")).collect(), &samples, "apunet samples"),
        ("mean.seg.dcm", SegKind::Probability, vec!["apunet mean probability".to_string()], &mean, "apunet mean probability"),
    ];
    let mut written = Vec::new();
    for (name, kind, labels, frames, description) in outputs {
        let path = dir.join(name);
        let series_description = description.to_string();
        write_seg(&path, &SegRequest { kind, sources, labels, frames, rows, columns, series_description })?;
        written.push(path);
    }
    Ok(written)
}

fn write_outputs(scan: &Scan, preds: &[Prediction], inputs01: &[Vec<f32>], dir: &Path) -> Result<()> {
    let (h, w) = (preds[0].height, preds[0].width);
    let n = preds[0].probs.len();
    let depth = preds.len();
    // PNGs for the slice with the most predicted lesion (the only one for 2D inputs).
    let z = (0..depth).max_by(|&a, &b| preds[a].mean.iter().sum::<f32>().total_cmp(&preds[b].mean.iter().sum::<f32>())).unwrap_or(0);
    let p = &preds[z];
    for (k, m) in p.probs.iter().enumerate() {
        let mask: Vec<f32> = m.iter().map(|&v| if v > 0.5 { 1.0 } else { 0.0 }).collect();
        gray_png(&mask, h, w, &dir.join(format!("sample_{k:02}.png")))?;
    }
    gray_png(&p.mean, h, w, &dir.join("mean.png"))?;
    let entropy = metrics::entropy(&p.mean);
    let heat = RgbImage::from_fn(w as u32, h as u32, |x, y| figures::viridis(entropy[y as usize * w + x as usize]));
    figures::save_png(&heat, &dir.join("entropy.png"))?;
    figures::save_png(&overlay(&inputs01[z], p), &dir.join("overlay.png"))?;

    let samples: Vec<Vec<Vec<u8>>> =
        (0..n).map(|k| preds.iter().map(|p| p.probs[k].iter().map(|&v| (v > 0.5) as u8).collect()).collect()).collect();
    let header4 = scan::output_header(&scan.geometry, w, h, depth, n);
    scan::write_nifti(&dir.join("samples.nii.gz"), &header4, &samples, h, w)?;
    let header3 = scan::output_header(&scan.geometry, w, h, depth, 1);
    let mean: Vec<Vec<f32>> = preds.iter().map(|p| p.mean.clone()).collect();
    scan::write_nifti(&dir.join("mean.nii.gz"), &header3, &[mean], h, w)?;
    let ent: Vec<Vec<f32>> = preds.iter().map(|p| metrics::entropy(&p.mean)).collect();
    scan::write_nifti(&dir.join("entropy.nii.gz"), &header3, &[ent], h, w)?;
    Ok(())
}
