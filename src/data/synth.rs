//! A synthetic stand-in for LIDC: dark, low-contrast CT-like crops with small, subtle lesions,
//! and annotators who disagree the way radiologists do (some miss faint lesions, some draw
//! tight boundaries and some generous ones). It is the demo's embedded default.

use std::f32::consts::PI;

use anyhow::{Result, bail};
use ndarray::{Array3, Array4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use super::Dataset;

/// Which synthetic data `synth` and `demo` make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SynthKind {
    /// Dark lung-CT-like crops in [0, 1] (this module).
    LidcLike,
    /// Head CT in HU with experts' masks, in import's layout ([`super::head_ct`]).
    HeadCt,
}

#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub count: usize,
    pub size: usize,
    pub annotators: usize,
    pub seed: u64,
    /// Share of crops with no lesion at all.
    pub empty_fraction: f32,
    /// Consecutive crops that share a series (patient).
    pub per_series: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self { count: 256, size: 128, annotators: 4, seed: 0, empty_fraction: 0.15, per_series: 4 }
    }
}

/// One annotator's habits: how generous the boundary is and how faint a lesion they still see.
struct Annotator {
    level: f32,
    detect: f32,
}

fn annotators(n: usize) -> Vec<Annotator> {
    (0..n)
        .map(|k| {
            let t = if n == 1 { 0.5 } else { k as f32 / (n - 1) as f32 };
            Annotator { level: 0.25 + 0.5 * t, detect: 0.03 + 0.07 * ((k * 7919) % n) as f32 / n as f32 }
        })
        .collect()
}

pub fn generate(cfg: &SynthConfig) -> Result<Dataset> {
    if cfg.count == 0 {
        bail!("synth: --count must be at least 1");
    }
    if cfg.annotators == 0 {
        bail!("synth: --annotators must be at least 1 (annotator count 0)");
    }
    if cfg.size < 16 {
        bail!("synth: --size must be at least 16 pixels");
    }
    let (n, s, a) = (cfg.count, cfg.size, cfg.annotators);
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let styles = annotators(a);
    let mut images = Array3::<f32>::zeros((n, s, s));
    let mut masks = Array4::<u8>::zeros((n, a, s, s));
    let noise = Normal::new(0.0f32, 1.0).expect("valid normal");
    let sf = s as f32;

    for i in 0..n {
        let mut img = vec![0f32; s * s];
        // Dark parenchyma with slow texture.
        let base = rng.gen_range(0.06..0.16);
        img.iter_mut().for_each(|v| *v = base);
        for _ in 0..6 {
            let (cx, cy) = (rng.gen_range(0.0..sf), rng.gen_range(0.0..sf));
            let sig = rng.gen_range(sf / 8.0..sf / 3.0);
            let amp = rng.gen_range(-0.03..0.04);
            add_blob(&mut img, s, cx, cy, sig, amp);
        }
        // A brighter chest wall on one side in some crops.
        if rng.gen_bool(0.4) {
            let side = rng.gen_range(0..4);
            let depth = rng.gen_range(0.05..0.2) * sf;
            let level = rng.gen_range(0.35..0.6);
            let wobble = rng.gen_range(0.0..6.0);
            for y in 0..s {
                for x in 0..s {
                    let (u, v) = match side {
                        0 => (x as f32, y as f32),
                        1 => (sf - 1.0 - x as f32, y as f32),
                        2 => (y as f32, x as f32),
                        _ => (sf - 1.0 - y as f32, x as f32),
                    };
                    let edge = depth + wobble * (v / sf * 2.0 * PI).sin();
                    let t = 1.0 / (1.0 + ((u - edge) / 1.5).exp());
                    img[y * s + x] += t * (level - base);
                }
            }
        }
        // Vessels: thin bright tubes, the usual false positives.
        for _ in 0..rng.gen_range(1..5) {
            let (x0, y0) = (rng.gen_range(0.0..sf), rng.gen_range(0.0..sf));
            let ang = rng.gen_range(0.0..PI);
            let width = rng.gen_range(0.6..1.8);
            let amp = rng.gen_range(0.05..0.2);
            let (dx, dy) = (ang.cos(), ang.sin());
            let half_len = rng.gen_range(0.1..0.4) * sf;
            for y in 0..s {
                for x in 0..s {
                    let (px, py) = (x as f32 - x0, y as f32 - y0);
                    let d = (px * dy - py * dx).abs();
                    // Vessels are segments that taper out, not lines across the crop.
                    let along = (px * dx + py * dy) / half_len;
                    img[y * s + x] += amp * (-(d * d) / (2.0 * width * width)).exp() * (-along.powi(4)).exp();
                }
            }
        }

        let has_lesion = !rng.gen_bool(cfg.empty_fraction.clamp(0.0, 1.0) as f64);
        if has_lesion {
            let cx = sf / 2.0 + rng.gen_range(-sf / 10.0..sf / 10.0);
            let cy = sf / 2.0 + rng.gen_range(-sf / 10.0..sf / 10.0);
            let r = rng.gen_range(sf / 40.0..sf / 9.0).max(1.5);
            let ecc = rng.gen_range(0.7..1.3);
            let (rx, ry) = (r * ecc, r / ecc);
            let rot = rng.gen_range(0.0..PI);
            let contrast = rng.gen_range(0.03..0.35);
            let lobes = [rng.gen_range(0.0..0.15), rng.gen_range(0.0..2.0 * PI), rng.gen_range(0.0..0.1), rng.gen_range(0.0..2.0 * PI)];
            let soft = rng.gen_range(0.08..0.25);
            let radius = |x: f32, y: f32, jitter: &[f32; 4]| {
                let (px, py) = (x - cx, y - cy);
                let (c, sn) = (rot.cos(), rot.sin());
                let (u, v) = (px * c + py * sn, -px * sn + py * c);
                let th = v.atan2(u);
                let shape = 1.0
                    + lobes[0] * (2.0 * th + lobes[1]).cos()
                    + lobes[2] * (3.0 * th + lobes[3]).cos()
                    + jitter[0] * (th + jitter[1]).cos()
                    + jitter[2] * (2.0 * th + jitter[3]).cos();
                ((u / rx).powi(2) + (v / ry).powi(2)).sqrt() / shape.max(0.3)
            };
            let none = [0.0; 4];
            for y in 0..s {
                for x in 0..s {
                    let rr = radius(x as f32, y as f32, &none);
                    img[y * s + x] += contrast / (1.0 + ((rr - 1.0) / soft).exp());
                }
            }
            for (k, st) in styles.iter().enumerate() {
                // Faint lesions are missed, more often the fainter they are.
                let seen = contrast > st.detect * rng.gen_range(0.7..1.6);
                if !seen {
                    continue;
                }
                let jitter =
                    [rng.gen_range(0.0..0.08), rng.gen_range(0.0..2.0 * PI), rng.gen_range(0.0..0.06), rng.gen_range(0.0..2.0 * PI)];
                let level = (st.level + rng.gen_range(-0.1..0.1)).clamp(0.05, 0.95);
                for y in 0..s {
                    for x in 0..s {
                        let rr = radius(x as f32, y as f32, &jitter);
                        let p = 1.0 / (1.0 + ((rr - 1.0) / soft).exp());
                        if p > level {
                            masks[[i, k, y, x]] = 1;
                        }
                    }
                }
            }
        }
        for (p, v) in img.iter().enumerate() {
            let val = v + 0.012 * noise.sample(&mut rng);
            images[[i, p / s, p % s]] = val.clamp(0.0, 1.0);
        }
    }
    let per = cfg.per_series.max(1);
    let series = (0..n).map(|i| format!("synthetic.{}.{}", cfg.seed, i / per)).collect();
    Dataset::gray(images, masks, Some(series), "synth")
}

fn add_blob(img: &mut [f32], s: usize, cx: f32, cy: f32, sigma: f32, amp: f32) {
    for y in 0..s {
        for x in 0..s {
            let dx = (x as f32 - cx) / sigma;
            let dy = (y as f32 - cy) / sigma;
            img[y * s + x] += amp * (-(dx * dx + dy * dy) / 2.0).exp();
        }
    }
}

/// `apunet synth`: a generated dataset saved to `out`.
pub fn generate_to(cfg: &SynthConfig, out: &std::path::Path) -> Result<Dataset> {
    let ds = generate(cfg)?;
    ds.save(out)?;
    Ok(ds)
}
