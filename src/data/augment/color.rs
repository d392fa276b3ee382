//! Intensity augmentation of a training patch with nnU-Net's transforms and probabilities:
//! Gaussian noise, Gaussian blur, brightness, contrast, simulated low resolution and gamma.
//! Masks are untouched. The strengths are relative to the patch's own spread, so they mean
//! the same for a lung window as for a brain window.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// (probability, range) of each transform, in the order they are applied (nnU-Net v2's).
pub const NOISE: (f64, (f32, f32)) = (0.1, (0.0, 0.1));
pub const BLUR: (f64, (f32, f32)) = (0.2, (0.5, 1.0));
pub const BRIGHTNESS: (f64, (f32, f32)) = (0.15, (0.75, 1.25));
pub const CONTRAST: (f64, (f32, f32)) = (0.15, (0.75, 1.25));
pub const LOW_RES: (f64, (f32, f32)) = (0.25, (0.5, 1.0));
pub const GAMMA_INVERTED: (f64, (f32, f32)) = (0.1, (0.7, 1.5));
pub const GAMMA: (f64, (f32, f32)) = (0.3, (0.7, 1.5));

/// Applies each transform with its probability to `img` (h x w) in place.
pub fn augment<R: Rng>(rng: &mut R, img: &mut [f32], h: usize, w: usize) {
    let (_, sd) = stats(img);
    if rng.gen_bool(NOISE.0) {
        // nnU-Net draws the variance on z-scored data: here in units of the patch's spread.
        let var = rng.gen_range(NOISE.1.0..=NOISE.1.1);
        let s = var.sqrt() * sd;
        for v in img.iter_mut() {
            let z: f32 = StandardNormal.sample(rng);
            *v += s * z;
        }
    }
    if rng.gen_bool(BLUR.0) {
        let sigma = rng.gen_range(BLUR.1.0..=BLUR.1.1);
        blur(img, h, w, sigma);
    }
    if rng.gen_bool(BRIGHTNESS.0) {
        let f = rng.gen_range(BRIGHTNESS.1.0..=BRIGHTNESS.1.1);
        img.iter_mut().for_each(|v| *v *= f);
    }
    if rng.gen_bool(CONTRAST.0) {
        let f = rng.gen_range(CONTRAST.1.0..=CONTRAST.1.1);
        let (m, _) = stats(img);
        let (lo, hi) = range(img);
        // Range preserved, as nnU-Net's contrast transform does.
        img.iter_mut().for_each(|v| *v = ((*v - m) * f + m).clamp(lo, hi));
    }
    if rng.gen_bool(LOW_RES.0) {
        let zoom = rng.gen_range(LOW_RES.1.0..=LOW_RES.1.1);
        low_resolution(img, h, w, zoom);
    }
    if rng.gen_bool(GAMMA_INVERTED.0) {
        let g = rng.gen_range(GAMMA_INVERTED.1.0..=GAMMA_INVERTED.1.1);
        img.iter_mut().for_each(|v| *v = -*v);
        gamma(img, g);
        img.iter_mut().for_each(|v| *v = -*v);
    }
    if rng.gen_bool(GAMMA.0) {
        let g = rng.gen_range(GAMMA.1.0..=GAMMA.1.1);
        gamma(img, g);
    }
}

/// `v -> min + range * ((v - min) / range)^g`, then the original mean and spread restored
/// (nnU-Net's retain_stats), so gamma changes the shape of the histogram only.
fn gamma(img: &mut [f32], g: f32) {
    let (mean, sd) = stats(img);
    let (lo, hi) = range(img);
    let span = (hi - lo).max(1e-7);
    img.iter_mut().for_each(|v| *v = lo + span * ((*v - lo) / span).max(0.0).powf(g));
    let (m2, sd2) = stats(img);
    let k = if sd2 > 1e-7 { sd / sd2 } else { 1.0 };
    img.iter_mut().for_each(|v| *v = (*v - m2) * k + mean);
}

/// Downsamples by `zoom` (nearest neighbour) and back up (bilinear): detail below the lower
/// resolution is lost, as on a thicker or smoother reconstruction.
fn low_resolution(img: &mut [f32], h: usize, w: usize, zoom: f32) {
    let (lh, lw) = (((h as f32 * zoom).round() as usize).max(1), ((w as f32 * zoom).round() as usize).max(1));
    let mut low = vec![0.0; lh * lw];
    for y in 0..lh {
        for x in 0..lw {
            let sy = ((y as f32 + 0.5) * h as f32 / lh as f32) as usize;
            let sx = ((x as f32 + 0.5) * w as f32 / lw as f32) as usize;
            low[y * lw + x] = img[sy.min(h - 1) * w + sx.min(w - 1)];
        }
    }
    let up = crate::data::resample::linear(&low, (lh, lw), (h, w));
    img.copy_from_slice(&up);
}

fn stats(v: &[f32]) -> (f32, f32) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean as f32, var.sqrt() as f32)
}

fn range(v: &[f32]) -> (f32, f32) {
    v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
}

/// Separable Gaussian blur in place, edges extended (kernel radius 3 sigma).
pub fn blur(buf: &mut [f32], h: usize, w: usize, sigma: f32) {
    let r = (3.0 * sigma).ceil().max(1.0) as isize;
    let k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = k.iter().sum();
    let k: Vec<f32> = k.into_iter().map(|v| v / total).collect();
    let mut tmp = vec![0.0; h * w];
    for y in 0..h {
        for x in 0..w {
            let xs = |i: isize| (x as isize + i).clamp(0, w as isize - 1) as usize;
            tmp[y * w + x] = (-r..=r).map(|i| k[(i + r) as usize] * buf[y * w + xs(i)]).sum();
        }
    }
    for y in 0..h {
        for x in 0..w {
            let ys = |i: isize| (y as isize + i).clamp(0, h as isize - 1) as usize;
            buf[y * w + x] = (-r..=r).map(|i| k[(i + r) as usize] * tmp[ys(i) * w + x]).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn blur_keeps_a_constant_and_the_sum_of_an_impulse() {
        let mut flat = vec![0.3; 64];
        blur(&mut flat, 8, 8, 1.0);
        assert!(flat.iter().all(|v| (v - 0.3).abs() < 1e-6));
        let mut spike = vec![0.0; 21 * 21];
        spike[10 * 21 + 10] = 1.0;
        blur(&mut spike, 21, 21, 1.0);
        assert!((spike.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(spike[10 * 21 + 10] < 0.2 && spike[10 * 21 + 11] > 0.05);
    }

    #[test]
    fn gamma_keeps_mean_and_spread() {
        let mut v: Vec<f32> = (0..100).map(|i| (i as f32 / 99.0).powi(2)).collect();
        let before = stats(&v);
        gamma(&mut v, 1.4);
        let after = stats(&v);
        assert!((before.0 - after.0).abs() < 1e-4 && (before.1 - after.1).abs() < 1e-4);
    }

    #[test]
    fn augmented_patches_stay_finite_and_near_the_original() {
        let (h, w) = (32, 32);
        let img: Vec<f32> = (0..h * w).map(|i| 0.2 + 0.6 * (((i / w) as f32 / 5.0).sin() * 0.5 + 0.5)).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let mut changed = 0;
        for _ in 0..100 {
            let mut v = img.clone();
            augment(&mut rng, &mut v, h, w);
            assert!(v.iter().all(|x| x.is_finite()));
            let diff = v.iter().zip(&img).map(|(a, b)| (a - b).abs()).sum::<f32>() / (h * w) as f32;
            assert!(diff < 0.3, "mean change {diff}");
            changed += usize::from(diff > 0.0);
        }
        // Each transform is rare; together they touch about 3 patches in 4.
        assert!((50..95).contains(&changed), "{changed} of 100 changed");
    }
}
