//! Sampling masks from a trained model: the encoders run once per image, the sample-dependent
//! part (the Probabilistic U-Net's fcomb, the HPU-Net's latent decoder) once per chunk of
//! images with all n samples batched.

use anyhow::Result;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use ndarray::{Array3, Array4, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::model::{Segmenter, to_host};

/// n sampled masks per image and the mean probability map.
#[derive(Debug, Clone)]
pub struct Samples {
    /// [N, n, H, W], 0/1.
    pub masks: Array4<u8>,
    /// [N, H, W], the mean over samples of the per-pixel probability.
    pub mean: Array3<f32>,
    /// [N, H, W], 0/1: the mask at the prior's mean latent (the model's single "best guess").
    pub prior_mean: Array3<u8>,
}

/// eps ~ N(0, I) for one image, seeded by the image's index so results do not depend on batching.
pub fn image_eps(seed: u64, image: usize, n: usize, latent: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed ^ (image as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..n * latent).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// How to sample: n masks per image, seeded; `batch` images at a time.
#[derive(Debug, Clone)]
pub struct Sampling {
    pub n: usize,
    pub seed: u64,
    pub batch: usize,
    /// HPU-Net latent scales (coarsest first) that take the prior's mean instead of a sample.
    pub mean_scales: Vec<bool>,
}

/// Samples `s.n` masks for every image in `images` [N,C,H,W].
pub fn sample_images(
    model: &Segmenter,
    images: &Array4<f32>,
    s: &Sampling,
    device: &Device,
    mut progress: impl FnMut(usize),
) -> Result<Samples> {
    let (n, seed, batch) = (s.n, s.seed, s.batch);
    let (count, c, h, w) = images.dim();
    let latent = model.latent_size(h, w);
    let mut masks = Array4::<u8>::zeros((count, n, h, w));
    let mut mean = Array3::<f32>::zeros((count, h, w));
    let mut prior_mean = Array3::<u8>::zeros((count, h, w));
    // Bound the fcomb batch so memory stays flat for large n.
    let per_chunk = (batch.max(1) * 16 / n.max(1)).clamp(1, batch.max(1));
    let mut start = 0;
    while start < count {
        let end = (start + per_chunk).min(count);
        let b = end - start;
        // Logical (row-major) order, whatever the array's memory layout.
        let chunk: Vec<f32> = images.slice(ndarray::s![start..end, .., .., ..]).iter().copied().collect();
        let x = Tensor::<4>::from_data(TensorData::new(chunk, [b, c, h, w]), device);
        let eps: Vec<f32> = (start..end).flat_map(|i| image_eps(seed, i, n, latent)).collect();
        let eps = Tensor::<2>::from_data(TensorData::new(eps, [b * n, latent]), device);
        let enc = model.encode(x);
        let best = to_host(model.predict_prior_mean(&enc))?;
        let probs = to_host(sigmoid(model.sample_from(&enc, eps, &s.mean_scales)))?;
        for (o, &v) in prior_mean.slice_mut(ndarray::s![start..end, .., ..]).iter_mut().zip(&best) {
            *o = (v > 0.0) as u8;
        }
        let hw = h * w;
        for bi in 0..b {
            let mut m = mean.index_axis_mut(Axis(0), start + bi);
            let m = m.as_slice_mut().expect("standard layout");
            for k in 0..n {
                let p = &probs[(bi * n + k) * hw..(bi * n + k + 1) * hw];
                let mut out = masks.slice_mut(ndarray::s![start + bi, k, .., ..]);
                for (px, (o, &v)) in out.iter_mut().zip(p).enumerate() {
                    *o = (v > 0.5) as u8;
                    m[px] += v / n as f32;
                }
            }
        }
        progress(b);
        start = end;
    }
    Ok(Samples { masks, mean, prior_mean })
}
