//! One training epoch: the batch plan and the posterior-sampled ELBO steps.

use std::time::Instant;

use anyhow::{Result, bail};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::config::TrainConfig;
use super::distributed::{self, Collective};
use super::ema::Ema;
use super::history::EpochMetrics;
use super::objective::{GecoState, LossKind, Objective};
use super::{epoch_rng, normal};
use crate::data::augment::Augmentation;
use crate::data::{Dataset, batch};
use crate::model::Segmenter;

/// The epoch's batches of example indices, and the RNG that then drives the steps.
pub fn batches(tc: &TrainConfig, epoch: usize, train_idx: &[usize], extra_idx: &[usize]) -> (Vec<Vec<usize>>, StdRng) {
    let mut rng = epoch_rng(tc.seed, epoch, 1);
    let mut order = train_idx.to_vec();
    order.shuffle(&mut rng);
    let n_extra = if extra_idx.is_empty() { 0 } else { ((tc.batch_size as f64 * tc.extra_ratio).round() as usize).min(tc.batch_size - 1) };
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
    (batches, rng)
}

/// Runs the steps of epochs; counts non-finite losses across epochs.
pub struct Stepper<'a> {
    pub tc: &'a TrainConfig,
    pub consecutive_bad: usize,
    /// No progress bar (every rank but rank 0, or --quiet).
    pub quiet: bool,
    /// Each rank's all-reduce time per epoch, unless the user asked for --quiet.
    pub report_exchange: bool,
    /// GECO's state, carried across epochs and saved with the run.
    pub geco: GecoState,
    /// The ranks sharing each step (one process alone: [`distributed::Alone`]).
    pub comm: &'a dyn Collective,
    /// Seconds this epoch spent exchanging losses and gradients with the other ranks.
    pub exchange_seconds: f64,
    /// How examples are varied, and where pasted lesions come from.
    pub augmentation: Augmentation,
    /// The weights' moving average, kept by rank 0 (the one that validates and saves).
    pub ema: Option<Ema>,
    /// Asked before every step whether to stop.
    pub watch: &'a dyn super::Watch,
}

impl Stepper<'_> {
    /// Trains one epoch over `batches`; the metrics' validation fields are left at zero.
    #[allow(clippy::too_many_arguments)]
    pub fn epoch(
        &mut self,
        mut model: Segmenter,
        optim: &mut ModuleOptimizer,
        data: &Dataset,
        batches: &[Vec<usize>],
        epoch: usize,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<(EpochMetrics, Segmenter)> {
        let tc = self.tc;
        let objective = tc.objective(epoch);
        let patch = tc.patch.map(|size| batch::PatchSampling { size, foreground: tc.patch_foreground });
        let total: usize = batches.iter().map(Vec::len).sum();
        let pb = crate::progress::bar(total as u64, self.quiet, &format!("epoch {epoch}/{}", tc.epochs));
        let (mut sum, mut rec, mut kl, mut seen, mut skipped) = (0f64, 0f64, 0f64, 0usize, 0usize);
        let step_start = Instant::now();
        for (k, idx) in batches.iter().enumerate() {
            if self.watch.stop() {
                return Err(super::Stopped.into());
            }
            let lr = tc.lr_at(epoch, k, batches.len());
            let (trained, values) = self.step(model, optim, lr, &objective, data, idx, patch, rng, device)?;
            model = trained;
            let Some(values) = values else {
                skipped += 1;
                pb.inc(idx.len() as u64);
                continue;
            };
            pb.inc(idx.len() as u64);
            let n = idx.len() as f64;
            sum += values[0] as f64 * n;
            rec += values[1] as f64 * n;
            kl += values[2] as f64 * n;
            seen += idx.len();
            let ips = seen as f64 / step_start.elapsed().as_secs_f64().max(1e-9);
            let s = seen as f64;
            pb.set_message(format!("loss {:.2} rec {:.2} kl {:.3} {ips:.1} img/s", sum / s, rec / s, kl / s));
        }
        pb.finish_and_clear();
        if self.comm.size() > 1 && self.report_exchange {
            let took = step_start.elapsed().as_secs_f64();
            tracing::info!(
                "rank {}, epoch {epoch}: {:.2} s of the {took:.2} s of steps in the all-reduce (waiting for the other ranks included)",
                self.comm.rank(),
                self.exchange_seconds
            );
            self.exchange_seconds = 0.0;
        }
        let seen_f = seen.max(1) as f64;
        let m = EpochMetrics {
            epoch,
            loss: sum / seen_f,
            reconstruction: rec / seen_f,
            kl: kl / seen_f,
            val_loss: 0.0,
            val_reconstruction: 0.0,
            val_kl: 0.0,
            val_ged: 0.0,
            images_per_s: seen as f64 / step_start.elapsed().as_secs_f64().max(1e-9),
            skipped_steps: skipped,
            // GECO weighs KL against reconstruction by 1 / lambda: the ELBO's beta it amounts to.
            beta: match objective.kind {
                LossKind::Elbo => objective.beta,
                LossKind::Geco => (1.0 / self.geco.lambda()) as f32,
            },
            seconds: 0.0,
        };
        Ok((m, model))
    }

    /// One step on the global batch `idx`: this rank's rows forward and backward, the loss and
    /// gradients averaged over the ranks. Returns the batch's loss values, or None when the
    /// loss was not finite and the step was skipped (on every rank alike).
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        model: Segmenter,
        optim: &mut ModuleOptimizer,
        lr: f64,
        objective: &Objective,
        data: &Dataset,
        idx: &[usize],
        patch: Option<batch::PatchSampling>,
        rng: &mut StdRng,
        device: &Device,
    ) -> Result<(Segmenter, Option<[f32; 3]>)> {
        let tc = self.tc;
        let comm = self.comm;
        // Every rank draws the whole batch's random choices, so that a run does not depend on
        // how many ranks share it, then keeps its own rows.
        let b = batch::training_patches(data, idx, tc.annotator, &self.augmentation, patch, rng, device)?;
        let [n, _, h, w] = b.images.dims();
        let latent = model.latent_size(h, w);
        let eps = normal(rng, n * latent);
        // Only top-k draws noise; without it the stream stays as it was before ranks existed,
        // so single-device runs reproduce earlier results.
        let loss_seed: u64 = if objective.topk.is_some_and(|k| k < 1.0) { rng.r#gen() } else { 0 };
        let rows = distributed::shard(comm, n);
        let local = if rows.is_empty() {
            None
        } else {
            let eps = TensorData::new(eps[rows.start * latent..rows.end * latent].to_vec(), [rows.len(), latent]);
            let (images, masks) = (b.images.narrow(0, rows.start, rows.len()), b.masks.narrow(0, rows.start, rows.len()));
            let out = model.forward_train(images, masks.clone(), Tensor::<2>::from_data(eps, device));
            let mut loss_rng = StdRng::seed_from_u64(loss_seed.wrapping_add(comm.rank() as u64));
            Some(objective.loss(&out, masks, &self.geco, &mut loss_rng)?)
        };
        let parts = local.as_ref().map_or([0.0; 3], |l| l.parts);
        let exchange = Instant::now();
        let mean = distributed::batch_mean(comm, &parts, rows.len(), "the loss all-reduce")?;
        self.exchange_seconds += exchange.elapsed().as_secs_f64();
        let parts = [mean[0], mean[1], mean[2]];
        let settled = objective.settle(parts, &self.geco);
        let values = settled.values;
        if values.iter().any(|v| !v.is_finite()) {
            // A non-finite loss never reaches the weights.
            self.consecutive_bad += 1;
            tracing::warn!("non-finite loss {values:?}, step skipped");
            if self.consecutive_bad >= tc.max_bad_steps {
                bail!(
                    "{} non-finite losses in a row: training diverged. \
                     Lower --lr, set --grad-clip-norm, or check the data for extreme values",
                    self.consecutive_bad
                );
            }
            return Ok((model, None));
        }
        self.consecutive_bad = 0;
        objective.commit(&settled, &mut self.geco);
        let grads = local.map(|l| GradientsParams::from_grads(l.total.backward(), &model));
        let exchange = Instant::now();
        let grads = distributed::average_gradients(comm, grads, &model, rows.len() as f32 / n as f32)?;
        self.exchange_seconds += exchange.elapsed().as_secs_f64();
        let model = optim.step(lr, model, grads);
        if let Some(ema) = &mut self.ema {
            ema.update(&model);
        }
        Ok((model, Some(values)))
    }
}
