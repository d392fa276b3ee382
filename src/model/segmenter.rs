//! The model a run trains, chosen by `[model] kind`: the Probabilistic U-Net or the
//! Hierarchical Probabilistic U-Net, behind one interface for training, sampling and
//! prediction. Latents are drawn on the host as a flat standard-normal vector per sample of
//! [`Segmenter::latent_size`] values, so the same seeded draws serve both kinds.

use burn::prelude::*;

use super::config::{ModelConfig, ModelKind};
use super::gaussian::Gaussian;
use super::hpunet::{HEncoded, HPUNet};
use super::prob_unet::ProbUNet;

// One model per run (the HPU-Net's variant is larger): boxing would only add an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Segmenter {
    PUNet(ProbUNet),
    HPUNet(HPUNet),
}

/// What a training pass gives the loss: logits [B,1,H,W] and KL(q || p) per image [B].
#[derive(Debug, Clone)]
pub struct TrainOut {
    pub logits: Tensor<4>,
    pub kl: Tensor<1>,
}

/// A batch's features computed once for any number of samples.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Encoded {
    PUNet { features: Tensor<4>, prior: Gaussian },
    HPUNet(HEncoded),
}

impl Segmenter {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let model = match cfg.kind {
            ModelKind::Punet => Self::PUNet(ProbUNet::new(cfg, device)),
            ModelKind::Hpunet => Self::HPUNet(HPUNet::new(cfg, device)),
        };
        super::init::apply(model, cfg.init)
    }

    /// Standard-normal values per sample for an `h` x `w` input.
    pub fn latent_size(&self, h: usize, w: usize) -> usize {
        match self {
            Self::PUNet(m) => m.prior.latent_dim(),
            Self::HPUNet(m) => m.latent_size(h, w),
        }
    }

    /// Training pass with the posterior's latents; `eps` [B, latent_size].
    pub fn forward_train(&self, x: Tensor<4>, y: Tensor<4>, eps: Tensor<2>) -> TrainOut {
        match self {
            Self::PUNet(m) => {
                let out = m.forward_train(x, y, eps);
                TrainOut { kl: out.posterior.kl(&out.prior), logits: out.logits }
            }
            Self::HPUNet(m) => {
                let (logits, kl) = m.forward_train(x, y, eps);
                TrainOut { logits, kl }
            }
        }
    }

    pub fn encode(&self, x: Tensor<4>) -> Encoded {
        match self {
            Self::PUNet(m) => {
                let (features, prior) = m.encode(x);
                Encoded::PUNet { features, prior }
            }
            Self::HPUNet(m) => Encoded::HPUNet(m.encode(x)),
        }
    }

    /// Logits [B*n,1,H,W] (image-major) for n prior samples per image; `eps` [B*n, latent_size].
    /// `mean_scales` (HPU-Net) takes the prior's mean at the flagged scales.
    pub fn sample_from(&self, enc: &Encoded, eps: Tensor<2>, mean_scales: &[bool]) -> Tensor<4> {
        match (self, enc) {
            (Self::PUNet(m), Encoded::PUNet { features, prior }) => m.sample_from(features.clone(), prior, eps),
            (Self::HPUNet(m), Encoded::HPUNet(e)) => m.sample_from(e, eps, mean_scales),
            _ => unreachable!("features encoded by this model"),
        }
    }

    /// The prediction at the prior's mean, [B,1,H,W] logits: the model's single best guess.
    pub fn predict_prior_mean(&self, enc: &Encoded) -> Tensor<4> {
        match (self, enc) {
            (Self::PUNet(m), Encoded::PUNet { features, prior }) => m.fcomb.forward(features.clone(), prior.mu.clone()),
            (Self::HPUNet(m), Encoded::HPUNet(e)) => m.predict_prior_mean(e),
            _ => unreachable!("features encoded by this model"),
        }
    }

    /// Posterior-mean reconstruction of `y`, [B,1,H,W] logits.
    pub fn reconstruct(&self, x: Tensor<4>, y: Tensor<4>) -> Tensor<4> {
        match self {
            Self::PUNet(m) => m.reconstruct(x, y),
            Self::HPUNet(m) => m.reconstruct(x, y),
        }
    }

    /// The Probabilistic U-Net inside, where the caller needs its global latent.
    pub fn as_punet(&self) -> Option<&ProbUNet> {
        match self {
            Self::PUNet(m) => Some(m),
            Self::HPUNet(_) => None,
        }
    }
}
