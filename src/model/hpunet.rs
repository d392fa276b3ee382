//! The Hierarchical Probabilistic U-Net (Kohl et al. 2019), as DeepMind's reference builds it:
//! residual encoder and decoder without norm layers, Gaussian latents with one value per pixel
//! at the coarsest decoder scales, separate prior and posterior nets, and a "stitching" decoder
//! that takes the prior net's features up to full resolution. With `attention_gates` or
//! transformer levels it becomes the Hierarchical Probabilistic Attention U-Net: gates on the
//! skips and self-attention on the decoder's input, as in apunet's Attention U-Net.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;

use super::attention_gate::AttentionGate;
use super::blocks::contracting_path;
use super::config::ModelConfig;
use super::fcomb::output_conv;
use super::residual::ResStack;
use super::transformer::TransformerBlock;
use crate::kernels::conv2d;

/// Nearest-neighbour x2 upsampling, from expand and reshape: differentiable on every backend.
pub fn nearest2x(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1]).expand([b, c, h, 2, w, 2]).reshape([b, c, 2 * h, 2 * w])
}

/// One decoder step: optional self-attention on the coarser input, an optional gate on the
/// skip, nearest upsampling, concatenation with the skip and residual blocks.
#[derive(Module, Debug)]
pub struct DecoderStep {
    transformer: Option<TransformerBlock>,
    gate: Option<AttentionGate>,
    block: ResStack,
}

impl DecoderStep {
    /// Step to decoder level `l` (output `filters[l]` channels) from `g_channels` coarser
    /// channels, plus `extra` latent channels concatenated after attention and gating.
    fn new(cfg: &ModelConfig, l: usize, g_channels: usize, extra: usize, device: &Device) -> Self {
        let f = &cfg.filters;
        Self {
            transformer: cfg
                .transformer_levels()
                .contains(&l)
                .then(|| TransformerBlock::new(g_channels, cfg.transformer_heads, l % 2 == 1, device)),
            gate: cfg.attention_gates.then(|| AttentionGate::new(f[l], g_channels, device)),
            block: ResStack::new(g_channels + extra + f[l], f[l], cfg.res_blocks, device),
        }
    }

    fn attend(&self, g: Tensor<4>) -> Tensor<4> {
        match &self.transformer {
            Some(t) => t.forward(g),
            None => g,
        }
    }

    /// `g` after [`Self::attend`], `z` the latents to concatenate (if any).
    fn forward(&self, g: Tensor<4>, z: Option<Tensor<4>>, skip: Tensor<4>) -> Tensor<4> {
        let skip = match &self.gate {
            Some(gate) => gate.forward(skip, g.clone()),
            None => skip,
        };
        let g = match z {
            Some(z) => Tensor::cat(vec![g, z], 1),
            None => g,
        };
        self.block.forward(Tensor::cat(vec![nearest2x(g), skip], 1))
    }
}

/// Per-pixel Gaussians of one latent scale: mean and log sigma, [B, C, h, w].
#[derive(Debug, Clone)]
pub struct PixelGaussian {
    pub mu: Tensor<4>,
    pub log_sigma: Tensor<4>,
}

impl PixelGaussian {
    /// Analytic KL(self || other) summed over channels and pixels: [B].
    pub fn kl(&self, other: &PixelGaussian) -> Tensor<1> {
        let b = self.mu.dims()[0];
        let var_q = (self.log_sigma.clone() * 2.0).exp();
        let var_p = (other.log_sigma.clone() * 2.0).exp();
        let diff = self.mu.clone() - other.mu.clone();
        let kl = other.log_sigma.clone() - self.log_sigma.clone() + (var_q + diff.powi_scalar(2)) / (var_p * 2.0) - 0.5;
        kl.reshape([b as i32, -1]).sum_dim(1).squeeze_dim(1)
    }
}

/// What the latent decoder of one net gives: the distributions and the latents it used at
/// every scale (coarsest first) and its features after the last latent scale.
#[derive(Debug, Clone)]
pub struct CoreOut {
    pub dists: Vec<PixelGaussian>,
    pub latents: Vec<Tensor<4>>,
    pub features: Tensor<4>,
}

/// The prior or posterior net: a residual encoder and the decoder levels that carry latents.
#[derive(Module, Debug)]
pub struct HierarchicalCore {
    /// Finest level first.
    encoder: Vec<ResStack>,
    /// Per latent scale, coarsest first: a 1x1 conv to mean and log sigma.
    heads: Vec<Conv2d>,
    decoder: Vec<DecoderStep>,
    latent_channels: usize,
    log_sigma_min: f32,
    log_sigma_max: f32,
}

impl HierarchicalCore {
    pub fn new(cfg: &ModelConfig, in_channels: usize, device: &Device) -> Self {
        let (f, d, lc) = (&cfg.filters, cfg.depth(), cfg.latent_channels);
        let encoder = (0..d).map(|i| ResStack::new(if i == 0 { in_channels } else { f[i - 1] }, f[i], cfg.res_blocks, device)).collect();
        let scales = cfg.latent_scales;
        let heads = (0..scales).map(|s| Conv2dConfig::new([f[d - 1 - s], 2 * lc], [1, 1]).init(device)).collect();
        let decoder = (0..scales).map(|s| DecoderStep::new(cfg, d - 2 - s, f[d - 1 - s], lc, device)).collect();
        Self { encoder, heads, decoder, latent_channels: lc, log_sigma_min: cfg.log_sigma_min, log_sigma_max: cfg.log_sigma_max }
    }

    /// Encoder features at every level, finest first.
    pub fn encode(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        contracting_path(x, &self.encoder, ResStack::forward)
    }

    /// Runs the latent scales on `skips` (from [`Self::encode`]); `pick(scale, dist)` gives
    /// the latents to use at each scale (a sample, the mean, or another net's latents).
    pub fn decode(&self, skips: &[Tensor<4>], mut pick: impl FnMut(usize, &PixelGaussian) -> Tensor<4>) -> CoreOut {
        let d = skips.len();
        let mut g = skips[d - 1].clone();
        let (mut dists, mut latents) = (Vec::new(), Vec::new());
        for (s, (head, step)) in self.heads.iter().zip(&self.decoder).enumerate() {
            g = step.attend(g);
            let stats = conv2d(head, g.clone());
            let lc = self.latent_channels;
            let dist = PixelGaussian {
                mu: stats.clone().narrow(1, 0, lc),
                log_sigma: stats.narrow(1, lc, lc).clamp(self.log_sigma_min, self.log_sigma_max),
            };
            let z = pick(s, &dist);
            g = step.forward(g, Some(z.clone()), skips[d - 2 - s].clone());
            dists.push(dist);
            latents.push(z);
        }
        CoreOut { dists, latents, features: g }
    }
}

/// The decoder from the last latent scale up to full resolution, then 1x1 to logits.
#[derive(Module, Debug)]
pub struct Stitcher {
    levels: Vec<DecoderStep>,
    out: Conv2d,
}

impl Stitcher {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let (f, d) = (&cfg.filters, cfg.depth());
        let first = d - 1 - cfg.latent_scales;
        let levels = (0..first).rev().map(|l| DecoderStep::new(cfg, l, f[l + 1], 0, device)).collect();
        Self { levels, out: output_conv(f[0], cfg.output_prior, device) }
    }

    /// Logits [B,1,H,W] from the features after the last latent scale and the encoder's skips.
    pub fn forward(&self, mut g: Tensor<4>, skips: &[Tensor<4>]) -> Tensor<4> {
        // The stitcher's steps lead to levels len-1, ..., 0.
        let first = self.levels.len();
        for (i, step) in self.levels.iter().enumerate() {
            let l = first - 1 - i;
            g = step.forward(step.attend(g), None, skips[l].clone());
        }
        conv2d(&self.out, g)
    }
}

#[derive(Module, Debug)]
pub struct HPUNet {
    pub prior: HierarchicalCore,
    pub posterior: HierarchicalCore,
    pub stitcher: Stitcher,
    latent_channels: usize,
    latent_scales: usize,
    depth: usize,
}

/// The prior net's encoder features of a batch, computed once for any number of samples.
#[derive(Debug, Clone)]
pub struct HEncoded {
    pub skips: Vec<Tensor<4>>,
}

impl HPUNet {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        Self {
            prior: HierarchicalCore::new(cfg, cfg.in_channels, device),
            posterior: HierarchicalCore::new(cfg, cfg.in_channels + 1, device),
            stitcher: Stitcher::new(cfg, device),
            latent_channels: cfg.latent_channels,
            latent_scales: cfg.latent_scales,
            depth: cfg.depth(),
        }
    }

    /// [C, h, w] of every latent scale (coarsest first) for an `h` x `w` input.
    pub fn latent_shapes(&self, h: usize, w: usize) -> Vec<[usize; 3]> {
        (0..self.latent_scales).map(|s| [self.latent_channels, h >> (self.depth - 1 - s), w >> (self.depth - 1 - s)]).collect()
    }

    /// Standard-normal values one draw of every latent takes, for an `h` x `w` input.
    pub fn latent_size(&self, h: usize, w: usize) -> usize {
        self.latent_shapes(h, w).iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// Splits `eps` [N, latent_size] into one [N, C, h, w] tensor per scale.
    fn split_eps(&self, eps: Tensor<2>, h: usize, w: usize) -> Vec<Tensor<4>> {
        let n = eps.dims()[0];
        let mut at = 0;
        self.latent_shapes(h, w)
            .into_iter()
            .map(|[c, sh, sw]| {
                let len = c * sh * sw;
                let t = eps.clone().narrow(1, at, len).reshape([n, c, sh, sw]);
                at += len;
                t
            })
            .collect()
    }

    /// Training pass: latents from the posterior given `y`, the prior's decoder driven by them.
    /// Logits [B,1,H,W] and the KL summed over scales and pixels, [B].
    pub fn forward_train(&self, x: Tensor<4>, y: Tensor<4>, eps: Tensor<2>) -> (Tensor<4>, Tensor<1>) {
        let [_, _, h, w] = x.dims();
        let eps = self.split_eps(eps, h, w);
        let (q, p, logits) = self.posterior_driven(x, y, |s, d| d.mu.clone() + d.log_sigma.clone().exp() * eps[s].clone());
        let kl = q.dists.iter().zip(&p.dists).map(|(q, p)| q.kl(p)).reduce(|a, b| a + b).expect("at least one latent scale");
        (logits, kl)
    }

    /// The posterior's latents (chosen by `pick` from its distributions) driving the prior's
    /// decoder: both nets' outputs and the logits.
    fn posterior_driven(
        &self,
        x: Tensor<4>,
        y: Tensor<4>,
        pick: impl FnMut(usize, &PixelGaussian) -> Tensor<4>,
    ) -> (CoreOut, CoreOut, Tensor<4>) {
        let q_skips = self.posterior.encode(Tensor::cat(vec![x.clone(), y], 1));
        let q = self.posterior.decode(&q_skips, pick);
        let p_skips = self.prior.encode(x);
        let p = self.prior.decode(&p_skips, |s, _| q.latents[s].clone());
        let logits = self.stitcher.forward(p.features.clone(), &p_skips);
        (q, p, logits)
    }

    pub fn encode(&self, x: Tensor<4>) -> HEncoded {
        HEncoded { skips: self.prior.encode(x) }
    }

    /// Logits [B*n,1,H,W] (image-major) for n prior samples per image; `eps` [B*n, latent_size].
    /// Scales flagged in `mean_scales` take the prior's mean instead of a sample (local versus
    /// global variation).
    pub fn sample_from(&self, enc: &HEncoded, eps: Tensor<2>, mean_scales: &[bool]) -> Tensor<4> {
        let [b, _, h, w] = enc.skips[0].dims();
        let n = eps.dims()[0] / b;
        let repeat = |t: &Tensor<4>| {
            let [b, c, h, w] = t.dims();
            t.clone().unsqueeze_dim::<5>(1).expand([b, n, c, h, w]).reshape([b * n, c, h, w])
        };
        let skips: Vec<Tensor<4>> = if n == 1 { enc.skips.clone() } else { enc.skips.iter().map(repeat).collect() };
        let eps = self.split_eps(eps, h, w);
        let p = self.prior.decode(&skips, |s, d| {
            if mean_scales.get(s).copied().unwrap_or(false) {
                d.mu.clone()
            } else {
                d.mu.clone() + d.log_sigma.clone().exp() * eps[s].clone()
            }
        });
        self.stitcher.forward(p.features, &skips)
    }

    /// The prediction with the prior's mean at every scale, [B,1,H,W] logits.
    pub fn predict_prior_mean(&self, enc: &HEncoded) -> Tensor<4> {
        let p = self.prior.decode(&enc.skips, |_, d| d.mu.clone());
        self.stitcher.forward(p.features, &enc.skips)
    }

    /// Posterior-mean reconstruction of `y`: the posterior's means drive the prior's decoder.
    pub fn reconstruct(&self, x: Tensor<4>, y: Tensor<4>) -> Tensor<4> {
        self.posterior_driven(x, y, |_, d| d.mu.clone()).2
    }
}
