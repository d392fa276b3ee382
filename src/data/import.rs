//! A dataset from a folder laid out like nnU-Net's raw data (`images/CASE.{dcm,nii.gz,png}` or
//! `images/CASE/` a DICOM series, `labels/CASE_A{k}.{png,nii.gz}` for annotator k): fixed-size
//! crops around labelled regions plus a share of background crops, grouped by case, with a
//! manifest of every source file and the crop it produced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use ndarray::Array4;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::Dataset;
use super::intensity::Window;
use super::resample;
use super::scan::{self, Preprocess, Scan, Slice, Units};
use crate::fsio;

/// How `import` cuts a folder into crops.
#[derive(Debug, Clone)]
pub struct ImportSettings {
    /// The folder with images/ and labels/.
    pub input: PathBuf,
    /// The npz to write; the manifest goes beside it.
    pub out: PathBuf,
    pub crop: usize,
    /// Background crops as a share of all crops, in [0, 1).
    pub background_share: f64,
    /// The windows for CT in HU, stacked as channels in this order (one: one channel).
    pub windows: Vec<Window>,
    /// Neighbouring slices on each side stacked as channels (2.5D).
    pub context_slices: usize,
    pub clahe: bool,
    /// What NIfTI images hold, where the user says so.
    pub units: Option<Units>,
    /// Resample every scan (and its masks) to this in-plane pixel spacing in mm first.
    pub spacing: Option<f64>,
    pub seed: u64,
}

#[derive(Debug, Serialize)]
struct CropRecord {
    index: usize,
    case: String,
    image: String,
    labels: Vec<String>,
    slice: usize,
    y0: usize,
    x0: usize,
    kind: &'static str,
}

/// A case left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub case: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
struct Manifest {
    input: String,
    crop: usize,
    annotators: usize,
    preprocess: Preprocess,
    crops: Vec<CropRecord>,
    skipped: Vec<Skipped>,
}

/// What `import_folder` wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    pub crops: usize,
    pub annotators: usize,
    pub skipped: Vec<Skipped>,
    pub manifest: PathBuf,
}

/// `CASE_A{k}.ext` -> (CASE, k).
fn label_key(p: &Path) -> Option<(String, usize)> {
    let stem = scan::stem(p);
    let at = stem.rfind("_A")?;
    let k = stem[at + 2..].parse().ok()?;
    Some((stem[..at].to_string(), k))
}

/// Centres of the 4-connected components of `mask`.
fn component_centres(mask: &[u8], h: usize, w: usize) -> Vec<(usize, usize)> {
    let mut seen = vec![false; h * w];
    let mut centres = Vec::new();
    for start in 0..h * w {
        if mask[start] == 0 || seen[start] {
            continue;
        }
        let (mut stack, mut sy, mut sx, mut n) = (vec![start], 0usize, 0usize, 0usize);
        seen[start] = true;
        while let Some(p) = stack.pop() {
            let (y, x) = (p / w, p % w);
            (sy, sx, n) = (sy + y, sx + x, n + 1);
            let neighbours = [(y > 0).then(|| p - w), (y + 1 < h).then(|| p + w), (x > 0).then(|| p - 1), (x + 1 < w).then(|| p + 1)];
            for q in neighbours.into_iter().flatten() {
                if mask[q] != 0 && !seen[q] {
                    seen[q] = true;
                    stack.push(q);
                }
            }
        }
        centres.push((sy / n, sx / n));
    }
    centres
}

/// A crop x crop window at (y0, x0), zero-padded where it leaves the image.
fn cut<T: Copy + Default>(src: &[T], h: usize, w: usize, y0: isize, x0: isize, c: usize) -> Vec<T> {
    (0..c * c)
        .map(|p| {
            let (y, x) = (y0 + (p / c) as isize, x0 + (p % c) as isize);
            if y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w { src[y as usize * w + x as usize] } else { T::default() }
        })
        .collect()
}

/// An annotator's label: a label map (PNG, NIfTI), a DICOM SEG or an RTSTRUCT (all of a file
/// per annotator, or one segment / ROI of a file per case).
#[derive(Debug, Clone)]
enum Label {
    Map(PathBuf),
    Seg(PathBuf, Option<u16>),
    Rt(PathBuf, Option<u64>),
    /// A per-case SEG or RTSTRUCT that could not be read: its case is skipped with the reason.
    Unreadable(PathBuf, String),
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Map(p) | Label::Seg(p, None) | Label::Rt(p, None) | Label::Unreadable(p, _) => write!(f, "{}", p.display()),
            Label::Seg(p, Some(s)) => write!(f, "{} (segment {s})", p.display()),
            Label::Rt(p, Some(r)) => write!(f, "{} (ROI {r})", p.display()),
        }
    }
}

/// The folder's images and, per case, its annotators' labels.
type Layout = (Vec<PathBuf>, BTreeMap<String, BTreeMap<usize, Label>>);

/// A DICOM SEG or RTSTRUCT in labels/ (told apart by SOP Class): `CASE_A{k}[.seg|.rtstruct].dcm`
/// is annotator k's; `CASE[.seg|.rtstruct].dcm` holds a segment or ROI per annotator, in its
/// order. Any other DICOM file is a label map image. Returns false for those.
fn dicom_labels(p: &Path, labels: &mut BTreeMap<String, BTreeMap<usize, Label>>) -> Result<bool> {
    let class = super::dicom::sop_class(p);
    let seg = class.as_deref() == Some(dicom_dictionary_std::uids::SEGMENTATION_STORAGE);
    let rt = class.as_deref() == Some(dicom_dictionary_std::uids::RT_STRUCTURE_SET_STORAGE);
    if !seg && !rt {
        return Ok(false);
    }
    let stem = scan::stem(p);
    let lower = stem.to_lowercase();
    let base = [".seg", ".rtstruct"].iter().find(|s| lower.ends_with(*s)).map_or(stem.as_str(), |s| &stem[..stem.len() - s.len()]);
    if let Some((case, k)) = label_key(Path::new(base)) {
        let label = if seg { Label::Seg(p.to_path_buf(), None) } else { Label::Rt(p.to_path_buf(), None) };
        labels.entry(case).or_default().insert(k, label);
        return Ok(true);
    }
    let experts = labels.entry(base.to_string()).or_default();
    let numbers: Result<Vec<u64>> = if seg {
        super::seg_read::read_seg(p).map(|s| s.segments.iter().map(|&(n, _)| u64::from(n)).collect())
    } else {
        super::rtstruct::read_rtstruct(p).map(|r| r.rois.iter().map(|&(n, _)| n).collect())
    };
    match numbers {
        Ok(numbers) => {
            for (k, n) in numbers.into_iter().enumerate() {
                let label = if seg { Label::Seg(p.to_path_buf(), Some(n as u16)) } else { Label::Rt(p.to_path_buf(), Some(n)) };
                experts.insert(k + 1, label);
            }
        }
        Err(e) => {
            experts.insert(1, Label::Unreadable(p.to_path_buf(), format!("{e:#}")));
        }
    }
    Ok(true)
}

fn layout(input: &Path) -> Result<Layout> {
    let (img_dir, lab_dir) = (input.join("images"), input.join("labels"));
    if !img_dir.is_dir() || !lab_dir.is_dir() {
        bail!("{} must contain images/ and labels/ folders (nnU-Net layout)", input.display());
    }
    let mut labels: BTreeMap<String, BTreeMap<usize, Label>> = BTreeMap::new();
    for e in std::fs::read_dir(&lab_dir)? {
        let p = e?.path();
        let dicom = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("dcm"));
        if dicom && dicom_labels(&p, &mut labels)? {
            continue;
        }
        if let Some((case, k)) = label_key(&p).filter(|_| scan::is_supported(&p)) {
            labels.entry(case).or_default().insert(k, Label::Map(p));
        }
    }
    let mut images: Vec<PathBuf> =
        std::fs::read_dir(&img_dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| scan::is_supported(p) || p.is_dir()).collect();
    images.sort();
    if images.is_empty() {
        bail!("{} holds no images", img_dir.display());
    }
    if labels.is_empty() {
        bail!("{} holds no labels named CASE_A<k>.(png|nii.gz|dcm) or a DICOM SEG / RTSTRUCT named CASE.dcm", lab_dir.display());
    }
    Ok((images, labels))
}

/// A case's scan and its annotators' label maps, each the scan's size; or why not.
fn load_case(img_path: &Path, files: &BTreeMap<usize, Label>, units: Option<Units>) -> std::result::Result<(Scan, Vec<Scan>), String> {
    let scan = scan::read_scan_as(img_path, units).map_err(|e| format!("{e:#}"))?;
    let mut label_scans = Vec::new();
    for label in files.values() {
        let l = match label {
            Label::Map(p) => scan::read_labels(p),
            Label::Seg(p, segment) => super::seg_read::read_seg(p).and_then(|seg| seg.label_scan(*segment, &scan, p)),
            Label::Rt(p, roi) => super::rtstruct::read_rtstruct(p).and_then(|rt| rt.label_scan(*roi, &scan, p)),
            Label::Unreadable(_, why) => return Err(why.clone()),
        };
        let l = l.map_err(|e| format!("{e:#}"))?;
        let same = l.slices.len() == scan.slices.len()
            && l.slices.iter().zip(&scan.slices).all(|(a, b)| a.height == b.height && a.width == b.width);
        if !same {
            let (s, t) = (&l.slices[0], &scan.slices[0]);
            return Err(format!(
                "label {label} is {}x{}x{} but the image is {}x{}x{}",
                l.slices.len(),
                s.height,
                s.width,
                scan.slices.len(),
                t.height,
                t.width
            ));
        }
        label_scans.push(l);
    }
    Ok((scan, label_scans))
}

/// The crops made so far: images, masks (annotator-major per crop), series and records.
#[derive(Default)]
struct Crops {
    images: Vec<f32>,
    masks: Vec<u8>,
    series: Vec<String>,
    records: Vec<CropRecord>,
}

/// One slice's crops: one per labelled region (the union of annotators), then background
/// crops in `share` of all, at random places with no label.
fn crop_slice(
    out: &mut Crops,
    x: &[f32],
    masks: &[Vec<u8>],
    (h, w): (usize, usize),
    at: (&str, &Path, &[String], usize),
    s: &ImportSettings,
    rng: &mut StdRng,
) {
    let (case, image, labels, z) = at;
    let c = s.crop;
    let union: Vec<u8> = (0..h * w).map(|p| masks.iter().any(|m| m[p] != 0) as u8).collect();
    let mut take = |y0: isize, x0: isize, kind: &'static str| {
        for plane in x.chunks(h * w) {
            out.images.extend(cut(plane, h, w, y0, x0, c));
        }
        for m in masks {
            out.masks.extend(cut(m, h, w, y0, x0, c));
        }
        out.series.push(case.to_string());
        let index = out.records.len();
        let (image, labels) = (image.display().to_string(), labels.to_vec());
        out.records.push(CropRecord {
            index,
            case: case.to_string(),
            image,
            labels,
            slice: z,
            y0: y0.max(0) as usize,
            x0: x0.max(0) as usize,
            kind,
        });
    };
    let centres = component_centres(&union, h, w);
    let clamp = |v: usize, len: usize| (v as isize - c as isize / 2).clamp(0, (len as isize - c as isize).max(0));
    for &(cy, cx) in &centres {
        take(clamp(cy, h), clamp(cx, w), "lesion");
    }
    let want = ((centres.len() as f64) * s.background_share / (1.0 - s.background_share)).round() as usize;
    let mut got = 0;
    for _ in 0..want * 20 {
        if got == want || h < c || w < c {
            break;
        }
        let (y0, x0) = (rng.gen_range(0..=h - c), rng.gen_range(0..=w - c));
        if (0..c * c).all(|p| union[(y0 + p / c) * w + x0 + p % c] == 0) {
            take(y0 as isize, x0 as isize, "background");
            got += 1;
        }
    }
}

/// `apunet import`: the dataset npz and its manifest. Cases with missing, mis-sized or
/// unreadable labels are skipped (reported, never resized); scans of other units than the
/// first case's are an error, since one dataset records one preprocessing.
pub fn import_folder(s: &ImportSettings) -> Result<Imported> {
    if s.crop < 8 {
        bail!("--crop must be at least 8");
    }
    if let Some(layout) = super::lidc::detect(&s.input) {
        return import_lidc(s, &layout);
    }
    if !(0.0..1.0).contains(&s.background_share) {
        bail!("--background-share must be in [0, 1)");
    }
    let (images, labels) = layout(&s.input)?;
    let annotators = labels.values().map(|m| m.len()).max().unwrap_or(0);
    // The record follows the scans' units: a window only touches HU.
    let mut units: Option<(Units, String)> = None;
    if let Some(mm) = s.spacing
        && !(mm.is_finite() && mm > 0.0)
    {
        bail!("--spacing must be a positive number of mm, got {mm}");
    }
    if s.windows.is_empty() {
        bail!("--windows needs at least one window");
    }
    // Intensities take no window but keep a channel per window named, so every case has the same channels.
    let pre_for = |u: Units| Preprocess {
        window: (u == Units::Hu).then_some(s.windows[0]),
        extra_windows: s.windows[1..].to_vec(),
        context_slices: s.context_slices,
        clahe: s.clahe,
        spacing: s.spacing,
        ..Default::default()
    };
    let mut rng = StdRng::seed_from_u64(s.seed);
    let (mut crops, mut skipped) = (Crops::default(), Vec::new());
    for img_path in &images {
        let case = scan::stem(img_path);
        let mut skip = |reason: String| {
            eprintln!("skipping case {case}: {reason}");
            skipped.push(Skipped { case: case.clone(), reason });
        };
        let Some(files) = labels.get(&case) else {
            skip("no labels".into());
            continue;
        };
        if let Some(Label::Unreadable(_, why)) = files.values().find(|l| matches!(l, Label::Unreadable(..))) {
            skip(why.clone());
            continue;
        }
        if files.len() != annotators {
            skip(format!("{} annotators' labels, the others have {annotators}", files.len()));
            continue;
        }
        let (scan, label_scans) = match load_case(img_path, files, s.units) {
            Ok(v) => v,
            Err(reason) => {
                skip(reason);
                continue;
            }
        };
        let u = scan.slices[0].units;
        match &units {
            Some((first, name)) if *first != u => bail!(
                "{} holds {u} but {name} holds {first}: one dataset takes one kind of input (give --units to read NIfTI files alike)",
                img_path.display()
            ),
            Some(_) => {}
            None => units = Some((u, img_path.display().to_string())),
        }
        if u == Units::Unit && s.windows.len() > 1 {
            bail!("{} holds {u}: --windows stacks HU windows, which only CT in Hounsfield units has", img_path.display());
        }
        let pre = pre_for(u);
        let label_names: Vec<String> = files.values().map(Label::to_string).collect();
        let from = match (s.spacing, scan.spacing()) {
            (Some(_), None) => bail!(
                "--spacing: {} states no pixel spacing (PNG and TIFF have none); import DICOM or NIfTI, or leave out --spacing",
                img_path.display()
            ),
            (_, from) => from,
        };
        if s.context_slices > 0 && scan.slices.len() == 1 {
            skip(format!("one slice, but --context-slices {} stacks neighbouring slices", s.context_slices));
            continue;
        }
        let grid = s.spacing.zip(from);
        let slices: Vec<Slice> =
            scan.slices.iter().map(|sl| grid.map_or_else(|| sl.clone(), |(mm, from)| sl.resampled(from, mm))).collect();
        for (z, (sl, orig)) in slices.iter().zip(&scan.slices).enumerate() {
            let masks: Vec<Vec<u8>> = label_scans
                .iter()
                .map(|l| {
                    let m: Vec<u8> = l.slices[z].values.iter().map(|&v| (v > 0.0) as u8).collect();
                    if grid.is_some() { resample::mask_area(&m, orig.size(), sl.size()) } else { m }
                })
                .collect();
            let x = scan::network_input(&slices, z, &pre)?;
            crop_slice(&mut crops, &x, &masks, sl.size(), (&case, img_path, &label_names, z), s, &mut rng);
        }
    }
    if crops.records.is_empty() {
        bail!("no crops made from {}: every case was skipped or unlabelled", s.input.display());
    }
    let (n, c) = (crops.records.len(), s.crop);
    let pre = pre_for(units.map_or(Units::Unit, |(u, _)| u));
    let images = Array4::from_shape_vec((n, pre.channels(), c, c), crops.images)?;
    let masks = Array4::from_shape_vec((n, annotators, c, c), crops.masks)?;
    let mut ds = Dataset::new(images, masks, Some(crops.series), &s.input.display().to_string())?;
    ds.preprocess = Some(pre.clone());
    ds.save(&s.out)?;
    let manifest = Manifest {
        input: s.input.display().to_string(),
        crop: c,
        annotators,
        preprocess: pre,
        crops: crops.records,
        skipped: skipped.clone(),
    };
    let mpath = s.out.with_extension("manifest.json");
    fsio::write_atomic(&mpath, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    Ok(Imported { crops: n, annotators, skipped, manifest: mpath })
}

/// LIDC crops as the PyTorch port's pickle or DeepMind's PNG folders hold them, written as an
/// npz; crops larger than `--crop` keep their centre (DeepMind's 180 px become 128, as in the
/// paper). Their intensities are the release's own: the record stays unknown.
fn import_lidc(s: &ImportSettings, layout: &super::lidc::Layout) -> Result<Imported> {
    let mut ds = super::lidc::load(&s.input, layout)?;
    if ds.height() > s.crop || ds.width() > s.crop {
        ds = ds.center_crop(s.crop)?;
    } else if ds.height() < s.crop || ds.width() < s.crop {
        bail!("{}: the crops are {}x{}, smaller than --crop {}", s.input.display(), ds.height(), ds.width(), s.crop);
    }
    ds.save(&s.out)?;
    let manifest = serde_json::json!({
        "input": s.input.display().to_string(),
        "layout": match layout { super::lidc::Layout::Pickle(_) => "lidc-pickle", super::lidc::Layout::DeepMind => "deepmind-png" },
        "crop": s.crop,
        "annotators": ds.annotators(),
        "crops": ds.len(),
    });
    let mpath = s.out.with_extension("manifest.json");
    fsio::write_atomic(&mpath, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    Ok(Imported { crops: ds.len(), annotators: ds.annotators(), skipped: Vec::new(), manifest: mpath })
}
