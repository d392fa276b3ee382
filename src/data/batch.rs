//! Turning dataset examples into tensors for one step.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Dataset;
use super::augment::spatial::Warp;
use super::augment::{Augmentation, Symmetry, color, paste};
use super::masks;

/// Which annotation a training step learns from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AnnotatorChoice {
    /// One annotator at random per image and step (the LIDC practice).
    Random,
    /// The pixel-wise majority of the annotators (ties count as lesion).
    Majority,
    /// Always annotator k.
    Fixed(usize),
}

impl FromStr for AnnotatorChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "random" => Ok(Self::Random),
            "majority" => Ok(Self::Majority),
            other => match other.parse::<usize>() {
                Ok(k) => Ok(Self::Fixed(k)),
                Err(_) => bail!("annotator choice must be 'random', 'majority' or an index, got '{s}'"),
            },
        }
    }
}

impl TryFrom<String> for AnnotatorChoice {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<AnnotatorChoice> for String {
    fn from(c: AnnotatorChoice) -> String {
        c.to_string()
    }
}

impl fmt::Display for AnnotatorChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Random => write!(f, "random"),
            Self::Majority => write!(f, "majority"),
            Self::Fixed(k) => write!(f, "{k}"),
        }
    }
}

/// Images [B,C,H,W] and the chosen masks [B,1,H,W] as 0/1 floats.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor<4>,
    pub masks: Tensor<4>,
}

/// Training on random square patches of a larger crop (nnU-Net's "patch size"): cheaper
/// steps, and `foreground` of them are placed over a lesion so that small findings are
/// not drowned out by background.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PatchSampling {
    pub size: usize,
    /// Probability that a patch is placed to contain an annotated pixel (any annotator).
    pub foreground: f64,
}

/// Builds a training batch of whole crops; `augment` draws one symmetry per example for image
/// and masks alike.
pub fn training_batch<R: Rng>(
    ds: &Dataset,
    idx: &[usize],
    choice: AnnotatorChoice,
    augment: bool,
    rng: &mut R,
    device: &Device,
) -> Result<Batch> {
    training_patches(ds, idx, choice, &Augmentation::symmetries(augment), None, rng, device)
}

/// As [`training_batch`], varied as `aug` asks and cut to `patch` when given.
pub fn training_patches<R: Rng>(
    ds: &Dataset,
    idx: &[usize],
    choice: AnnotatorChoice,
    aug: &Augmentation,
    patch: Option<PatchSampling>,
    rng: &mut R,
    device: &Device,
) -> Result<Batch> {
    let (c, h, w, a) = (ds.channels(), ds.height(), ds.width(), ds.annotators());
    if let AnnotatorChoice::Fixed(k) = choice
        && k >= a
    {
        bail!("annotator {k} requested but the data has {a} annotators");
    }
    let (ph, pw) = match patch {
        Some(p) if p.size > h || p.size > w => bail!("patch size {} is larger than the {h}x{w} crops", p.size),
        Some(p) if p.size == 0 => bail!("patch size must be at least 1"),
        Some(p) => (p.size, p.size),
        None => (h, w),
    };
    let hw = h * w;
    let php = ph * pw;
    let mut images = vec![0f32; idx.len() * c * php];
    let mut masks = vec![0f32; idx.len() * php];
    let mut mask_src = vec![0f32; hw];
    let (mut img_full, mut mask_full) = (vec![0f32; c * hw], vec![0f32; hw]);
    for (b, &i) in idx.iter().enumerate() {
        let (mut img, mut labels) = example(ds, i);
        if aug.copy_paste > 0.0 && !aug.donors.is_empty() && rng.gen_bool(aug.copy_paste.min(1.0)) {
            paste_lesion(ds, aug, i, &mut img, &mut labels, rng);
        }
        let labels: Vec<&[u8]> = labels.iter().map(Vec::as_slice).collect();
        let chosen = match choice {
            AnnotatorChoice::Majority => masks::majority(&labels),
            AnnotatorChoice::Fixed(k) => labels[k].to_vec(),
            AnnotatorChoice::Random => labels[rng.gen_range(0..a)].to_vec(),
        };
        for (d, v) in mask_src.iter_mut().zip(chosen) {
            *d = v as f32;
        }
        let sym = if aug.symmetry { Symmetry::random(rng, h == w) } else { Symmetry::default() };
        // Every plane (window, neighbouring slice) moves with the mask.
        for (src, dst) in img.chunks(hw).zip(img_full.chunks_mut(hw)) {
            sym.apply(src, h, w, dst);
        }
        sym.apply(&mask_src, h, w, &mut mask_full);
        let origin = match patch {
            Some(p) => patch_origin(p.foreground, &labels, sym, (h, w), (ph, pw), rng),
            None => (0, 0),
        };
        let (out_img, out_mask) = (&mut images[b * c * php..(b + 1) * c * php], &mut masks[b * php..(b + 1) * php]);
        let center = (origin.0 as f32 + (ph as f32 - 1.0) / 2.0, origin.1 as f32 + (pw as f32 - 1.0) / 2.0);
        let planes = img_full.chunks(hw).zip(out_img.chunks_mut(php));
        match aug.spatial.then(|| Warp::draw(rng, center, ph, pw)).flatten() {
            Some(warp) => {
                planes.for_each(|(src, dst)| warp.sample(src, h, w, dst));
                warp.sample_mask(&mask_full, h, w, out_mask);
            }
            None => {
                let cut = |src: &[f32], dst: &mut [f32]| {
                    for y in 0..ph {
                        let at = (origin.0 + y) * w + origin.1;
                        dst[y * pw..(y + 1) * pw].copy_from_slice(&src[at..at + pw]);
                    }
                };
                planes.for_each(|(src, dst)| cut(src, dst));
                cut(&mask_full, out_mask);
            }
        }
        if aug.intensity {
            // Per channel, as nnU-Net draws its intensity transforms.
            out_img.chunks_mut(php).for_each(|plane| color::augment(rng, plane, ph, pw));
        }
    }
    Ok(Batch {
        images: Tensor::from_data(TensorData::new(images, [idx.len(), c, ph, pw]), device),
        masks: Tensor::from_data(TensorData::new(masks, [idx.len(), 1, ph, pw]), device),
    })
}

/// Example `i`'s image and each expert's mask, as owned row-major buffers.
fn example(ds: &Dataset, i: usize) -> (Vec<f32>, Vec<Vec<u8>>) {
    let hw = ds.height() * ds.width();
    let img = ds.images.index_axis(ndarray::Axis(0), i).iter().copied().collect();
    let m = ds.masks.index_axis(ndarray::Axis(0), i);
    let flat: Vec<u8> = m.iter().copied().collect();
    (img, flat.chunks(hw).map(<[u8]>::to_vec).collect())
}

/// Pastes a lesion cut from a random donor (not `i` itself) into `img` and `labels`; a donor
/// whose lesion finds no plausible place leaves the example as it was.
fn paste_lesion<R: Rng>(ds: &Dataset, aug: &Augmentation, i: usize, img: &mut [f32], labels: &mut [Vec<u8>], rng: &mut R) {
    let donor = aug.donors[rng.gen_range(0..aug.donors.len())];
    let scale = rng.gen_range(paste::SCALE.0..=paste::SCALE.1);
    if donor == i {
        return;
    }
    let (dimg, dlabels) = example(ds, donor);
    let refs: Vec<&[u8]> = dlabels.iter().map(Vec::as_slice).collect();
    if let Some(lesion) = paste::cut(&dimg, &refs, ds.height(), ds.width(), scale) {
        paste::paste(rng, &lesion, img, labels, ds.height(), ds.width());
    }
}

/// The corner of a `patch`-sized window in the (symmetry-transformed) crop: with probability
/// `foreground` placed so that a pixel some expert marked lies inside it.
fn patch_origin<R: Rng>(
    foreground: f64,
    labels: &[&[u8]],
    sym: Symmetry,
    (h, w): (usize, usize),
    (ph, pw): (usize, usize),
    rng: &mut R,
) -> (usize, usize) {
    let mut origin = (rng.gen_range(0..=h - ph), rng.gen_range(0..=w - pw));
    if rng.gen_bool(foreground.clamp(0.0, 1.0)) {
        // Any annotator's lesion: the share of annotators marking a pixel, above zero.
        let mut union = vec![0f32; h * w];
        sym.apply(&masks::frequency(labels), h, w, &mut union);
        let lesion: Vec<usize> = (0..h * w).filter(|&j| union[j] > 0.0).collect();
        if !lesion.is_empty() {
            let j = lesion[rng.gen_range(0..lesion.len())];
            let (y, x) = (j / w, j % w);
            // The lesion pixel lands anywhere inside the patch.
            let lo_y = (y + 1).saturating_sub(ph);
            let lo_x = (x + 1).saturating_sub(pw);
            origin = (rng.gen_range(lo_y..=y.min(h - ph)), rng.gen_range(lo_x..=x.min(w - pw)));
        }
    }
    origin
}

/// Just the images at `idx`, [B,C,H,W].
pub fn images_tensor(ds: &Dataset, idx: &[usize], device: &Device) -> Tensor<4> {
    let (c, h, w) = (ds.channels(), ds.height(), ds.width());
    let data: Vec<f32> = idx.iter().flat_map(|&i| ds.images.index_axis(ndarray::Axis(0), i).iter().copied().collect::<Vec<_>>()).collect();
    Tensor::from_data(TensorData::new(data, [idx.len(), c, h, w]), device)
}
