//! The ResNet CycleGAN networks of Zhu et al. 2017, as in their public PyTorch code:
//! a ResNet generator (c7s1-64, d128, d256, R256 x blocks, u128, u64, c7s1-C + tanh) and a
//! 70x70 PatchGAN discriminator. Widths scale with one `base` value so tests can use tiny nets.

use anyhow::{Result, bail};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Initializer, InstanceNorm, InstanceNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{leaky_relu, tanh};
use serde::{Deserialize, Serialize};

use crate::kernels::{conv_transpose2d, conv2d, instance_norm, instance_norm_relu, reflect_pad};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GanConfig {
    pub channels_a: usize,
    pub channels_b: usize,
    /// Generator width (64 in the paper); the discriminator uses the same base.
    pub base: usize,
    pub residual_blocks: usize,
}

impl Default for GanConfig {
    fn default() -> Self {
        Self { channels_a: 1, channels_b: 1, base: 64, residual_blocks: 9 }
    }
}

/// Weights from N(0, 0.02), as the paper initialises them.
fn init() -> Initializer {
    Initializer::Normal { mean: 0.0, std: 0.02 }
}

fn conv(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_initializer(init())
        .init(device)
}

fn norm(c: usize, device: &Device) -> InstanceNorm {
    InstanceNormConfig::new(c).init(device)
}

/// Reflection pad, conv 3x3, IN, ReLU, reflection pad, conv 3x3, IN, plus the input.
#[derive(Module, Debug)]
pub struct ResidualBlock {
    conv1: Conv2d,
    norm1: InstanceNorm,
    conv2: Conv2d,
    norm2: InstanceNorm,
}

impl ResidualBlock {
    pub fn new(c: usize, device: &Device) -> Self {
        Self { conv1: conv(c, c, 3, 1, 0, device), norm1: norm(c, device), conv2: conv(c, c, 3, 1, 0, device), norm2: norm(c, device) }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = instance_norm_relu(&self.norm1, conv2d(&self.conv1, reflect_pad(x.clone(), 1)));
        let y = instance_norm(&self.norm2, conv2d(&self.conv2, reflect_pad(y, 1)));
        x + y
    }
}

#[derive(Module, Debug)]
pub struct Generator {
    stem: Conv2d,
    stem_norm: InstanceNorm,
    down: Vec<Conv2d>,
    down_norm: Vec<InstanceNorm>,
    blocks: Vec<ResidualBlock>,
    up: Vec<ConvTranspose2d>,
    up_norm: Vec<InstanceNorm>,
    head: Conv2d,
}

impl Generator {
    pub fn new(c_in: usize, c_out: usize, base: usize, blocks: usize, device: &Device) -> Self {
        let (b1, b2, b4) = (base, base * 2, base * 4);
        let up = |ci: usize, co: usize| {
            ConvTranspose2dConfig::new([ci, co], [3, 3])
                .with_stride([2, 2])
                .with_padding([1, 1])
                .with_padding_out([1, 1])
                .with_initializer(init())
                .init(device)
        };
        Self {
            stem: conv(c_in, b1, 7, 1, 0, device),
            stem_norm: norm(b1, device),
            down: vec![conv(b1, b2, 3, 2, 1, device), conv(b2, b4, 3, 2, 1, device)],
            down_norm: vec![norm(b2, device), norm(b4, device)],
            blocks: (0..blocks).map(|_| ResidualBlock::new(b4, device)).collect(),
            up: vec![up(b4, b2), up(b2, b1)],
            up_norm: vec![norm(b2, device), norm(b1, device)],
            head: conv(b1, c_out, 7, 1, 0, device),
        }
    }

    /// H and W must be multiples of 4 so the two stride-2 steps round-trip exactly.
    pub fn check_size(h: usize, w: usize) -> Result<()> {
        if !h.is_multiple_of(4) || !w.is_multiple_of(4) || h < 8 || w < 8 {
            bail!("the ResNet generator needs H and W to be multiples of 4 (at least 8) to round-trip its two downsamplings; got {h}x{w}");
        }
        Ok(())
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = instance_norm_relu(&self.stem_norm, conv2d(&self.stem, reflect_pad(x, 3)));
        for (c, n) in self.down.iter().zip(&self.down_norm) {
            x = instance_norm_relu(n, conv2d(c, x));
        }
        for b in &self.blocks {
            x = b.forward(x);
        }
        for (c, n) in self.up.iter().zip(&self.up_norm) {
            x = instance_norm_relu(n, conv_transpose2d(c, x));
        }
        tanh(conv2d(&self.head, reflect_pad(x, 3)))
    }
}

/// 70x70 PatchGAN: C64 (no norm), C128, C256, C512, then a 4x4 conv to one channel.
#[derive(Module, Debug)]
pub struct Discriminator {
    convs: Vec<Conv2d>,
    norms: Vec<Option<InstanceNorm>>,
    head: Conv2d,
}

impl Discriminator {
    pub fn new(c_in: usize, base: usize, device: &Device) -> Self {
        let widths = [base, base * 2, base * 4, base * 8];
        let mut prev = c_in;
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        for (i, &w) in widths.iter().enumerate() {
            convs.push(conv(prev, w, 4, if i < 3 { 2 } else { 1 }, 1, device));
            norms.push((i > 0).then(|| norm(w, device)));
            prev = w;
        }
        Self { convs, norms, head: conv(prev, 1, 4, 1, 1, device) }
    }

    /// Three stride-2 steps and two 4x4 valid-ish convs need at least 24 pixels a side.
    pub fn check_size(h: usize, w: usize) -> Result<()> {
        if h < 24 || w < 24 {
            bail!("the PatchGAN discriminator needs images of at least 24x24; got {h}x{w}");
        }
        Ok(())
    }

    /// Real/fake scores per patch, [B, 1, h', w'].
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for (c, n) in self.convs.iter().zip(&self.norms) {
            x = conv2d(c, x);
            if let Some(n) = n {
                x = instance_norm(n, x);
            }
            x = leaky_relu(x, 0.2);
        }
        conv2d(&self.head, x)
    }
}

/// Least-squares GAN loss against a constant target (1 real, 0 fake).
pub fn lsgan(scores: Tensor<4>, target: f32) -> Tensor<1> {
    (scores - target).powi_scalar(2).mean()
}

/// Mean absolute difference: the cycle and identity losses.
pub fn l1(a: Tensor<4>, b: Tensor<4>) -> Tensor<1> {
    (a - b).abs().mean()
}
