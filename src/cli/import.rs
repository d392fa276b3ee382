//! `apunet import`: an npz dataset from a folder laid out like nnU-Net's raw data
//! (`images/CASE.{dcm,nii.gz,png}`, `labels/CASE_A{k}.{png,nii.gz}` for annotator k): fixed-size
//! crops around labelled regions plus a share of background crops, grouped by case, with a
//! manifest of every source file and the crop it produced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use ndarray::{Array3, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::data::Dataset;
use crate::data::intensity::Window;
use crate::data::scan::{self, Preprocess, Units};
use crate::fsio;

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Folder with images/ and labels/.
    #[arg(long)]
    pub input: PathBuf,
    /// Dataset npz to write; the manifest goes beside it (.manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Crop side in pixels.
    #[arg(long, default_value_t = 128)]
    pub crop: usize,
    /// Background crops as a share of all crops, in [0, 1).
    #[arg(long, default_value_t = 0.2)]
    pub background_share: f64,
    /// lung, mediastinum, file, percentile or WIDTH,LEVEL (CT inputs).
    #[arg(long, default_value = "lung")]
    pub window: Window,
    /// Contrast-limited adaptive histogram equalisation after the window (dark, low-contrast scans).
    #[arg(long)]
    pub clahe: bool,
    /// What NIfTI images' values are: hu or unit [default: read from each file's header and values].
    #[arg(long, value_enum)]
    pub units: Option<Units>,
    /// Seed of the background crops' places.
    #[arg(long, default_value_t = 0)]
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

#[derive(Debug, Serialize)]
struct Skipped {
    case: String,
    reason: String,
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
            sy += y;
            sx += x;
            n += 1;
            let mut push = |q: usize| {
                if mask[q] != 0 && !seen[q] {
                    seen[q] = true;
                    stack.push(q);
                }
            };
            if y > 0 {
                push(p - w);
            }
            if y + 1 < h {
                push(p + w);
            }
            if x > 0 {
                push(p - 1);
            }
            if x + 1 < w {
                push(p + 1);
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

pub fn import_cmd(a: ImportArgs) -> Result<()> {
    if a.crop < 8 {
        bail!("--crop must be at least 8");
    }
    if !(0.0..1.0).contains(&a.background_share) {
        bail!("--background-share must be in [0, 1)");
    }
    let (img_dir, lab_dir) = (a.input.join("images"), a.input.join("labels"));
    if !img_dir.is_dir() || !lab_dir.is_dir() {
        bail!("{} must contain images/ and labels/ folders (nnU-Net layout)", a.input.display());
    }
    let mut labels: BTreeMap<String, BTreeMap<usize, PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(&lab_dir)? {
        let p = e?.path();
        if let Some((case, k)) = label_key(&p).filter(|_| scan::is_supported(&p)) {
            labels.entry(case).or_default().insert(k, p);
        }
    }
    let mut images: Vec<PathBuf> = std::fs::read_dir(&img_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| scan::is_supported(p) || p.is_dir())
        .collect();
    images.sort();
    if images.is_empty() {
        bail!("{} holds no images", img_dir.display());
    }
    let annotators = labels.values().map(|m| m.len()).max().unwrap_or(0);
    if annotators == 0 {
        bail!("{} holds no labels named CASE_A<k>.(png|nii.gz)", lab_dir.display());
    }
    // The record follows the scans' units: a window only touches HU.
    let mut units: Option<(Units, String)> = None;
    let pre_for = |u: Units| Preprocess { window: (u == Units::Hu).then_some(a.window), clahe: a.clahe, ..Default::default() };
    let mut rng = StdRng::seed_from_u64(a.seed);
    let c = a.crop;
    let (mut xs, mut ms, mut series, mut crops, mut skipped) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
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
        if files.len() != annotators {
            skip(format!("{} annotators' labels, the others have {annotators}", files.len()));
            continue;
        }
        // One unreadable case is listed with the other skipped ones, not the end of the import.
        let scan = match scan::read_scan_as(img_path, a.units) {
            Ok(s) => s,
            Err(e) => {
                skip(format!("{e:#}"));
                continue;
            }
        };
        let mut label_scans = Vec::new();
        let mut bad = None;
        for p in files.values() {
            let l = match scan::read_labels(p) {
                Ok(l) => l,
                Err(e) => {
                    bad = Some(format!("{e:#}"));
                    break;
                }
            };
            let same = l.slices.len() == scan.slices.len()
                && l.slices.iter().zip(&scan.slices).all(|(a, b)| a.height == b.height && a.width == b.width);
            if !same {
                bad = Some(format!(
                    "label {} is {}x{}x{} but the image is {}x{}x{}",
                    p.display(),
                    l.slices.len(),
                    l.slices[0].height,
                    l.slices[0].width,
                    scan.slices.len(),
                    scan.slices[0].height,
                    scan.slices[0].width
                ));
                break;
            }
            label_scans.push(l);
        }
        if let Some(reason) = bad {
            skip(reason);
            continue;
        }
        let u = scan.slices[0].units;
        match &units {
            Some((first, name)) if *first != u => bail!(
                "{} holds {u} but {name} holds {first}: one dataset takes one kind of input (give --units to read NIfTI files alike)",
                img_path.display()
            ),
            Some(_) => {}
            None => units = Some((u, img_path.display().to_string())),
        }
        let pre = pre_for(u);
        for (z, s) in scan.slices.iter().enumerate() {
            let (h, w) = (s.height, s.width);
            let x = s.normalized(&pre)?;
            let masks: Vec<Vec<u8>> =
                label_scans.iter().map(|l| l.slices[z].values.iter().map(|&v| (v > 0.0) as u8).collect()).collect();
            let union: Vec<u8> = (0..h * w).map(|p| masks.iter().any(|m| m[p] != 0) as u8).collect();
            let mut take = |y0: isize, x0: isize, kind: &'static str| {
                xs.extend(cut(&x, h, w, y0, x0, c));
                for m in &masks {
                    ms.extend(cut(m, h, w, y0, x0, c));
                }
                series.push(case.clone());
                crops.push(CropRecord {
                    index: crops.len(),
                    case: case.clone(),
                    image: img_path.display().to_string(),
                    labels: files.values().map(|p| p.display().to_string()).collect(),
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
            let want = ((centres.len() as f64) * a.background_share / (1.0 - a.background_share)).round() as usize;
            let mut got = 0;
            for _ in 0..want * 20 {
                if got == want || h < c || w < c {
                    break;
                }
                let (y0, x0) = (rng.gen_range(0..=h - c), rng.gen_range(0..=w - c));
                let empty = (0..c * c).all(|p| union[(y0 + p / c) * w + x0 + p % c] == 0);
                if empty {
                    take(y0 as isize, x0 as isize, "background");
                    got += 1;
                }
            }
        }
    }
    if crops.is_empty() {
        bail!("no crops made from {}: every case was skipped or unlabelled", a.input.display());
    }
    let n = crops.len();
    let images = Array3::from_shape_vec((n, c, c), xs)?;
    let masks = Array4::from_shape_vec((n, annotators, c, c), ms)?;
    let mut ds = Dataset::new(images, masks, Some(series), &a.input.display().to_string())?;
    let pre = pre_for(units.map_or(Units::Unit, |(u, _)| u));
    ds.preprocess = Some(pre.clone());
    ds.save(&a.out)?;
    let manifest = Manifest { input: a.input.display().to_string(), crop: c, annotators, preprocess: pre, crops, skipped };
    let mpath = a.out.with_extension("manifest.json");
    fsio::write_atomic(&mpath, serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    crate::say!(
        "wrote {} ({n} crops {c}x{c}, {annotators} annotators, {} cases skipped) and {}",
        a.out.display(),
        manifest.skipped.len(),
        mpath.display()
    );
    Ok(())
}
