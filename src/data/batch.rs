//! Turning dataset examples into tensors for one step.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use burn::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::Dataset;
use super::augment::Symmetry;
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

/// Images [B,1,H,W] and the chosen masks [B,1,H,W] as 0/1 floats.
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
    training_patches(ds, idx, choice, augment, None, rng, device)
}

/// As [`training_batch`], cut to `patch` when given.
pub fn training_patches<R: Rng>(
    ds: &Dataset,
    idx: &[usize],
    choice: AnnotatorChoice,
    augment: bool,
    patch: Option<PatchSampling>,
    rng: &mut R,
    device: &Device,
) -> Result<Batch> {
    let (h, w, a) = (ds.height(), ds.width(), ds.annotators());
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
    let mut images = vec![0f32; idx.len() * php];
    let mut masks = vec![0f32; idx.len() * php];
    let mut mask_src = vec![0f32; hw];
    let (mut img_full, mut mask_full, mut union_full) = (vec![0f32; hw], vec![0f32; hw], vec![0f32; hw]);
    for (b, &i) in idx.iter().enumerate() {
        let img = ds.images.index_axis(ndarray::Axis(0), i);
        let img = img.as_standard_layout();
        let img = img.as_slice().expect("standard layout");
        let m = ds.masks.index_axis(ndarray::Axis(0), i);
        let m = m.as_standard_layout();
        let labels: Vec<&[u8]> = m.as_slice().expect("standard layout").chunks(hw).collect();
        let chosen = match choice {
            AnnotatorChoice::Majority => masks::majority(&labels),
            AnnotatorChoice::Fixed(k) => labels[k].to_vec(),
            AnnotatorChoice::Random => labels[rng.gen_range(0..a)].to_vec(),
        };
        for (d, v) in mask_src.iter_mut().zip(chosen) {
            *d = v as f32;
        }
        let sym = if augment { Symmetry::random(rng, h == w) } else { Symmetry::default() };
        let Some(p) = patch else {
            sym.apply(img, h, w, &mut images[b * hw..(b + 1) * hw]);
            sym.apply(&mask_src, h, w, &mut masks[b * hw..(b + 1) * hw]);
            continue;
        };
        sym.apply(img, h, w, &mut img_full);
        sym.apply(&mask_src, h, w, &mut mask_full);
        let mut origin = (rng.gen_range(0..=h - ph), rng.gen_range(0..=w - pw));
        if rng.gen_bool(p.foreground.clamp(0.0, 1.0)) {
            // Any annotator's lesion: the share of annotators marking a pixel, above zero.
            sym.apply(&masks::frequency(&labels), h, w, &mut union_full);
            let lesion: Vec<usize> = (0..hw).filter(|&j| union_full[j] > 0.0).collect();
            if !lesion.is_empty() {
                let j = lesion[rng.gen_range(0..lesion.len())];
                let (y, x) = (j / w, j % w);
                // The lesion pixel lands anywhere inside the patch.
                let lo_y = (y + 1).saturating_sub(ph);
                let lo_x = (x + 1).saturating_sub(pw);
                origin = (rng.gen_range(lo_y..=y.min(h - ph)), rng.gen_range(lo_x..=x.min(w - pw)));
            }
        }
        for y in 0..ph {
            let src = (origin.0 + y) * w + origin.1;
            let dst = b * php + y * pw;
            images[dst..dst + pw].copy_from_slice(&img_full[src..src + pw]);
            masks[dst..dst + pw].copy_from_slice(&mask_full[src..src + pw]);
        }
    }
    let shape = [idx.len(), 1, ph, pw];
    Ok(Batch {
        images: Tensor::from_data(TensorData::new(images, shape), device),
        masks: Tensor::from_data(TensorData::new(masks, shape), device),
    })
}

/// Just the images at `idx`, [B,1,H,W].
pub fn images_tensor(ds: &Dataset, idx: &[usize], device: &Device) -> Tensor<4> {
    let (h, w) = (ds.height(), ds.width());
    let data: Vec<f32> = idx.iter().flat_map(|&i| ds.images.index_axis(ndarray::Axis(0), i).iter().copied().collect::<Vec<_>>()).collect();
    Tensor::from_data(TensorData::new(data, [idx.len(), 1, h, w]), device)
}
