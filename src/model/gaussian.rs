//! The prior and posterior nets: an encoder, a global average and a 1x1 conv to the mean and
//! log standard deviation of an axis-aligned Gaussian over the latent space.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;

use super::blocks::Encoder;
use super::config::ModelConfig;
use crate::kernels::conv2d;

/// An axis-aligned Gaussian per batch item: mu and log sigma, [B, L].
#[derive(Debug, Clone)]
pub struct Gaussian {
    pub mu: Tensor<2>,
    pub log_sigma: Tensor<2>,
}

impl Gaussian {
    /// Reparameterised draw: mu + sigma * eps, with eps ~ N(0, I) given by the caller
    /// (drawn on the host so runs are reproducible on every backend).
    pub fn sample(&self, eps: Tensor<2>) -> Tensor<2> {
        self.mu.clone() + self.log_sigma.clone().exp() * eps
    }

    /// Analytic KL(self || other), summed over latent dims: [B].
    pub fn kl(&self, other: &Gaussian) -> Tensor<1> {
        let var_q = (self.log_sigma.clone() * 2.0).exp();
        let var_p = (other.log_sigma.clone() * 2.0).exp();
        let diff = self.mu.clone() - other.mu.clone();
        let kl = other.log_sigma.clone() - self.log_sigma.clone() + (var_q + diff.powi_scalar(2)) / (var_p * 2.0) - 0.5;
        kl.sum_dim(1).squeeze_dim(1)
    }
}

#[derive(Module, Debug)]
pub struct GaussianEncoder {
    encoder: Encoder,
    head: Conv2d,
    latent_dim: usize,
    log_sigma_min: f32,
    log_sigma_max: f32,
}

impl GaussianEncoder {
    /// `extra_channels`: 0 for the prior (image only), 1 for the posterior (image + mask).
    pub fn new(cfg: &ModelConfig, extra_channels: usize, device: &Device) -> Self {
        let last = *cfg.filters.last().expect("validated: non-empty filters");
        Self {
            encoder: Encoder::new(cfg.in_channels + extra_channels, &cfg.filters, cfg.convs_per_block, cfg.norm, device),
            head: Conv2dConfig::new([last, 2 * cfg.latent_dim], [1, 1]).init(device),
            latent_dim: cfg.latent_dim,
            log_sigma_min: cfg.log_sigma_min,
            log_sigma_max: cfg.log_sigma_max,
        }
    }

    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    pub fn forward(&self, x: Tensor<4>) -> Gaussian {
        let f = self.encoder.forward_last(x);
        let pooled = f.mean_dim(2).mean_dim(3);
        let [b, _, _, _] = pooled.dims();
        let out = conv2d(&self.head, pooled).reshape([b, 2 * self.latent_dim]);
        let l = self.latent_dim;
        Gaussian {
            mu: out.clone().slice([0..b, 0..l]),
            log_sigma: out.slice([0..b, l..2 * l]).clamp(self.log_sigma_min, self.log_sigma_max),
        }
    }
}
