//! LIDC-IDRI crops in the layouts people already hold, read into a [`Dataset`]:
//! - the public PyTorch port's pickle (one file, or a folder of `*.pickle` merged as its loader
//!   does): `{key: {"image": float [H, W] in [0, 1], "masks": [4 x uint8 [H, W]], "series_uid": str}}`;
//! - DeepMind's PNG release: `images/<patient>/z-<z>_c<n>.png` with one mask per grader in
//!   `gt/<patient>/z-<z>_c<n>_l<k>.png` (graders numbered from 0 or from 1). The crops keep their
//!   size (180 px); `apunet import --center-crop 128` cuts them as the paper does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ndarray::{Array3, Array4};

use super::Dataset;
use super::pickle::{self, Value};
use super::scan;

/// Which layout `path` holds, if it is one of these.
pub fn detect(path: &Path) -> Option<Layout> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if path.is_file() && (ext == "pickle" || ext == "pkl") {
        return Some(Layout::Pickle(vec![path.to_path_buf()]));
    }
    if !path.is_dir() {
        return None;
    }
    if path.join("images").is_dir() && path.join("gt").is_dir() {
        return Some(Layout::DeepMind);
    }
    let mut pickles: Vec<PathBuf> = std::fs::read_dir(path)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("pickle") || e.eq_ignore_ascii_case("pkl"))
        })
        .collect();
    pickles.sort();
    (!pickles.is_empty()).then_some(Layout::Pickle(pickles))
}

/// A layout [`detect`] recognised.
#[derive(Debug, Clone, PartialEq)]
pub enum Layout {
    Pickle(Vec<PathBuf>),
    DeepMind,
}

/// Reads `path` in the given layout.
pub fn load(path: &Path, layout: &Layout) -> Result<Dataset> {
    match layout {
        Layout::Pickle(files) => load_pickles(path, files),
        Layout::DeepMind => load_deepmind(path),
    }
}

/// The port's pickles, merged as `dict.update` merges them (a later key replaces an earlier
/// one), in key order within each file.
fn load_pickles(root: &Path, files: &[PathBuf]) -> Result<Dataset> {
    let mut crops: Vec<(String, Value)> = Vec::new();
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        let value = pickle::parse(&bytes).with_context(|| format!("{}: not a pickle apunet can read", f.display()))?;
        let Value::Dict(d) = value else { bail!("{}: holds a {}, not the port's dict of crops", f.display(), value.type_name()) };
        for (k, v) in d.borrow().iter() {
            let key = match k {
                Value::Str(s) => s.to_string(),
                other => bail!("{}: a crop's key is a {}, not a string", f.display(), other.type_name()),
            };
            match crops.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = v.clone(),
                None => crops.push((key, v.clone())),
            }
        }
    }
    if crops.is_empty() {
        bail!("{}: no crops in the pickle", root.display());
    }
    let mut builder = Builder::default();
    for (key, crop) in &crops {
        let what = format!("{}: crop '{key}'", root.display());
        let image = crop.get("image").and_then(|v| v.array()).with_context(|| format!("{what} has no numpy 'image'"))?;
        let masks = crop.get("masks").and_then(|v| v.items()).with_context(|| format!("{what} has no list of 'masks'"))?;
        let masks: Vec<_> =
            masks.iter().map(|m| m.array().with_context(|| format!("{what}: a mask is not a numpy array"))).collect::<Result<_>>()?;
        let series = match crop.get("series_uid") {
            Some(Value::Str(s)) => s.to_string(),
            _ => key.clone(),
        };
        let [h, w] = image.shape[..] else { bail!("{what}: 'image' has shape {:?}, not [H, W]", image.shape) };
        for m in &masks {
            if m.shape != image.shape {
                bail!("{what}: a mask has shape {:?} but the image {:?}", m.shape, image.shape);
            }
        }
        let image: Vec<f32> = image.values.iter().map(|&v| v as f32).collect();
        let masks: Vec<Vec<u8>> = masks.iter().map(|m| m.values.iter().map(|&v| u8::from(v != 0.0)).collect()).collect();
        builder.push(&what, (h, w), image, masks, series)?;
    }
    builder.finish(root)
}

/// DeepMind's folders: every image with the masks of its graders.
fn load_deepmind(root: &Path) -> Result<Dataset> {
    let (images_dir, gt_dir) = (root.join("images"), root.join("gt"));
    let mut builder = Builder::default();
    let mut patients: Vec<PathBuf> = read_dir_sorted(&images_dir)?.into_iter().filter(|p| p.is_dir()).collect();
    patients.sort();
    if patients.is_empty() {
        bail!("{}: no patient folders", images_dir.display());
    }
    for patient in &patients {
        let name = patient.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Grader masks of this patient: "<crop>_l<k>.png" -> k.
        let mut graders: BTreeMap<String, BTreeMap<u32, PathBuf>> = BTreeMap::new();
        for g in read_dir_sorted(&gt_dir.join(&name)).unwrap_or_default() {
            let stem = g.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some((crop, k)) = stem.rsplit_once("_l").and_then(|(c, k)| Some((c.to_string(), k.parse::<u32>().ok()?))) {
                graders.entry(crop).or_default().insert(k, g);
            }
        }
        for img in read_dir_sorted(patient)?.into_iter().filter(|p| is_png(p)) {
            let crop = img.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let what = format!("{}", img.display());
            let Some(masks) = graders.get(&crop) else { bail!("{what}: no grader masks gt/{name}/{crop}_l<k>.png") };
            let (image, (h, w)) = read_gray(&img)?;
            let masks: Vec<Vec<u8>> = masks
                .values()
                .map(|p| {
                    let (m, size) = read_gray(p)?;
                    if size != (h, w) {
                        bail!("{}: {}x{} but the image is {h}x{w}", p.display(), size.0, size.1);
                    }
                    Ok(m.iter().map(|&v| u8::from(v > 0.0)).collect())
                })
                .collect::<Result<_>>()?;
            builder.push(&what, (h, w), image, masks, name.clone())?;
        }
    }
    builder.finish(root)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.flatten().map(|e| e.path()).collect();
    v.sort();
    Ok(v)
}

fn is_png(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

/// A grayscale PNG as intensities in [0, 1] (8- or 16-bit, through [`scan::read_gray`] and its
/// limit on decoded size) and its size.
fn read_gray(p: &Path) -> Result<(Vec<f32>, (usize, usize))> {
    let s = scan::read_gray(p)?;
    Ok((s.values, (s.height, s.width)))
}

/// Crops gathered one by one, checked to share a size and a grader count.
#[derive(Default)]
struct Builder {
    size: Option<(usize, usize, usize)>,
    images: Vec<f32>,
    masks: Vec<u8>,
    series: Vec<String>,
}

impl Builder {
    fn push(&mut self, what: &str, (h, w): (usize, usize), image: Vec<f32>, masks: Vec<Vec<u8>>, series: String) -> Result<()> {
        if masks.is_empty() {
            bail!("{what}: no masks");
        }
        let size = (h, w, masks.len());
        match self.size {
            Some(s) if s != size => bail!("{what}: {h}x{w} with {} masks, but earlier crops are {}x{} with {}", masks.len(), s.0, s.1, s.2),
            _ => self.size = Some(size),
        }
        self.images.extend(image);
        masks.into_iter().for_each(|m| self.masks.extend(m));
        self.series.push(series);
        Ok(())
    }

    fn finish(self, root: &Path) -> Result<Dataset> {
        let (h, w, a) = self.size.with_context(|| format!("{}: no crops", root.display()))?;
        let n = self.series.len();
        let images = Array3::from_shape_vec((n, h, w), self.images)?;
        let masks = Array4::from_shape_vec((n, a, h, w), self.masks)?;
        Dataset::gray(images, masks, Some(self.series), &root.display().to_string())
    }
}
