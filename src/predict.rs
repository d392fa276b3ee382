//! Inference on images of any size: overlapping patches at the training crop size, Gaussian
//! weighting of the overlaps (as nnU-Net), one prior per image and one latent per whole-image
//! sample shared by every patch, so a sample stays one coherent reading across the image.

use anyhow::{Result, bail};
use burn::prelude::*;
use rayon::prelude::*;

use crate::inference::{Sampling, image_eps};
use crate::model::{ProbUNet, Segmenter, to_host};

/// Start offsets of windows of `patch` along an axis of `len` (len >= patch), stepping by
/// patch * (1 - overlap) and always ending flush with the last pixel.
pub fn window_starts(len: usize, patch: usize, overlap: f64) -> Vec<usize> {
    if len <= patch {
        return vec![0];
    }
    let step = ((patch as f64 * (1.0 - overlap)).round() as usize).clamp(1, patch);
    let last = len - patch;
    let mut starts: Vec<usize> = (0..).map(|k| k * step).take_while(|&s| s < last).collect();
    starts.push(last);
    starts
}

/// A Gaussian importance map (sigma = size / 8), peak 1, floored so borders still count.
pub fn gaussian_weights(ph: usize, pw: usize) -> Vec<f32> {
    let g = |i: usize, n: usize| {
        let c = (n as f32 - 1.0) / 2.0;
        let s = n as f32 / 8.0;
        (-((i as f32 - c).powi(2)) / (2.0 * s * s)).exp()
    };
    let mut w: Vec<f32> = (0..ph * pw).map(|p| g(p / pw, ph) * g(p % pw, pw)).collect();
    let max = w.iter().cloned().fold(0.0, f32::max);
    w.iter_mut().for_each(|v| *v = (*v / max).max(1e-3));
    w
}

/// n probability maps for one image plus their mean.
#[derive(Debug, Clone)]
pub struct Prediction {
    pub height: usize,
    pub width: usize,
    /// n maps of height * width probabilities.
    pub probs: Vec<Vec<f32>>,
    pub mean: Vec<f32>,
    pub patches: usize,
}

impl Prediction {
    /// The maps resampled bilinearly onto an h x w grid over the same extent.
    pub fn resampled(&self, h: usize, w: usize) -> Prediction {
        let map = |m: &Vec<f32>| crate::data::resample::linear(m, (self.height, self.width), (h, w));
        Prediction { height: h, width: w, probs: self.probs.iter().map(map).collect(), mean: map(&self.mean), patches: self.patches }
    }
}

/// The overlapping windows of `ph` x `pw` over an image of C planes of h x w, zero-padded up to
/// one patch.
pub struct Windows {
    padded: Vec<f32>,
    /// Input channels (planes).
    pub channels: usize,
    /// Padded height and width.
    pub hh: usize,
    pub ww: usize,
    pub ph: usize,
    pub pw: usize,
    /// Top-left corners in the padded image.
    pub positions: Vec<(usize, usize)>,
}

impl Windows {
    /// `img`: C planes of h x w one after another (C = 1 for a plain image).
    pub fn new(img: &[f32], h: usize, w: usize, ph: usize, pw: usize, overlap: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&overlap) {
            bail!("overlap must be in [0, 1), got {overlap}");
        }
        if h == 0 || w == 0 || img.is_empty() || !img.len().is_multiple_of(h * w) {
            bail!("image of {} values is not whole planes of {h}x{w}", img.len());
        }
        let (channels, (hh, ww)) = (img.len() / (h * w), (h.max(ph), w.max(pw)));
        let padded = img
            .chunks(h * w)
            .flat_map(|plane| (0..hh * ww).map(move |p| if p / ww < h && p % ww < w { plane[(p / ww) * w + p % ww] } else { 0.0 }))
            .collect();
        let (ys, xs) = (window_starts(hh, ph, overlap), window_starts(ww, pw, overlap));
        let positions = ys.iter().flat_map(|&y| xs.iter().map(move |&x| (y, x))).collect();
        Ok(Self { padded, channels, hh, ww, ph, pw, positions })
    }

    /// The patches at `corners`, concatenated row-major: [B * C * ph * pw].
    pub fn patches(&self, corners: &[(usize, usize)]) -> Vec<f32> {
        let mut out = Vec::with_capacity(corners.len() * self.channels * self.ph * self.pw);
        for &(y0, x0) in corners {
            for plane in self.padded.chunks(self.hh * self.ww) {
                for y in 0..self.ph {
                    let row = (y0 + y) * self.ww + x0;
                    out.extend_from_slice(&plane[row..row + self.pw]);
                }
            }
        }
        out
    }

    /// The patches at `corners` as a tensor [B, C, ph, pw].
    fn tensor(&self, corners: &[(usize, usize)], device: &Device) -> Tensor<4> {
        Tensor::from_data(TensorData::new(self.patches(corners), [corners.len(), self.channels, self.ph, self.pw]), device)
    }
}

/// Slides a `ph` x `pw` window over `img` (C planes of h x w in [0,1]); `run` maps a batch of patches
/// [B*C*ph*pw] to probabilities [B][n][ph*pw]. Images smaller than a patch are zero-padded.
#[allow(clippy::too_many_arguments)]
pub fn sliding_window(
    img: &[f32],
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    n: usize,
    overlap: f64,
    batch: usize,
    run: impl FnMut(&[f32], usize) -> Result<Vec<f32>>,
    progress: impl FnMut(usize),
) -> Result<Prediction> {
    blend(&Windows::new(img, h, w, ph, pw, overlap)?, h, w, n, batch, run, progress)
}

/// `sliding_window` over windows already cut from an h x w image.
fn blend(
    win: &Windows,
    h: usize,
    w: usize,
    n: usize,
    batch: usize,
    mut run: impl FnMut(&[f32], usize) -> Result<Vec<f32>>,
    mut progress: impl FnMut(usize),
) -> Result<Prediction> {
    let (ph, pw) = (win.ph, win.pw);
    let (ww, pp) = (win.ww, ph * pw);
    let weights = gaussian_weights(ph, pw);
    let mut acc = vec![vec![0f32; win.hh * ww]; n];
    let mut wsum = vec![0f32; win.hh * ww];
    for chunk in win.positions.chunks(batch.max(1)) {
        let probs = run(&win.patches(chunk), chunk.len())?;
        if probs.len() != chunk.len() * n * pp {
            bail!("patch model returned {} values, expected {}", probs.len(), chunk.len() * n * pp);
        }
        for &(y0, x0) in chunk {
            for (y, g) in weights.chunks(pw).enumerate() {
                wsum[(y0 + y) * ww + x0..][..pw].iter_mut().zip(g).for_each(|(s, g)| *s += g);
            }
        }
        // One sample's map per task, row by row (pixel by pixel on one core, it left a core idle).
        acc.par_iter_mut().enumerate().for_each(|(k, a)| {
            for (b, &(y0, x0)) in chunk.iter().enumerate() {
                let p = &probs[(b * n + k) * pp..][..pp];
                for (y, (g, src)) in weights.chunks(pw).zip(p.chunks(pw)).enumerate() {
                    let dst = &mut a[(y0 + y) * ww + x0..][..pw];
                    dst.iter_mut().zip(g.iter().zip(src)).for_each(|(d, (g, v))| *d += g * v);
                }
            }
        });
        progress(chunk.len());
    }
    let crop = |a: &Vec<f32>| -> Vec<f32> { (0..h * w).map(|p| a[(p / w) * ww + p % w] / wsum[(p / w) * ww + p % w]).collect() };
    let probs: Vec<Vec<f32>> = acc.par_iter().map(crop).collect();
    let mean = (0..h * w).into_par_iter().map(|p| probs.iter().map(|m| m[p]).sum::<f32>() / n.max(1) as f32).collect();
    Ok(Prediction { height: h, width: w, probs, mean, patches: win.positions.len() })
}

/// The image's prior: the prior net's mean and log sigma averaged over every window (the prior
/// net alone, a fraction of the backbone's cost), so the whole image has one distribution.
pub fn image_prior(model: &ProbUNet, win: &Windows, batch: usize, device: &Device) -> Result<(Vec<f32>, Vec<f32>)> {
    let (mut mu, mut log_sigma) = (Vec::new(), Vec::new());
    for chunk in win.positions.chunks(batch.max(1)) {
        let g = model.prior.forward(win.tensor(chunk, device));
        let (m, s) = (to_host(g.mu)?, to_host(g.log_sigma)?);
        let l = m.len() / chunk.len();
        mu.resize(l, 0.0);
        log_sigma.resize(l, 0.0);
        for (mc, sc) in m.chunks(l).zip(s.chunks(l)) {
            mu.iter_mut().zip(mc).for_each(|(a, v)| *a += v);
            log_sigma.iter_mut().zip(sc).for_each(|(a, v)| *a += v);
        }
    }
    let count = win.positions.len() as f32;
    Ok((mu.into_iter().map(|v| v / count).collect(), log_sigma.into_iter().map(|v| v / count).collect()))
}

/// The n latents of one image: z_s = mu + sigma * eps_s with the image's prior, [n * latent].
pub fn image_latents(mu: &[f32], log_sigma: &[f32], eps: &[f32]) -> Vec<f32> {
    let l = mu.len();
    eps.iter().enumerate().map(|(i, e)| mu[i % l] + log_sigma[i % l].exp() * e).collect()
}

/// Samples for an image of any size, each sample one reading of the whole image.
/// - Probabilistic U-Net: one prior per image (`image_prior`) and one latent per sample
///   (`image_latents`, eps seeded by `s.seed`) shared by every patch; the backbone and fcomb
///   run per patch.
/// - HPU-Net: its latents are maps, one value per pixel of each coarse scale, so each patch has
///   its own prior; every patch takes the same standard-normal draw per sample, which keeps
///   overlapping patches' readings alike.
#[allow(clippy::too_many_arguments)]
pub fn predict_image(
    model: &Segmenter,
    img: &[f32],
    h: usize,
    w: usize,
    patch: (usize, usize),
    s: &Sampling,
    overlap: f64,
    device: &Device,
    progress: impl FnMut(usize),
) -> Result<Prediction> {
    let (ph, pw) = patch;
    let (n, batch) = (s.n, s.batch);
    let win = Windows::new(img, h, w, ph, pw, overlap)?;
    let latent = model.latent_size(ph, pw);
    let punet = model.as_punet();
    let shared = match punet {
        Some(m) => {
            let (mu, log_sigma) = image_prior(m, &win, batch, device)?;
            image_latents(&mu, &log_sigma, &image_eps(s.seed, 0, n, latent))
        }
        None => image_eps(s.seed, 0, n, latent),
    };
    // The same windows the prior saw: cut once.
    blend(
        &win,
        h,
        w,
        n,
        batch,
        |patches, b| {
            let x = Tensor::<4>::from_data(TensorData::new(patches.to_vec(), [b, win.channels, ph, pw]), device);
            let per_patch: Vec<f32> = (0..b).flat_map(|_| shared.iter().copied()).collect();
            let per_patch = Tensor::<2>::from_data(TensorData::new(per_patch, [b * n, latent]), device);
            let logits = match punet {
                Some(m) => m.decode_latents(m.unet.forward(x), per_patch),
                None => model.sample_from(&model.encode(x), per_patch, &s.mean_scales),
            };
            let mut probs = to_host(logits)?;
            // On the host over every core: flex's sigmoid runs on one.
            probs.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|v| *v = sigmoid(*v)));
            Ok(probs)
        },
        progress,
    )
}

/// flex's sigmoid, the same bits: stable on both sides of 0.
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_tile_exactly() {
        assert_eq!(window_starts(128, 128, 0.5), vec![0]);
        assert_eq!(window_starts(256, 128, 0.5), vec![0, 64, 128]);
        let s = window_starts(1000, 128, 0.5);
        assert_eq!(*s.last().unwrap(), 1000 - 128);
        assert!(s.windows(2).all(|p| p[1] > p[0] && p[1] - p[0] <= 64));
    }
}
