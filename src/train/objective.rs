//! The training objective: the ELBO (reconstruction + beta * KL) or GECO (Rezende & Viola
//! 2018, as the HPU-Net trains: lambda * (EMA(reconstruction) - kappa * pixels) + KL, with the
//! Lagrange multiplier lambda = softplus(x)^2 raised while the constraint is violated), each
//! with an optional top-k reconstruction: the given share of the batch's highest-loss pixels,
//! chosen stochastically with Gumbel noise and no gradient through the choice.

use anyhow::Result;
use burn::prelude::*;
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::model::{TrainOut, to_host};

/// `[train] loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// reconstruction + beta * KL. Default.
    #[default]
    Elbo,
    /// lambda * (EMA(reconstruction) - kappa * pixels kept) + KL, lambda by gradient ascent.
    Geco,
}

/// GECO's running state, saved with the run so a resume continues it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GecoState {
    /// EMA of the reconstruction term (None before the first step).
    pub ema: Option<f64>,
    /// lambda = softplus(x)^2.
    pub x: f64,
    /// Adam moments of x's ascent.
    pub m: f64,
    pub v: f64,
    pub steps: u64,
}

impl Default for GecoState {
    fn default() -> Self {
        // softplus(x) = 1: lambda starts at 1, as in the reference.
        Self { ema: None, x: (1f64.exp() - 1.0).ln(), m: 0.0, v: 0.0, steps: 0 }
    }
}

fn softplus(x: f64) -> f64 {
    if x > 30.0 { x } else { x.exp().ln_1p() }
}

impl GecoState {
    pub fn lambda(&self) -> f64 {
        softplus(self.x).powi(2)
    }

    /// One ascent step on lambda for constraint value `c`: Adam on x with gradient
    /// dC*lambda/dx, so lambda rises while c > 0 and falls while c < 0.
    fn ascend(&mut self, c: f64, rate: f64) {
        let sp = softplus(self.x);
        let grad = c * 2.0 * sp * (1.0 / (1.0 + (-self.x).exp()));
        self.steps += 1;
        self.m = 0.9 * self.m + 0.1 * grad;
        self.v = 0.999 * self.v + 0.001 * grad * grad;
        let m_hat = self.m / (1.0 - 0.9f64.powi(self.steps.min(10_000) as i32));
        let v_hat = self.v / (1.0 - 0.999f64.powi(self.steps.min(100_000) as i32));
        self.x += rate * m_hat / (v_hat.sqrt() + 1e-8);
    }
}

/// The objective's settings, from `[train]`.
#[derive(Debug, Clone, Copy)]
pub struct Objective {
    pub kind: LossKind,
    /// Share of pixels in the reconstruction term (None: all).
    pub topk: Option<f64>,
    pub beta: f32,
    pub kappa: f64,
    pub rate: f64,
}

/// One step's loss and the host values reported for it.
pub struct StepLoss {
    pub total: Tensor<1>,
    /// This batch's reconstruction, KL and pixels kept per image, as host values.
    pub parts: [f64; 3],
    pub settled: Settled,
}

/// What a step reports and commits, from the batch's parts (or their mean over every rank).
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    /// [total, reconstruction, kl], averaged over the batch.
    pub values: [f32; 3],
    /// GECO's constraint value for [`Objective::commit`] once the step is taken.
    constraint: Option<(f64, f64)>,
}

/// Per-pixel binary cross-entropy with logits, [B,1,H,W].
pub fn bce_with_logits(logits: Tensor<4>, target: Tensor<4>) -> Tensor<4> {
    logits.clone().clamp_min(0.0) - logits.clone() * target + logits.abs().neg().exp().log1p()
}

/// A 0/1 mask [B,1,H,W] of the `share` of pixels with the highest `log(xe / sum xe) + Gumbel`
/// scores: losses chosen in proportion to their size, without a gradient through the choice.
fn topk_mask(xe: &[f32], dims: [usize; 4], share: f64, rng: &mut StdRng, device: &Device) -> (Tensor<4>, usize) {
    let k = ((share * xe.len() as f64).floor() as usize).clamp(1, xe.len());
    let total: f64 = xe.iter().map(|&v| v as f64).sum::<f64>().max(1e-30);
    let mut scores: Vec<(f64, usize)> = xe
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            ((v as f64 / total).max(1e-30).ln() - (-u.ln()).ln(), i)
        })
        .collect();
    scores.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
    let mut mask = vec![0f32; xe.len()];
    for &(_, i) in &scores[..k] {
        mask[i] = 1.0;
    }
    (Tensor::from_data(TensorData::new(mask, dims), device), k)
}

impl Objective {
    /// The loss of a training pass against `target` [B,1,H,W]; `rng` draws the top-k noise.
    pub fn loss(&self, out: &TrainOut, target: Tensor<4>, geco: &GecoState, rng: &mut StdRng) -> Result<StepLoss> {
        let dims = out.logits.dims();
        let b = dims[0] as f64;
        let xe = bce_with_logits(out.logits.clone(), target);
        let (rec, kept) = match self.topk {
            Some(share) if share < 1.0 => {
                let (mask, k) = topk_mask(&to_host(xe.clone())?, dims, share, rng, &xe.device());
                ((xe * mask).sum() / b, k as f64 / b)
            }
            _ => (xe.sum() / b, (dims[1] * dims[2] * dims[3]) as f64),
        };
        let kl = out.kl.clone().mean();
        let host = to_host(Tensor::cat(vec![rec.clone(), kl.clone()], 0))?;
        let parts = [host[0] as f64, host[1] as f64, kept];
        let total = match self.kind {
            LossKind::Elbo => rec + kl * self.beta,
            // The forward value is lambda * C + KL once settled; the gradient goes to this
            // step's reconstruction, weighted by lambda.
            LossKind::Geco => rec * geco.lambda() + kl,
        };
        Ok(StepLoss { total, parts, settled: self.settle(parts, geco) })
    }

    /// Sets the reported values (and GECO's constraint) from `parts`: the batch's own, or, in a
    /// data-parallel step, the mean over every rank's rows, so that every rank reports, skips
    /// and moves GECO's state alike.
    pub fn settle(&self, parts: [f64; 3], geco: &GecoState) -> Settled {
        let [rec_v, kl_v, kept] = parts;
        match self.kind {
            LossKind::Elbo => {
                let t = rec_v + self.beta as f64 * kl_v;
                Settled { values: [t as f32, rec_v as f32, kl_v as f32], constraint: None }
            }
            LossKind::Geco => {
                // The constraint uses the EMA; the gradient goes to this step's term.
                let ema = geco.ema.map_or(rec_v, |e| 0.99 * e + 0.01 * rec_v);
                let c = ema - self.kappa * kept;
                let t = geco.lambda() * c + kl_v;
                Settled { values: [t as f32, rec_v as f32, kl_v as f32], constraint: Some((ema, c)) }
            }
        }
    }

    /// After a step is taken: GECO's EMA and lambda move on.
    pub fn commit(&self, settled: &Settled, geco: &mut GecoState) {
        if let Some((ema, c)) = settled.constraint {
            geco.ema = Some(ema);
            geco.ascend(c, self.rate);
        }
    }
}
