//! The training loop: posterior-sampled ELBO steps, a validation pass with GED each epoch,
//! metrics.csv, figures, atomic checkpoints and resume.

pub mod checkpoint;
pub mod config;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::{AdamConfig, GradientsParams};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::prelude::*;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand_distr::{Distribution, StandardNormal};

pub use checkpoint::{RunPaths, TrainState, Which, load_run};
pub use config::{DataConfig, RunConfig, Select, TrainConfig};

use crate::data::{AnnotatorChoice, Dataset, batch, split};
use crate::eval::{figures, metrics};
use crate::fsio;
use crate::inference;
use crate::model::{ProbUNet, elbo_loss, to_host};

/// One epoch's line in metrics.csv.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub loss: f64,
    pub reconstruction: f64,
    pub kl: f64,
    pub val_loss: f64,
    pub val_reconstruction: f64,
    pub val_kl: f64,
    pub val_ged: f64,
    pub images_per_s: f64,
    pub skipped_steps: usize,
    pub beta: f32,
    pub seconds: f64,
}

const CSV_HEADER: &str = "epoch,loss,reconstruction,kl,val_loss,val_reconstruction,val_kl,val_ged,images_per_s,skipped_steps,beta,seconds";

impl EpochMetrics {
    fn csv(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3},{},{},{:.2}",
            self.epoch,
            self.loss,
            self.reconstruction,
            self.kl,
            self.val_loss,
            self.val_reconstruction,
            self.val_kl,
            self.val_ged,
            self.images_per_s,
            self.skipped_steps,
            self.beta,
            self.seconds
        )
    }
}

/// How a training run is asked for.
pub struct TrainRequest {
    pub data: PathBuf,
    pub out: PathBuf,
    pub config: RunConfig,
    pub device: Device,
    pub resume: bool,
    pub quiet: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub history: Vec<EpochMetrics>,
    pub best_epoch: usize,
    pub skipped_steps: usize,
}

fn epoch_rng(seed: u64, epoch: usize, stream: u64) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(6364136223846793005).wrapping_add((epoch as u64) << 8 | stream))
}

fn normal(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// Trains (or resumes) a run in `req.out`.
pub fn train(req: TrainRequest) -> Result<TrainSummary> {
    let paths = RunPaths::new(&req.out);
    let mut cfg = req.config;
    let mut state = TrainState::default();
    if req.resume {
        let saved = RunConfig::load(&paths.config())
            .with_context(|| format!("--resume: {} holds no run to resume", req.out.display()))?;
        // Everything comes from the run except the total epoch count to reach.
        let epochs = cfg.train.epochs;
        cfg = saved;
        cfg.train.epochs = epochs;
        if paths.state().exists() {
            state = checkpoint::load_state(&paths.state())?;
        }
    }
    cfg.validate()?;
    let data = Dataset::load(&req.data)?;
    cfg.model.check_size(data.height(), data.width())?;
    if let Some(p) = cfg.train.patch {
        if p > data.height() || p > data.width() {
            bail!("--patch {p} is larger than the {}x{} crops in {}", data.height(), data.width(), req.data.display());
        }
        cfg.model.check_size(p, p).context("--patch")?;
    }
    cfg.data.height = data.height();
    cfg.data.width = data.width();
    if let Some(p) = &data.preprocess {
        cfg.data.preprocess = p.clone();
    }
    if let AnnotatorChoice::Fixed(k) = cfg.train.annotator
        && k >= data.annotators()
    {
        bail!("annotator {k} requested but {} has {} annotators", req.data.display(), data.annotators());
    }
    let tc = cfg.train.clone();
    let sp = split::split_by_series(&data.series, tc.val_fraction, tc.seed)?;
    // Synthetic examples never validate.
    let val_idx: Vec<usize> = sp.val.iter().copied().filter(|&i| !data.synthetic[i]).collect();
    let train_idx = sp.train.clone();
    // Extra (synthetic) examples sit after the real ones and only ever fill training batches.
    let (data, extra_idx) = match &tc.extra {
        Some(path) => {
            let extra = Dataset::load(Path::new(path))?;
            let first = data.len();
            let all = data.append_synthetic(&extra, path)?;
            (all, (first..first + extra.len()).collect::<Vec<_>>())
        }
        None => (data, Vec::new()),
    };
    if train_idx.is_empty() {
        bail!("no training examples left after the split");
    }
    std::fs::create_dir_all(req.out.join("checkpoints"))
        .with_context(|| format!("creating run directory {}", req.out.display()))?;
    cfg.save(&paths.config())?;
    state.data = req.data.display().to_string();

    let device = req.device.clone().autodiff();
    device.seed(tc.seed);
    let mut model = ProbUNet::new(&cfg.model, &device);
    let mut adam = AdamConfig::new();
    if let Some(wd) = tc.weight_decay {
        adam = adam.with_weight_decay(Some(WeightDecayConfig::new(wd)));
    }
    if let Some(clip) = tc.grad_clip_norm {
        adam = adam.with_grad_clipping(Some(GradientClippingConfig::Norm(clip)));
    }
    let mut optim = adam.init();
    let mut history = read_metrics(&paths.metrics()).unwrap_or_default();
    if state.epoch > 0 {
        model = checkpoint::load_model(model, &paths.last_model())?;
        if paths.optimizer().exists() {
            optim = checkpoint::load_optimizer(optim, &paths.optimizer())?;
        }
        history.retain(|m| m.epoch <= state.epoch);
        tracing::info!("resuming {} after epoch {}", req.out.display(), state.epoch);
    } else {
        history.clear();
    }
    write_metrics(&paths.metrics(), &history)?;
    let latent = cfg.model.latent_dim;
    let mut consecutive_bad = 0usize;
    let patch = tc.patch.map(|size| batch::PatchSampling { size, foreground: tc.patch_foreground });

    for epoch in state.epoch + 1..=tc.epochs {
        let started = Instant::now();
        let beta = tc.beta_at(epoch);
        let mut rng = epoch_rng(tc.seed, epoch, 1);
        let mut order = train_idx.clone();
        order.shuffle(&mut rng);
        let n_extra = if extra_idx.is_empty() {
            0
        } else {
            ((tc.batch_size as f64 * tc.extra_ratio).round() as usize).min(tc.batch_size - 1)
        };
        let real_per_batch = tc.batch_size - n_extra;
        // Batch norm cannot train on a batch of one: fold a lone last example into the previous batch.
        let mut batches: Vec<Vec<usize>> = order.chunks(real_per_batch).map(<[usize]>::to_vec).collect();
        if batches.len() > 1 && batches.last().is_some_and(|b| b.len() == 1) {
            let last = batches.pop().unwrap_or_default();
            if let Some(prev) = batches.last_mut() {
                prev.extend(last);
            }
        }
        for b in batches.iter_mut() {
            b.extend((0..n_extra).map(|_| extra_idx[rng.gen_range(0..extra_idx.len())]));
        }
        let total: usize = batches.iter().map(Vec::len).sum();
        let pb = progress_bar(total as u64, req.quiet, &format!("epoch {epoch}/{}", tc.epochs));
        let (mut sum, mut rec, mut kl, mut seen, mut skipped) = (0f64, 0f64, 0f64, 0usize, 0usize);
        let step_start = Instant::now();
        for idx in &batches {
            let b = batch::training_patches(&data, idx, tc.annotator, tc.augment, patch, &mut rng, &device)?;
            let eps = Tensor::<2>::from_data(TensorData::new(normal(&mut rng, idx.len() * latent), [idx.len(), latent]), &device);
            let out = model.forward_train(b.images, b.masks.clone(), eps);
            let loss = elbo_loss(&out, b.masks, beta);
            let values = to_host(Tensor::cat(vec![loss.total.clone(), loss.reconstruction, loss.kl], 0))?;
            if values.iter().any(|v| !v.is_finite()) {
                // A non-finite loss never reaches the weights.
                skipped += 1;
                consecutive_bad += 1;
                tracing::warn!("epoch {epoch}: non-finite loss {values:?}, step skipped");
                if consecutive_bad >= tc.max_bad_steps {
                    bail!(
                        "{consecutive_bad} non-finite losses in a row: training diverged. \
                         Lower --lr, set train.grad_clip_norm, or check the data for extreme values"
                    );
                }
                pb.inc(idx.len() as u64);
                continue;
            }
            consecutive_bad = 0;
            let grads = GradientsParams::from_grads(loss.total.backward(), &model);
            model = optim.step(tc.lr, model, grads);
            let n = idx.len();
            sum += values[0] as f64 * n as f64;
            rec += values[1] as f64 * n as f64;
            kl += values[2] as f64 * n as f64;
            seen += n;
            pb.inc(n as u64);
            let ips = seen as f64 / step_start.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!(
                "loss {:.2} rec {:.2} kl {:.3} {:.1} img/s",
                sum / seen as f64,
                rec / seen as f64,
                kl / seen as f64,
                ips
            ));
        }
        pb.finish_and_clear();
        let images_per_s = seen as f64 / step_start.elapsed().as_secs_f64().max(1e-9);
        let seen_f = seen.max(1) as f64;

        let valid = model.valid();
        let inner = req.device.clone();
        let (val_loss, val_rec, val_kl, val_ged) = if val_idx.is_empty() {
            (f64::NAN, f64::NAN, f64::NAN, f64::NAN)
        } else {
            validate(&valid, &data, &val_idx, &tc, latent, beta, &inner)?
        };
        state.skipped_steps += skipped;
        let m = EpochMetrics {
            epoch,
            loss: sum / seen_f,
            reconstruction: rec / seen_f,
            kl: kl / seen_f,
            val_loss,
            val_reconstruction: val_rec,
            val_kl,
            val_ged,
            images_per_s,
            skipped_steps: skipped,
            beta,
            seconds: started.elapsed().as_secs_f64(),
        };
        if epoch % tc.figure_every == 0 || epoch == tc.epochs {
            let fig_idx: Vec<usize> =
                if val_idx.is_empty() { &train_idx } else { &val_idx }.iter().copied().take(tc.figure_images).collect();
            let fig = figure(&valid, &data, &fig_idx, tc.figure_samples, latent, tc.seed, &inner, &format!("epoch {epoch}"))?;
            figures::save_png(&fig, &paths.figure(epoch))?;
        }

        let score = match tc.select {
            Select::Loss if m.val_loss.is_finite() => m.val_loss,
            Select::Ged if m.val_ged.is_finite() => m.val_ged,
            _ => m.loss,
        };
        checkpoint::save_model(&model, &paths.last_model())?;
        checkpoint::save_optimizer(&optim, &paths.optimizer())?;
        if state.best_score.is_none_or(|b| score < b) {
            state.best_score = Some(score);
            state.best_epoch = epoch;
            checkpoint::save_model(&model, &paths.best_model())?;
        }
        history.push(m.clone());
        write_metrics(&paths.metrics(), &history)?;
        state.epoch = epoch;
        checkpoint::save_state(&state, &paths.state())?;
        if !req.quiet {
            eprintln!(
                "epoch {epoch:>3}: loss {:.3} (rec {:.3}, kl {:.3}) | val loss {:.3} ged {:.4} | {:.1} img/s{}",
                m.loss,
                m.reconstruction,
                m.kl,
                m.val_loss,
                m.val_ged,
                m.images_per_s,
                if skipped > 0 { format!(" | {skipped} steps skipped") } else { String::new() }
            );
        }
    }
    Ok(TrainSummary { history, best_epoch: state.best_epoch, skipped_steps: state.skipped_steps })
}

/// Validation loss (posterior, each annotator in turn) and GED of prior samples vs all annotators.
fn validate(
    model: &ProbUNet,
    data: &Dataset,
    idx: &[usize],
    tc: &TrainConfig,
    latent: usize,
    beta: f32,
    device: &Device,
) -> Result<(f64, f64, f64, f64)> {
    let mut rng = epoch_rng(tc.seed, 0, 2);
    let (mut loss, mut rec, mut kl, mut count) = (0f64, 0f64, 0f64, 0usize);
    let a = data.annotators();
    for chunk in idx.chunks(tc.batch_size.max(1)) {
        for k in 0..a {
            let b = batch::training_batch(data, chunk, AnnotatorChoice::Fixed(k), false, &mut rng, device)?;
            let eps = Tensor::<2>::from_data(TensorData::new(normal(&mut rng, chunk.len() * latent), [chunk.len(), latent]), device);
            let out = model.forward_train(b.images, b.masks.clone(), eps);
            let l = elbo_loss(&out, b.masks, beta);
            let v = to_host(Tensor::cat(vec![l.total, l.reconstruction, l.kl], 0))?;
            let n = chunk.len() as f64;
            loss += v[0] as f64 * n;
            rec += v[1] as f64 * n;
            kl += v[2] as f64 * n;
            count += chunk.len();
        }
    }
    let c = count.max(1) as f64;
    let sub = data.subset(idx);
    let samples = inference::sample_images(model, &sub.images, tc.val_samples, latent, tc.seed, tc.batch_size, device, |_| {})?;
    let (h, w) = (data.height(), data.width());
    let hw = h * w;
    let mut ged = 0f64;
    for i in 0..sub.len() {
        let s = samples.masks.index_axis(ndarray::Axis(0), i);
        let s = s.as_slice().expect("standard layout");
        let y = sub.masks.index_axis(ndarray::Axis(0), i);
        let y = y.as_slice().expect("standard layout");
        let ss: Vec<&[u8]> = s.chunks(hw).collect();
        let ys: Vec<&[u8]> = y.chunks(hw).collect();
        ged += metrics::ged_squared(&ss, &ys);
    }
    Ok((loss / c, rec / c, kl / c, ged / sub.len().max(1) as f64))
}

/// The seed's figure for images `idx`: CT, annotators, `n` prior samples.
#[allow(clippy::too_many_arguments)]
pub fn figure(
    model: &ProbUNet,
    data: &Dataset,
    idx: &[usize],
    n: usize,
    latent: usize,
    seed: u64,
    device: &Device,
    title: &str,
) -> Result<image::RgbImage> {
    let sub = data.subset(idx);
    let samples = inference::sample_images(model, &sub.images, n.max(1), latent, seed, 8, device, |_| {})?;
    Ok(render_figure(&sub, &samples.masks, n, title))
}

/// Draws the grid from a dataset and sampled masks [N,n,H,W].
pub fn render_figure(sub: &Dataset, samples: &ndarray::Array4<u8>, n: usize, title: &str) -> image::RgbImage {
    let (h, w) = (sub.height(), sub.width());
    let hw = h * w;
    let images = sub.images.as_standard_layout();
    let masks = sub.masks.as_standard_layout();
    let samples = samples.as_standard_layout();
    let img = images.as_slice().expect("standard layout");
    let msk = masks.as_slice().expect("standard layout");
    let smp = samples.as_slice().expect("standard layout");
    let a = sub.annotators();
    let ns = samples.shape()[1];
    let columns: Vec<figures::Column<'_>> = (0..sub.len())
        .map(|i| figures::Column {
            image: &img[i * hw..(i + 1) * hw],
            labels: (0..a).map(|k| &msk[(i * a + k) * hw..(i * a + k + 1) * hw]).collect(),
            samples: (0..ns.min(n)).map(|s| &smp[(i * ns + s) * hw..(i * ns + s + 1) * hw]).collect(),
            heat: Vec::new(),
        })
        .collect();
    figures::sample_grid(&columns, h, w, title, &figures::GridOptions::default())
}

fn progress_bar(len: u64, quiet: bool, prefix: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

pub fn write_metrics(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for r in rows {
        text.push_str(&r.csv());
        text.push('\n');
    }
    fsio::write_atomic(path, text.as_bytes())
}

pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 12 {
            bail!("{}: malformed line '{line}'", path.display());
        }
        let p = |i: usize| f[i].parse::<f64>().with_context(|| format!("{}: bad number '{}'", path.display(), f[i]));
        out.push(EpochMetrics {
            epoch: f[0].parse()?,
            loss: p(1)?,
            reconstruction: p(2)?,
            kl: p(3)?,
            val_loss: p(4)?,
            val_reconstruction: p(5)?,
            val_kl: p(6)?,
            val_ged: p(7)?,
            images_per_s: p(8)?,
            skipped_steps: f[9].parse()?,
            beta: p(10)? as f32,
            seconds: p(11)?,
        });
    }
    Ok(out)
}
