//! CycleGAN training (Zhu et al. 2017): LSGAN losses, cycle L1 (lambda 10), identity
//! (0.5 lambda), image pools of 50, Adam 2e-4 with betas (0.5, 0.999), constant then linear
//! decay to zero. Checkpoints every epoch, atomically; `--resume` continues.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::networks::{Discriminator, GanConfig, Generator, l1, lsgan};
use super::pool::ImagePool;
use crate::data::Dataset;
use crate::eval::{figures, metrics};
use crate::fsio;
use crate::model::to_host;
use crate::train::checkpoint::{load_model, load_optimizer, save_model, save_optimizer};

pub use super::generate::{deform_masks, generate, side_by_side};

/// What the two domains are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GanMode {
    /// A = the annotators' mean mask (a soft map), B = the CT crop, from one dataset.
    Mask2ct,
    /// A and B = the images of two datasets (e.g. two scanners).
    Unpaired,
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
    pub pool_size: usize,
    pub seed: u64,
    pub net: GanConfig,
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
            pool_size: 50,
            seed: 0,
            net: GanConfig::default(),
        }
    }
}

impl GanTrainConfig {
    /// The paper's schedule: constant, then linear decay over `decay_epochs` (1-based epoch).
    pub fn lr_at(&self, epoch: usize) -> f64 {
        let start = self.epochs.saturating_sub(self.decay_epochs);
        if epoch <= start {
            self.lr
        } else {
            self.lr * (1.0 - (epoch - start) as f64 / (self.decay_epochs + 1) as f64)
        }
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
    pub fn from_images(ds: &Dataset) -> Self {
        let hw = ds.height() * ds.width();
        let flat = ds.images.as_standard_layout();
        let flat = flat.as_slice().expect("standard layout");
        Self { images: flat.chunks(hw).map(|c| c.iter().map(|v| v * 2.0 - 1.0).collect()).collect(), height: ds.height(), width: ds.width() }
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

pub struct GanRequest {
    pub a: Domain,
    pub b: Domain,
    pub out: PathBuf,
    pub config: GanTrainConfig,
    pub device: Device,
    pub resume: bool,
    pub quiet: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GanState {
    pub epoch: usize,
    /// Mean cycle loss per finished epoch.
    pub cycle: Vec<f64>,
    pub generator: Vec<f64>,
    pub discriminator: Vec<f64>,
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
fn adam() -> AdamConfig {
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

    /// Networks and optimizer states into GAN_DIR/checkpoints, each file atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        save_model(&self.net.g_ab, &file(dir, "g_ab.bpk"))?;
        save_model(&self.net.g_ba, &file(dir, "g_ba.bpk"))?;
        save_model(&self.net.d_a, &file(dir, "d_a.bpk"))?;
        save_model(&self.net.d_b, &file(dir, "d_b.bpk"))?;
        save_optimizer(&self.opt_g_ab, &file(dir, "opt_g_ab.bpk"))?;
        save_optimizer(&self.opt_g_ba, &file(dir, "opt_g_ba.bpk"))?;
        save_optimizer(&self.opt_d_a, &file(dir, "opt_d_a.bpk"))?;
        save_optimizer(&self.opt_d_b, &file(dir, "opt_d_b.bpk"))
    }

    fn load(&mut self, dir: &Path) -> Result<()> {
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
        Ok(())
    }
}

fn file(dir: &Path, name: &str) -> PathBuf {
    dir.join("checkpoints").join(name)
}

/// Loads a trained A->B generator (and its config) from GAN_DIR.
pub fn load_generator(dir: &Path, device: &Device) -> Result<(GanTrainConfig, Generator)> {
    let text = std::fs::read_to_string(dir.join("gan.toml")).with_context(|| format!("{} is not a GAN run directory", dir.display()))?;
    let cfg: GanTrainConfig = toml::from_str(&text).with_context(|| format!("invalid {}/gan.toml", dir.display()))?;
    let c = &cfg.net;
    let g = load_model(Generator::new(c.channels_a, c.channels_b, c.base, c.residual_blocks, device), &file(dir, "g_ab.bpk"))?;
    Ok((cfg, g))
}

pub(super) fn tensor(img: &[f32], h: usize, w: usize, device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(img.to_vec(), [1, 1, h, w]), device)
}

pub fn train_gan(req: GanRequest) -> Result<GanState> {
    let (a, b) = (&req.a, &req.b);
    if a.images.is_empty() || b.images.is_empty() {
        bail!("both domains need images (A has {}, B has {})", a.images.len(), b.images.len());
    }
    if (a.height, a.width) != (b.height, b.width) {
        bail!("domain A is {}x{} but domain B is {}x{}; crop them to one size", a.height, a.width, b.height, b.width);
    }
    let (h, w) = (a.height, a.width);
    CycleGan::check_size(h, w)?;
    let mut cfg = req.config;
    let mut state = GanState::default();
    if req.resume {
        let text = std::fs::read_to_string(req.out.join("gan.toml")).with_context(|| format!("--resume: {} holds no GAN run", req.out.display()))?;
        let saved: GanTrainConfig = toml::from_str(&text)?;
        let epochs = cfg.epochs;
        cfg = saved;
        cfg.epochs = epochs;
        let st = std::fs::read_to_string(file(&req.out, "state.json"))?;
        state = serde_json::from_str(&st)?;
    }
    if cfg.net.channels_a != 1 || cfg.net.channels_b != 1 {
        bail!("apunet's domains are single-channel CT and masks; got channels {} and {}", cfg.net.channels_a, cfg.net.channels_b);
    }
    std::fs::create_dir_all(req.out.join("checkpoints"))?;
    fsio::write_atomic(&req.out.join("gan.toml"), toml::to_string_pretty(&cfg)?.as_bytes())?;
    let device = req.device.clone().autodiff();
    device.seed(cfg.seed);
    let mut t = GanStepper::new(&cfg, &device);
    if state.epoch > 0 {
        t.load(&req.out)?;
    }
    for epoch in state.epoch + 1..=cfg.epochs {
        let lr = cfg.lr_at(epoch);
        let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(31).wrapping_add(epoch as u64));
        let steps = a.images.len().max(b.images.len());
        let mut ia: Vec<usize> = (0..a.images.len()).collect();
        let mut ib: Vec<usize> = (0..b.images.len()).collect();
        ia.shuffle(&mut rng);
        ib.shuffle(&mut rng);
        let pb = if req.quiet { ProgressBar::hidden() } else { ProgressBar::new(steps as u64) };
        pb.set_style(ProgressStyle::with_template("gan epoch {prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()));
        pb.set_prefix(format!("{epoch}/{}", cfg.epochs));
        let (mut sum_cyc, mut sum_g, mut sum_d) = (0f64, 0f64, 0f64);
        for s in 0..steps {
            let ra = tensor(&a.images[ia[s % ia.len()]], h, w, &device);
            let rb = tensor(&b.images[ib[s % ib.len()]], h, w, &device);
            let l = t.step(ra, rb, lr, &mut rng).with_context(|| format!("epoch {epoch}"))?;
            sum_g += l.generator as f64;
            sum_cyc += l.cycle as f64;
            sum_d += l.discriminator as f64;
            pb.inc(1);
            pb.set_message(format!("G {:.3} cycle {:.3} D {:.3}", sum_g / (s + 1) as f64, sum_cyc / (s + 1) as f64, sum_d / (s + 1) as f64));
        }
        let net = &t.net;
        pb.finish_and_clear();
        state.cycle.push(sum_cyc / steps as f64);
        state.generator.push(sum_g / steps as f64);
        state.discriminator.push(sum_d / steps as f64);
        state.epoch = epoch;
        t.save(&req.out)?;
        fsio::write_atomic(&file(&req.out, "state.json"), serde_json::to_string_pretty(&state)?.as_bytes())?;
        figure(net, a, b, &req.out.join(format!("figures/epoch_{epoch:03}.png")), epoch)?;
        if !req.quiet {
            let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
            eprintln!(
                "gan epoch {epoch:>3}: G {:.3} cycle {:.4} D {:.3} lr {lr:.2e}",
                last(&state.generator),
                last(&state.cycle),
                last(&state.discriminator)
            );
        }
    }
    Ok(state)
}

/// Real A, fake B, reconstructed A, and the other way, for four examples.
fn figure(net: &CycleGan, a: &Domain, b: &Domain, path: &Path, epoch: usize) -> Result<()> {
    let (h, w) = (a.height, a.width);
    let g_ab = net.g_ab.valid();
    let g_ba = net.g_ba.valid();
    let inner = net_device(&g_ab);
    let k = 4.min(a.images.len()).min(b.images.len());
    let to01 = |v: Vec<f32>| v.into_iter().map(|x| (x + 1.0) / 2.0).collect::<Vec<f32>>();
    let run = |g: &Generator, img: &[f32]| -> Result<Vec<f32>> { to_host(g.forward(tensor(img, h, w, &inner))) };
    let mut rows: Vec<(String, Vec<Vec<f32>>)> = ["real A", "fake B", "rec A", "real B", "fake A", "rec B"].iter().map(|s| (s.to_string(), Vec::new())).collect();
    for i in 0..k {
        let fb = run(&g_ab, &a.images[i])?;
        let ra = run(&g_ba, &fb)?;
        let fa = run(&g_ba, &b.images[i])?;
        let rb = run(&g_ab, &fa)?;
        for (r, img) in [a.images[i].clone(), fb, ra, b.images[i].clone(), fa, rb].into_iter().enumerate() {
            rows[r].1.push(to01(img));
        }
    }
    figures::save_png(&figures::image_rows(&rows, h, w, &format!("CycleGAN epoch {epoch}")), path)
}

fn net_device(g: &Generator) -> Device {
    g.devices().into_iter().next().unwrap_or_else(Device::flex)
}
