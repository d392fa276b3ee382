//! A synthetic head CT in Hounsfield units, for tests and as a second demo dataset: air, scalp,
//! skull, brain parenchyma (grey matter about 38 HU, white matter about 28, ventricles of CSF)
//! and subtle hyperdense lesions (50-75 HU: 15-45 HU above the brain, invisible in a lung
//! window), read by simulated experts who draw at their own boundary level and miss lesions
//! fainter than their own threshold. Written in `apunet import`'s layout: one NIfTI slice per
//! case in `images/`, one mask per expert in `labels/`, pixel spacing varying by case as it does
//! between scanners.

use std::f32::consts::PI;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use super::scan::{self, Geometry};

#[derive(Debug, Clone)]
pub struct HeadCtConfig {
    pub cases: usize,
    pub size: usize,
    pub annotators: usize,
    pub seed: u64,
}

/// One slice: HU values (row-major), its pixel spacing, and each expert's mask.
pub struct HeadCtCase {
    pub hu: Vec<f32>,
    pub spacing: f32,
    pub experts: Vec<Vec<u8>>,
}

/// An expert's habits: the boundary level they draw at (0: generous, 1: tight) and the
/// faintest lesion (HU above the brain around it) they still see.
struct Expert {
    level: f32,
    threshold: f32,
}

fn experts(n: usize) -> Vec<Expert> {
    (0..n)
        .map(|k| {
            let t = if n == 1 { 0.5 } else { k as f32 / (n - 1) as f32 };
            Expert { level: 0.3 + 0.4 * t, threshold: 14.0 + 14.0 * ((k * 5 + 2) % n) as f32 / n as f32 }
        })
        .collect()
}

/// Writes `cfg.cases` cases into `dir/images` and `dir/labels`.
pub fn write_folder(dir: &Path, cfg: &HeadCtConfig) -> Result<()> {
    if cfg.cases == 0 || cfg.annotators == 0 {
        bail!("synth --kind head-ct: --count and --annotators must be at least 1");
    }
    if cfg.size < 32 {
        bail!("synth --kind head-ct: --size must be at least 32 pixels");
    }
    for sub in ["images", "labels"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    for i in 0..cfg.cases {
        let c = generate_case(&mut rng, cfg);
        let name = format!("head{i:03}");
        let s = cfg.size;
        let mut header = scan::output_header(&Geometry::Plain, s, s, 1, 1);
        header.pixdim[1] = c.spacing;
        header.pixdim[2] = c.spacing;
        header.descrip = b"synthetic head CT in HU".to_vec();
        let hu: Vec<i16> = c.hu.iter().map(|v| v.round().clamp(-1024.0, 3071.0) as i16).collect();
        scan::write_nifti(&dir.join(format!("images/{name}.nii.gz")), &header, &[vec![hu]], s, s)?;
        header.descrip = b"expert mask".to_vec();
        for (k, m) in c.experts.into_iter().enumerate() {
            scan::write_nifti(&dir.join(format!("labels/{name}_A{}.nii.gz", k + 1)), &header, &[vec![m]], s, s)?;
        }
    }
    Ok(())
}

/// One case.
pub fn generate_case(rng: &mut StdRng, cfg: &HeadCtConfig) -> HeadCtCase {
    let s = cfg.size;
    let sf = s as f32;
    let (cy, cx) = (sf / 2.0 + rng.gen_range(-0.03..0.03) * sf, sf / 2.0 + rng.gen_range(-0.03..0.03) * sf);
    let a = rng.gen_range(0.36..0.42) * sf;
    let b = a * rng.gen_range(0.8..0.9);
    let tilt = rng.gen_range(-0.15f32..0.15);
    let (sin, cos) = tilt.sin_cos();
    // Normalised ellipse radius: < 1 inside the brain.
    let radius = |y: f32, x: f32| {
        let (dy, dx) = (y - cy, x - cx);
        let (u, v) = (cos * dx + sin * dy, -sin * dx + cos * dy);
        ((u / b).powi(2) + (v / a).powi(2)).sqrt()
    };
    let skull = rng.gen_range(0.07..0.1);
    let bone = rng.gen_range(900.0..1400.0);
    let brain = rng.gen_range(27.0..31.0);
    // Slow variation of the parenchyma, a few HU.
    let blobs: Vec<(f32, f32, f32, f32)> = (0..4)
        .map(|_| (rng.gen_range(0.2..0.8) * sf, rng.gen_range(0.2..0.8) * sf, rng.gen_range(0.1..0.3) * sf, rng.gen_range(-3.0..3.0)))
        .collect();
    let ventricles: Vec<(f32, f32, f32, f32)> = [-1.0f32, 1.0]
        .iter()
        .map(|side| {
            (
                cy + rng.gen_range(-0.05..0.05) * sf,
                cx + side * rng.gen_range(0.05..0.09) * sf,
                rng.gen_range(0.03..0.05) * sf,
                rng.gen_range(0.1..0.16) * sf,
            )
        })
        .collect();
    let mut hu = vec![0f32; s * s];
    for y in 0..s {
        for x in 0..s {
            let (yf, xf) = (y as f32, x as f32);
            let r = radius(yf, xf);
            hu[y * s + x] = if r > 1.0 + skull + 0.04 {
                -1000.0
            } else if r > 1.0 + skull {
                40.0
            } else if r > 1.0 {
                bone
            } else {
                let field: f32 = blobs
                    .iter()
                    .map(|&(by, bx, sig, amp)| amp * (-((yf - by).powi(2) + (xf - bx).powi(2)) / (2.0 * sig * sig)).exp())
                    .sum();
                // Grey matter in a cortical ribbon is brighter than white matter.
                let grey = 9.0 / (1.0 + ((0.86 - r) / 0.02).exp());
                let csf = ventricles.iter().any(|&(vy, vx, ry, rx)| ((yf - vy) / rx).powi(2) + ((xf - vx) / ry).powi(2) <= 1.0);
                if csf { 8.0 } else { brain + grey + field }
            };
        }
    }
    // Lesions: irregular hyperdense blobs with a soft edge; membership in [0, 1].
    let mut members: Vec<(Vec<f32>, f32)> = Vec::new();
    let count = if rng.gen_bool(0.8) { rng.gen_range(1..=2) } else { 0 };
    for _ in 0..count {
        let (ly, lx) = loop {
            let p = (rng.gen_range(0.15..0.85) * sf, rng.gen_range(0.15..0.85) * sf);
            if radius(p.0, p.1) < 0.75 {
                break p;
            }
        };
        let base_r = rng.gen_range(3.0..(0.08 * sf).max(4.0));
        let waves: Vec<(f32, f32)> = (2..5).map(|k| (rng.gen_range(0.0..0.12) / k as f32 * 2.0, rng.gen_range(0.0..2.0 * PI))).collect();
        let lesion_hu = rng.gen_range(50.0..75.0);
        let m: Vec<f32> = (0..s * s)
            .map(|j| {
                let (dy, dx) = ((j / s) as f32 - ly, (j % s) as f32 - lx);
                let th = dy.atan2(dx);
                let rr =
                    base_r * (1.0 + waves.iter().enumerate().map(|(k, &(amp, ph))| amp * ((k + 2) as f32 * th + ph).sin()).sum::<f32>());
                1.0 / (1.0 + ((dy.hypot(dx) - rr) / 1.2).exp())
            })
            .collect();
        let around = {
            let ring: Vec<f32> = (0..s * s)
                .filter(|&j| m[j] < 0.05 && m[j] > 0.0005 && radius((j / s) as f32, (j % s) as f32) < 1.0)
                .map(|j| hu[j])
                .collect();
            if ring.is_empty() { brain } else { ring.iter().sum::<f32>() / ring.len() as f32 }
        };
        for j in 0..s * s {
            if radius((j / s) as f32, (j % s) as f32) < 1.0 {
                hu[j] += m[j] * (lesion_hu - hu[j]).max(0.0);
            }
        }
        members.push((m, lesion_hu - around));
    }
    let noise = Normal::new(0.0f32, 4.0).expect("valid normal");
    for (j, v) in hu.iter_mut().enumerate() {
        if radius((j / s) as f32, (j % s) as f32) <= 1.0 + skull + 0.04 {
            *v += noise.sample(rng);
        }
    }
    let experts = experts(cfg.annotators)
        .iter()
        .map(|e| {
            let mut mask = vec![0u8; s * s];
            for (m, contrast) in &members {
                if *contrast >= e.threshold {
                    mask.iter_mut().zip(m).for_each(|(v, &p)| *v |= u8::from(p >= e.level));
                }
            }
            mask
        })
        .collect();
    HeadCtCase { hu, spacing: rng.gen_range(0.42..0.6), experts }
}
