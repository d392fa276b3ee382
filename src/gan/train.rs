//! CycleGAN training (Zhu et al. 2017): LSGAN losses, cycle L1 (lambda 10), identity
//! (0.5 lambda), image pools of 50, Adam 2e-4 with betas (0.5, 0.999), constant then linear
//! decay to zero. Checkpoints every epoch, atomically; `--resume` continues.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::networks::{Discriminator, GanConfig, Generator, l1, lsgan};
use super::pool::ImagePool;
use crate::data::Dataset;
use crate::data::preprocess::Preprocess;
use crate::eval::metrics;
use crate::fsio;
use crate::model::to_host;
use crate::train::checkpoint::{SetFile, load_model, load_optimizer, save_model, save_optimizer};

pub use super::generate::{deform_masks, generate, side_by_side};
pub use super::run::{GanOutcome, GanOverrides, GanRequest, GanSources, GanState, run_gan, train_gan};

/// What the two domains are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GanMode {
    /// A = the annotators' mean mask (a soft map), B = the CT crop, from one dataset.
    Mask2ct,
    /// A and B = the images of two datasets (e.g. two scanners).
    Unpaired,
    /// A lesion painter, trained on pairs from one dataset: given a real crop with a lesion's
    /// place erased and the experts' mean mask there, paint the lesion (`gan/painter.rs`).
    Painter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GanTrainConfig {
    pub mode: GanMode,
    pub epochs: usize,
    /// The last this-many epochs decay the learning rate linearly to zero.
    pub decay_epochs: usize,
    pub lr: f64,
    pub lambda_cycle: f32,
    pub lambda_identity: f32,
    /// The painter's weight of the L1 on the painted pixels beside the adversarial loss.
    pub lambda_l1: f32,
    pub pool_size: usize,
    pub seed: u64,
    pub net: GanConfig,
    /// The crops' size (0: a run from before it was recorded).
    pub height: usize,
    pub width: usize,
    /// The CT domain's preprocessing record (domain B's); unset: unknown.
    pub preprocess: Option<Preprocess>,
}

impl Default for GanTrainConfig {
    fn default() -> Self {
        Self {
            mode: GanMode::Mask2ct,
            epochs: 20,
            decay_epochs: 10,
            lr: 2e-4,
            lambda_cycle: 10.0,
            lambda_identity: 0.5,
            lambda_l1: 10.0,
            pool_size: 50,
            seed: 0,
            net: GanConfig::default(),
            height: 0,
            width: 0,
            preprocess: None,
        }
    }
}

impl GanTrainConfig {
    /// The paper's schedule: constant, then linear decay over `decay_epochs` (1-based epoch).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let start = self.epochs.saturating_sub(self.decay_epochs);
        if epoch <= start { self.lr } else { self.lr * (1.0 - (epoch - start) as f64 / (self.decay_epochs + 1) as f64) }
    }
}

/// Images in [-1, 1], one channel, all H x W.
#[derive(Debug, Clone)]
pub struct Domain {
    pub images: Vec<Vec<f32>>,
    pub height: usize,
    pub width: usize,
}

impl Domain {
    pub fn from_images(ds: &Dataset, source: &std::path::Path) -> anyhow::Result<Self> {
        if ds.channels() != 1 {
            anyhow::bail!(
                "{}: the CycleGAN translates one-channel crops, but these have {} channels (stacked windows or \
                 neighbouring slices); import the data with one window and no --context-slices for it",
                source.display(),
                ds.channels()
            );
        }
        let hw = ds.height() * ds.width();
        let flat = ds.images.as_standard_layout();
        let flat = flat.as_slice().expect("standard layout");
        Ok(Self {
            images: flat.chunks(hw).map(|c| c.iter().map(|v| v * 2.0 - 1.0).collect()).collect(),
            height: ds.height(),
            width: ds.width(),
        })
    }

    /// The annotators' mean mask per example, as a soft map in [-1, 1].
    pub fn from_mean_masks(ds: &Dataset) -> Self {
        let images = mean_masks(ds, ds.len()).into_iter().map(|m| m.into_iter().map(|v| v * 2.0 - 1.0).collect()).collect();
        Self { images, height: ds.height(), width: ds.width() }
    }
}

/// The annotators' mean mask, in [0, 1], of each of the first `n` examples.
pub(super) fn mean_masks(ds: &Dataset, n: usize) -> Vec<Vec<f32>> {
    let (a, hw) = (ds.annotators(), ds.height() * ds.width());
    let masks = ds.masks.as_standard_layout();
    let m = masks.as_slice().expect("standard layout");
    m.chunks(a * hw).take(n).map(|example| metrics::frequency(&example.chunks(hw).collect::<Vec<_>>())).collect()
}

/// The four networks.
pub struct CycleGan {
    pub g_ab: Generator,
    pub g_ba: Generator,
    pub d_a: Discriminator,
    pub d_b: Discriminator,
}

impl CycleGan {
    pub fn new(c: &GanConfig, device: &Device) -> Self {
        Self {
            g_ab: Generator::new(c.channels_a, c.channels_b, c.base, c.residual_blocks, device),
            g_ba: Generator::new(c.channels_b, c.channels_a, c.base, c.residual_blocks, device),
            d_a: Discriminator::new(c.channels_a, c.base, device),
            d_b: Discriminator::new(c.channels_b, c.base, device),
        }
    }

    /// Sizes both the generators and the discriminators can train on.
    pub fn check_size(h: usize, w: usize) -> Result<()> {
        Generator::check_size(h, w)?;
        Discriminator::check_size(h, w)
    }
}

/// The paper's optimizer. burn keeps betas in the optimizer, not in its saved state, so a
/// resumed run must build it the same way.
pub(super) fn adam() -> AdamConfig {
    AdamConfig::new().with_beta_1(0.5).with_beta_2(0.999)
}

/// One iteration's losses (generator total, cycle L1 sum, discriminator).
#[derive(Debug, Clone, Copy)]
pub struct StepLosses {
    pub generator: f32,
    pub cycle: f32,
    pub discriminator: f32,
}

/// The four networks with their Adam states and fake pools: one CycleGAN iteration at a time.
/// Training and `apunet gan bench` run this same step. The pools live for the whole run, as in
/// the paper's code; they are not checkpointed, so a resumed run refills them.
pub struct GanStepper {
    pub net: CycleGan,
    opt_g_ab: ModuleOptimizer,
    opt_g_ba: ModuleOptimizer,
    opt_d_a: ModuleOptimizer,
    opt_d_b: ModuleOptimizer,
    pool_a: ImagePool<Vec<f32>>,
    pool_b: ImagePool<Vec<f32>>,
    lambda_cycle: f32,
    lambda_identity: f32,
}

impl GanStepper {
    /// `device` must be an autodiff device.
    pub fn new(cfg: &GanTrainConfig, device: &Device) -> Self {
        Self {
            net: CycleGan::new(&cfg.net, device),
            opt_g_ab: adam().init(),
            opt_g_ba: adam().init(),
            opt_d_a: adam().init(),
            opt_d_b: adam().init(),
            pool_a: ImagePool::new(cfg.pool_size),
            pool_b: ImagePool::new(cfg.pool_size),
            lambda_cycle: cfg.lambda_cycle,
            lambda_identity: cfg.lambda_identity * cfg.lambda_cycle,
        }
    }

    /// Generators first (fool both discriminators, close both cycles, keep identities), then
    /// the discriminators on real images vs fakes from the pools.
    pub fn step<R: Rng>(&mut self, ra: Tensor<4>, rb: Tensor<4>, lr: f64, rng: &mut R) -> Result<StepLosses> {
        let net = &mut self.net;
        let [_, _, h, w] = ra.dims();
        let device = ra.device();
        let fake_b = net.g_ab.forward(ra.clone());
        let fake_a = net.g_ba.forward(rb.clone());
        let cyc = l1(net.g_ba.forward(fake_b.clone()), ra.clone()) + l1(net.g_ab.forward(fake_a.clone()), rb.clone());
        let idt = l1(net.g_ab.forward(rb.clone()), rb.clone()) + l1(net.g_ba.forward(ra.clone()), ra.clone());
        let adv = lsgan(net.d_b.forward(fake_b.clone()), 1.0) + lsgan(net.d_a.forward(fake_a.clone()), 1.0);
        let loss_g = adv + cyc.clone() * self.lambda_cycle + idt * self.lambda_identity;
        let vals = to_host(Tensor::cat(vec![loss_g.clone(), cyc], 0))?;
        if vals.iter().any(|v| !v.is_finite()) {
            bail!("CycleGAN generator loss became non-finite ({vals:?}); lower --lr");
        }
        let mut grads = loss_g.backward();
        let (gab, gba) = (GradientsParams::from_module(&mut grads, &net.g_ab), GradientsParams::from_module(&mut grads, &net.g_ba));
        net.g_ab = self.opt_g_ab.step(lr, net.g_ab.clone(), gab);
        net.g_ba = self.opt_g_ba.step(lr, net.g_ba.clone(), gba);
        let fb = self.pool_b.query(to_host(fake_b)?, rng);
        let fa = self.pool_a.query(to_host(fake_a)?, rng);
        let loss_d = (lsgan(net.d_b.forward(rb), 1.0) + lsgan(net.d_b.forward(tensor(&fb, h, w, &device)), 0.0)) * 0.5
            + (lsgan(net.d_a.forward(ra), 1.0) + lsgan(net.d_a.forward(tensor(&fa, h, w, &device)), 0.0)) * 0.5;
        let vd = to_host(loss_d.clone())?[0];
        if !vd.is_finite() {
            bail!("CycleGAN discriminator loss became non-finite ({vd}); lower --lr");
        }
        let mut grads = loss_d.backward();
        let (da, db) = (GradientsParams::from_module(&mut grads, &net.d_a), GradientsParams::from_module(&mut grads, &net.d_b));
        net.d_a = self.opt_d_a.step(lr, net.d_a.clone(), da);
        net.d_b = self.opt_d_b.step(lr, net.d_b.clone(), db);
        Ok(StepLosses { generator: vals[0], cycle: vals[1], discriminator: vd })
    }

    /// The checkpoint set: the four networks, their optimizer states and the fake pools (so a
    /// resumed run continues bit for bit), each a file in GAN_DIR/checkpoints.
    pub fn checkpoint_files(&self) -> Vec<SetFile<'_>> {
        vec![
            ("g_ab.bpk", Box::new(|p: &Path| save_model(&self.net.g_ab, p))),
            ("g_ba.bpk", Box::new(|p: &Path| save_model(&self.net.g_ba, p))),
            ("d_a.bpk", Box::new(|p: &Path| save_model(&self.net.d_a, p))),
            ("d_b.bpk", Box::new(|p: &Path| save_model(&self.net.d_b, p))),
            ("opt_g_ab.bpk", Box::new(|p: &Path| save_optimizer(&self.opt_g_ab, p))),
            ("opt_g_ba.bpk", Box::new(|p: &Path| save_optimizer(&self.opt_g_ba, p))),
            ("opt_d_a.bpk", Box::new(|p: &Path| save_optimizer(&self.opt_d_a, p))),
            ("opt_d_b.bpk", Box::new(|p: &Path| save_optimizer(&self.opt_d_b, p))),
            ("pools.bin", Box::new(|p: &Path| fsio::write_atomic(p, &pools_bytes(&[self.pool_a.images(), self.pool_b.images()])))),
        ]
    }

    /// What [`Self::checkpoint_files`] wrote.
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let net = &mut self.net;
        net.g_ab = load_model(net.g_ab.clone(), &file(dir, "g_ab.bpk"))?;
        net.g_ba = load_model(net.g_ba.clone(), &file(dir, "g_ba.bpk"))?;
        net.d_a = load_model(net.d_a.clone(), &file(dir, "d_a.bpk"))?;
        net.d_b = load_model(net.d_b.clone(), &file(dir, "d_b.bpk"))?;
        // The moments come from the files; the placeholder left behind is never used.
        self.opt_g_ab = load_optimizer(std::mem::replace(&mut self.opt_g_ab, adam().init()), &file(dir, "opt_g_ab.bpk"))?;
        self.opt_g_ba = load_optimizer(std::mem::replace(&mut self.opt_g_ba, adam().init()), &file(dir, "opt_g_ba.bpk"))?;
        self.opt_d_a = load_optimizer(std::mem::replace(&mut self.opt_d_a, adam().init()), &file(dir, "opt_d_a.bpk"))?;
        self.opt_d_b = load_optimizer(std::mem::replace(&mut self.opt_d_b, adam().init()), &file(dir, "opt_d_b.bpk"))?;
        let pools = file(dir, "pools.bin");
        // Runs from before the pools were saved refill them.
        if pools.exists() {
            let bytes = std::fs::read(&pools).with_context(|| format!("reading {}", pools.display()))?;
            let [a, b] = pools_from_bytes(&bytes).with_context(|| format!("{} is damaged", pools.display()))?;
            self.pool_a = ImagePool::from_images(self.pool_a.capacity(), a);
            self.pool_b = ImagePool::from_images(self.pool_b.capacity(), b);
        }
        Ok(())
    }
}

/// Two pools of images as bytes: per pool its image count and length (u64), then the floats,
/// all little-endian.
fn pools_bytes(pools: &[&[Vec<f32>]; 2]) -> Vec<u8> {
    let mut out = Vec::new();
    for pool in pools {
        out.extend((pool.len() as u64).to_le_bytes());
        out.extend((pool.first().map_or(0, Vec::len) as u64).to_le_bytes());
        for img in pool.iter() {
            out.extend(img.iter().flat_map(|v| v.to_le_bytes()));
        }
    }
    out
}

fn pools_from_bytes(mut b: &[u8]) -> Result<[Vec<Vec<f32>>; 2]> {
    let mut take = |n: usize| -> Result<&[u8]> {
        if b.len() < n {
            bail!("it ends early");
        }
        let (head, rest) = b.split_at(n);
        b = rest;
        Ok(head)
    };
    let mut read_pool = || -> Result<Vec<Vec<f32>>> {
        let count = u64::from_le_bytes(take(8)?.try_into()?) as usize;
        let len = u64::from_le_bytes(take(8)?.try_into()?) as usize;
        let bytes = take(count.checked_mul(len).and_then(|n| n.checked_mul(4)).ok_or_else(|| anyhow::anyhow!("absurd sizes"))?)?;
        let floats: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Ok(floats.chunks(len.max(1)).map(<[f32]>::to_vec).collect())
    };
    let a = read_pool()?;
    let b = read_pool()?;
    Ok([a, b])
}

pub(super) fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join("checkpoints").join(name)
}

/// Loads a trained A->B generator (and its config) from GAN_DIR.
pub fn load_generator(dir: &Path, device: &Device) -> Result<(GanTrainConfig, Generator)> {
    let text = std::fs::read_to_string(dir.join("gan.toml")).with_context(|| format!("{} is not a GAN run directory", dir.display()))?;
    let cfg: GanTrainConfig = toml::from_str(&text).with_context(|| format!("invalid {}/gan.toml", dir.display()))?;
    let c = &cfg.net;
    // The painter's generator reads the holed crop and the mask.
    let c_in = if cfg.mode == GanMode::Painter { 2 } else { c.channels_a };
    let g = load_model(Generator::new(c_in, c.channels_b, c.base, c.residual_blocks, device), &file(dir, "g_ab.bpk"))?;
    Ok((cfg, g))
}

pub(super) fn tensor(img: &[f32], h: usize, w: usize, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(img.to_vec(), [1, 1, h, w]), device)
}
