//! The lesion painter (`gan train --mode painter`, issue 27): the CycleGAN's ResNet generator
//! and PatchGAN, trained on pairs (as pix2pix) to paint a lesion into real surroundings.
//!
//! Input, two planes: the crop with the lesion's place (every pixel an expert marked, grown by
//! [`HOLE_MARGIN`]) filled with the mean of the ring around it, and the experts' mean mask of
//! what to paint. Target: the real crop. The painted crop keeps the input outside the hole.
//! Losses: LSGAN through a discriminator that sees the mask beside the crop, plus L1 on the
//! hole's pixels (weighted `lambda_l1`); no cycle, no pool: the pairs are real.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::networks::{Discriminator, GanConfig, Generator, lsgan};
use super::run::{GanRequest, GanState};
use super::train::{GanTrainConfig, StepLosses, adam, file};
use crate::data::augment::Symmetry;
use crate::eval::figures;
use crate::model::to_host;
use crate::train::checkpoint::{RunPaths, SetFile, load_model, load_optimizer, save_model, save_optimizer};

/// Pixels the hole extends beyond every expert's mark: the lesion's rim and partial-volume edge
/// go too, so nothing of the original lesion is left to copy.
pub const HOLE_MARGIN: usize = 3;
/// Width of the ring outside the hole whose mean fills it.
const RING: usize = 2;

/// A 0/1 map grown by `r` pixels (8-neighbourhood, so a square of side 2r+1).
pub fn grow(map: &[f32], h: usize, w: usize, r: usize) -> Vec<f32> {
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            if map[y * w + x] <= 0.0 {
                continue;
            }
            for yy in y.saturating_sub(r)..(y + r + 1).min(h) {
                out[yy * w + x.saturating_sub(r)..yy * w + (x + r + 1).min(w)].fill(1.0);
            }
        }
    }
    out
}

/// The hole for a mean mask `soft` (in [0, 1]): every marked pixel grown by [`HOLE_MARGIN`].
pub fn hole(soft: &[f32], h: usize, w: usize) -> Vec<f32> {
    grow(soft, h, w, HOLE_MARGIN)
}

/// The generator's input, two planes of h x w: `img` with the hole filled by the mean of the
/// ring around it (the whole crop's mean when the hole leaves no ring), and `soft` mapped to
/// [-1, 1] as the image is.
pub fn input(img: &[f32], soft: &[f32], hole: &[f32], h: usize, w: usize) -> Vec<f32> {
    let around = grow(hole, h, w, RING);
    let ring: Vec<f32> = (0..h * w).filter(|&j| around[j] > 0.0 && hole[j] == 0.0).map(|j| img[j]).collect();
    let fill = if ring.is_empty() { img.iter().sum::<f32>() / img.len() as f32 } else { ring.iter().sum::<f32>() / ring.len() as f32 };
    let context = img.iter().zip(hole).map(|(&v, &o)| if o > 0.0 { fill } else { v });
    context.chain(soft.iter().map(|v| v * 2.0 - 1.0)).collect()
}

/// The generator and the conditional discriminator with their Adam states.
pub struct PainterStepper {
    pub g: Generator,
    pub d: Discriminator,
    opt_g: ModuleOptimizer,
    opt_d: ModuleOptimizer,
    lambda_l1: f32,
}

impl PainterStepper {
    /// `device` must be an autodiff device.
    pub fn new(net: &GanConfig, lambda_l1: f32, device: &Device) -> Self {
        Self {
            g: Generator::new(2, 1, net.base, net.residual_blocks, device),
            d: Discriminator::new(2, net.base, device),
            opt_g: adam().init(),
            opt_d: adam().init(),
            lambda_l1,
        }
    }

    /// One step on `input` [1,2,H,W] (from [`input`]), the real crop [1,1,H,W] in [-1, 1] and
    /// the hole [1,1,H,W]: the generator first, then the discriminator on real vs painted.
    /// Reports (generator total, hole L1, discriminator).
    pub fn step(&mut self, input: Tensor<4>, real: Tensor<4>, hole: Tensor<4>, lr: f64) -> Result<StepLosses> {
        let mask = input.clone().narrow(1, 1, 1);
        let painted = composite(&self.g, input, hole.clone());
        let holed = hole.clone().sum().clamp_min(1.0);
        let l1 = ((painted.clone() - real.clone()).abs() * hole).sum() / holed;
        let adv = lsgan(self.d.forward(Tensor::cat(vec![painted.clone(), mask.clone()], 1)), 1.0);
        let loss_g = adv + l1.clone() * self.lambda_l1;
        let vals = to_host(Tensor::cat(vec![loss_g.clone(), l1], 0))?;
        if vals.iter().any(|v| !v.is_finite()) {
            bail!("painter generator loss became non-finite ({vals:?}); lower --lr");
        }
        let mut grads = loss_g.backward();
        let gg = GradientsParams::from_module(&mut grads, &self.g);
        self.g = self.opt_g.step(lr, self.g.clone(), gg);
        let fake = Tensor::cat(vec![painted.detach(), mask.clone()], 1);
        let loss_d = (lsgan(self.d.forward(Tensor::cat(vec![real, mask], 1)), 1.0) + lsgan(self.d.forward(fake), 0.0)) * 0.5;
        let vd = to_host(loss_d.clone())?[0];
        if !vd.is_finite() {
            bail!("painter discriminator loss became non-finite ({vd}); lower --lr");
        }
        let mut grads = loss_d.backward();
        let gd = GradientsParams::from_module(&mut grads, &self.d);
        self.d = self.opt_d.step(lr, self.d.clone(), gd);
        Ok(StepLosses { generator: vals[0], cycle: vals[1], discriminator: vd })
    }

    /// The checkpoint set; the generator under the CycleGAN's A->B name, so that
    /// `load_generator` reads either kind of run.
    pub fn checkpoint_files(&self) -> Vec<SetFile<'_>> {
        vec![
            ("g_ab.bpk", Box::new(|p: &Path| save_model(&self.g, p))),
            ("d_b.bpk", Box::new(|p: &Path| save_model(&self.d, p))),
            ("opt_g_ab.bpk", Box::new(|p: &Path| save_optimizer(&self.opt_g, p))),
            ("opt_d_b.bpk", Box::new(|p: &Path| save_optimizer(&self.opt_d, p))),
        ]
    }

    /// What [`Self::checkpoint_files`] wrote.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        self.g = load_model(self.g.clone(), &file(dir, "g_ab.bpk"))?;
        self.d = load_model(self.d.clone(), &file(dir, "d_b.bpk"))?;
        self.opt_g = load_optimizer(std::mem::replace(&mut self.opt_g, adam().init()), &file(dir, "opt_g_ab.bpk"))?;
        self.opt_d = load_optimizer(std::mem::replace(&mut self.opt_d, adam().init()), &file(dir, "opt_d_b.bpk"))?;
        Ok(())
    }
}

/// The generator's output inside the hole, the input's context outside it, [B,1,H,W].
pub fn composite(g: &Generator, input: Tensor<4>, hole: Tensor<4>) -> Tensor<4> {
    let context = input.clone().narrow(1, 0, 1);
    let out = g.forward(input);
    out * hole.clone() + context * hole.neg().add_scalar(1.0)
}

/// One training example: a crop (in [-1, 1]) and its experts' mean mask (in [0, 1]), under a
/// random flip or quarter turn when `rng` is given, as (input, real, hole) host buffers.
fn example<R: Rng>(image: &[f32], soft: &[f32], h: usize, w: usize, rng: Option<&mut R>) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (mut img, mut m) = (image.to_vec(), soft.to_vec());
    if let Some(rng) = rng {
        let sym = Symmetry::random(rng, h == w);
        sym.apply(image, h, w, &mut img);
        sym.apply(soft, h, w, &mut m);
    }
    let hole = hole(&m, h, w);
    (input(&img, &m, &hole, h, w), img, hole)
}

fn planes(v: Vec<f32>, c: usize, h: usize, w: usize, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(v, [1, c, h, w]), device)
}

/// The painter's epochs from `state.epoch` to `cfg.epochs`: one step per crop that some expert
/// marked (domain A holds the mean masks in [-1, 1], B the crops), in an order drawn from the
/// epoch's seed; each epoch committed as a checkpoint set, with a figure.
pub fn train_epochs(req: &GanRequest, cfg: &GanTrainConfig, state: &mut GanState, paths: &RunPaths, device: &Device) -> Result<()> {
    let (h, w) = (req.a.height, req.a.width);
    let soft: Vec<Vec<f32>> = req.a.images.iter().map(|m| m.iter().map(|v| (v + 1.0) / 2.0).collect()).collect();
    let lesions: Vec<usize> = (0..soft.len()).filter(|&i| soft[i].iter().any(|&v| v > 0.0)).collect();
    if lesions.is_empty() {
        bail!("the painter learns from crops with a lesion, but no expert marked anything in these {} crops", soft.len());
    }
    let mut t = PainterStepper::new(&cfg.net, cfg.lambda_l1, device);
    if state.epoch > 0 {
        t.load(&req.out)?;
    }
    for epoch in state.epoch + 1..=cfg.epochs {
        let lr = cfg.lr_at(epoch);
        let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(31).wrapping_add(epoch as u64));
        let mut order = lesions.clone();
        order.shuffle(&mut rng);
        let pb = crate::progress::bar(order.len() as u64, req.quiet, &format!("painter epoch {epoch}/{}", cfg.epochs));
        let mut sums = [0f64; 3];
        for &i in &order {
            let (x, real, hole) = example(&req.b.images[i], &soft[i], h, w, Some(&mut rng));
            let l = t
                .step(planes(x, 2, h, w, device), planes(real, 1, h, w, device), planes(hole, 1, h, w, device), lr)
                .with_context(|| format!("epoch {epoch}"))?;
            for (s, v) in sums.iter_mut().zip([l.generator, l.cycle, l.discriminator]) {
                *s += v as f64;
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        let [g, l1, d] = sums.map(|s| s / order.len() as f64);
        figure(&t.g, req, &soft, &lesions, &req.out.join(format!("figures/epoch_{epoch:03}.png")), epoch)?;
        state.commit_epoch(epoch, [l1, g, d], paths, t.checkpoint_files())?;
        if !req.quiet {
            eprintln!("painter epoch {epoch:>3}: G {g:.3} hole L1 {l1:.4} D {d:.3} lr {lr:.2e}");
        }
    }
    Ok(())
}

/// The input, the mask, the painted crop and the real one, for four crops with a lesion.
fn figure(g: &Generator, req: &GanRequest, soft: &[Vec<f32>], lesions: &[usize], path: &Path, epoch: usize) -> Result<()> {
    let (h, w) = (req.a.height, req.a.width);
    let g = g.valid();
    let inner = g.devices().into_iter().next().unwrap_or_else(Device::flex);
    let to01 = |v: &[f32]| v.iter().map(|x| (x + 1.0) / 2.0).collect::<Vec<f32>>();
    let mut rows: Vec<(String, Vec<Vec<f32>>)> = ["input", "mask", "painted", "real"].iter().map(|s| (s.to_string(), Vec::new())).collect();
    for &i in lesions.iter().take(4) {
        let (x, real, hole) = example::<StdRng>(&req.b.images[i], &soft[i], h, w, None);
        let painted = to_host(composite(&g, planes(x.clone(), 2, h, w, &inner), planes(hole, 1, h, w, &inner)))?;
        for (r, img) in [to01(&x[..h * w]), soft[i].clone(), to01(&painted), to01(&real)].into_iter().enumerate() {
            rows[r].1.push(img);
        }
    }
    figures::save_png(&figures::image_rows(&rows, h, w, &format!("lesion painter epoch {epoch}")), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hole_covers_every_mark_with_a_margin_and_is_filled_by_its_ring() {
        let (h, w) = (16, 16);
        let mut soft = vec![0f32; h * w];
        soft[8 * w + 8] = 0.25;
        let hole = hole(&soft, h, w);
        let side = 2 * HOLE_MARGIN + 1;
        assert_eq!(hole.iter().filter(|&&v| v > 0.0).count(), side * side);
        assert_eq!(hole[(8 - HOLE_MARGIN) * w + 8 - HOLE_MARGIN], 1.0);
        assert_eq!(hole[(8 - HOLE_MARGIN - 1) * w + 8], 0.0);
        // A bright lesion in a dark crop whose ring is 0.2: the hole becomes 0.2.
        let img: Vec<f32> = (0..h * w).map(|j| if hole[j] > 0.0 { 0.9 } else { 0.2 }).collect();
        let x = input(&img, &soft, &hole, h, w);
        assert_eq!(x.len(), 2 * h * w);
        assert!(x[..h * w].iter().all(|&v| (v - 0.2).abs() < 1e-6));
        assert_eq!((x[h * w + 8 * w + 8], x[h * w]), (-0.5, -1.0));
    }
}
