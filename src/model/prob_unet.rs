//! The Probabilistic Attention U-Net (Kohl et al. 2018 with an Attention U-Net backbone).
//! Training draws z from the posterior q(z|x,y); inference draws z from the prior p(z|x).

use burn::prelude::*;

use super::config::ModelConfig;
use super::fcomb::Fcomb;
use super::gaussian::{Gaussian, GaussianEncoder};
use super::unet::AttentionUNet;

#[derive(Module, Debug)]
pub struct ProbUNet {
    pub unet: AttentionUNet,
    pub prior: GaussianEncoder,
    pub posterior: GaussianEncoder,
    pub fcomb: Fcomb,
}

/// What a training forward pass gives the loss.
#[derive(Debug, Clone)]
pub struct TrainOutput {
    pub logits: Tensor<4>,
    pub posterior: Gaussian,
    pub prior: Gaussian,
}

/// The loss and its two terms, each averaged over the batch.
#[derive(Debug, Clone)]
pub struct Loss {
    pub total: Tensor<1>,
    pub reconstruction: Tensor<1>,
    pub kl: Tensor<1>,
}

impl ProbUNet {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        Self {
            unet: AttentionUNet::new(cfg, device),
            prior: GaussianEncoder::new(cfg, 0, device),
            posterior: GaussianEncoder::new(cfg, 1, device),
            fcomb: Fcomb::new(cfg.filters[0], cfg.latent_dim, cfg.fcomb_layers, cfg.output_prior, device),
        }
    }

    /// Training pass: z from the posterior given the mask `y` [B,1,H,W]; `eps` [B,L] ~ N(0, I).
    pub fn forward_train(&self, x: Tensor<4>, y: Tensor<4>, eps: Tensor<2>) -> TrainOutput {
        let features = self.unet.forward(x.clone());
        let prior = self.prior.forward(x.clone());
        let posterior = self.posterior.forward(Tensor::cat(vec![x, y], 1));
        let z = posterior.sample(eps);
        TrainOutput { logits: self.fcomb.forward(features, z), posterior, prior }
    }

    /// Backbone features and the prior, computed once per image for any number of samples.
    pub fn encode(&self, x: Tensor<4>) -> (Tensor<4>, Gaussian) {
        (self.unet.forward(x.clone()), self.prior.forward(x))
    }

    /// Logits [B*n,1,H,W] (image-major) for n prior samples per image in one fcomb pass;
    /// `eps` is [B*n, L].
    pub fn sample_from(&self, features: Tensor<4>, prior: &Gaussian, eps: Tensor<2>) -> Tensor<4> {
        let b = features.dims()[0];
        let [bn, l] = eps.dims();
        let n = bn / b;
        let rep = |t: Tensor<2>| t.unsqueeze_dim::<3>(1).expand([b, n, l]).reshape([b * n, l]);
        let z = rep(prior.mu.clone()) + rep(prior.log_sigma.clone()).exp() * eps;
        self.decode_latents(features, z)
    }

    /// Logits [B*n,1,H,W] for given latents `z` [B*n, L] (image-major): n per image.
    pub fn decode_latents(&self, features: Tensor<4>, z: Tensor<2>) -> Tensor<4> {
        self.fcomb.forward(features, z)
    }

    /// The prior mean's prediction, [B,1,H,W] logits.
    pub fn predict_prior_mean(&self, x: Tensor<4>) -> Tensor<4> {
        let (features, prior) = self.encode(x);
        self.fcomb.forward(features, prior.mu)
    }

    /// Posterior reconstruction of `y` (the posterior mean's prediction).
    pub fn reconstruct(&self, x: Tensor<4>, y: Tensor<4>) -> Tensor<4> {
        let features = self.unet.forward(x.clone());
        let post = self.posterior.forward(Tensor::cat(vec![x, y], 1));
        self.fcomb.forward(features, post.mu)
    }
}

/// Binary cross-entropy with logits, stable form: max(x,0) - x*y + log(1 + exp(-|x|)).
/// Summed over pixels per image: [B].
pub fn bce_with_logits_per_image(logits: Tensor<4>, target: Tensor<4>) -> Tensor<1> {
    let [b, _, _, _] = logits.dims();
    let loss = logits.clone().clamp_min(0.0) - logits.clone() * target + logits.abs().neg().exp().log1p();
    loss.reshape([b as i32, -1]).sum_dim(1).squeeze_dim(1)
}

/// ELBO loss: per-image reconstruction (summed over pixels) + beta * KL(q||p), both averaged
/// over the batch. Summing pixels keeps the two terms in the ratio the ELBO gives them;
/// averaging images keeps the learning rate independent of batch size.
pub fn elbo_loss(out: &TrainOutput, target: Tensor<4>, beta: f32) -> Loss {
    let reconstruction = bce_with_logits_per_image(out.logits.clone(), target).mean();
    let kl = out.posterior.kl(&out.prior).mean();
    Loss { total: reconstruction.clone() + kl.clone() * beta, reconstruction, kl }
}
