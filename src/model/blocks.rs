//! Convolution blocks shared by the U-Net and the Gaussian encoders.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;

use super::config::{NormKind, group_count};
use crate::kernels::{conv2d, group_norm, group_norm_relu};

/// Batch norm, group norm or nothing, chosen by config.
#[derive(Module, Debug)]
pub struct Norm {
    batch: Option<BatchNorm>,
    group: Option<GroupNorm>,
}

impl Norm {
    pub fn new(kind: NormKind, channels: usize, device: &Device) -> Self {
        match kind {
            NormKind::Batch => Self { batch: Some(BatchNormConfig::new(channels).init(device)), group: None },
            NormKind::Group => Self { batch: None, group: Some(GroupNormConfig::new(group_count(channels), channels).init(device)) },
            NormKind::None => Self { batch: None, group: None },
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match (&self.batch, &self.group) {
            (Some(b), _) => b.forward(x),
            (_, Some(g)) => group_norm(g, x),
            _ => x,
        }
    }

    /// `relu(self.forward(x))`, fused with a group norm on the CPU kernels.
    pub fn forward_relu(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.group {
            Some(g) if self.batch.is_none() => group_norm_relu(g, x),
            _ => relu(self.forward(x)),
        }
    }
}

/// n x (conv3x3 + norm + ReLU).
#[derive(Module, Debug)]
pub struct ConvBlock {
    convs: Vec<Conv2d>,
    norms: Vec<Norm>,
}

impl ConvBlock {
    pub fn new(c_in: usize, c_out: usize, n: usize, norm: NormKind, device: &Device) -> Self {
        let convs = (0..n)
            .map(|i| {
                Conv2dConfig::new([if i == 0 { c_in } else { c_out }, c_out], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    // A following norm makes the bias redundant.
                    .with_bias(norm == NormKind::None)
                    .init(device)
            })
            .collect();
        let norms = (0..n).map(|_| Norm::new(norm, c_out, device)).collect();
        Self { convs, norms }
    }

    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for (conv, norm) in self.convs.iter().zip(&self.norms) {
            x = norm.forward_relu(conv2d(conv, x));
        }
        x
    }
}

pub fn downsample(x: Tensor<4>) -> Tensor<4> {
    crate::kernels::avg_pool2x2(x)
}

/// `level` applied to `x` at every level, average-pooling down between levels; every level's
/// output, finest first. The U-Net's and the HPU-Net's encoders both contract this way.
pub fn contracting_path<L>(mut x: Tensor<4>, levels: &[L], level: impl Fn(&L, Tensor<4>) -> Tensor<4>) -> Vec<Tensor<4>> {
    let mut out = Vec::with_capacity(levels.len());
    for (i, l) in levels.iter().enumerate() {
        if i > 0 {
            x = downsample(x);
        }
        x = level(l, x);
        out.push(x.clone());
    }
    out
}

/// The contracting path: level 0 at full resolution, then average-pool down before each level.
#[derive(Module, Debug)]
pub struct Encoder {
    blocks: Vec<ConvBlock>,
}

impl Encoder {
    pub fn new(c_in: usize, filters: &[usize], convs: usize, norm: NormKind, device: &Device) -> Self {
        let mut prev = c_in;
        let blocks = filters
            .iter()
            .map(|&f| {
                let b = ConvBlock::new(prev, f, convs, norm, device);
                prev = f;
                b
            })
            .collect();
        Self { blocks }
    }

    /// Features at every level, finest first.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        contracting_path(x, &self.blocks, ConvBlock::forward)
    }

    /// Only the coarsest features.
    pub fn forward_last(&self, mut x: Tensor<4>) -> Tensor<4> {
        for (i, block) in self.blocks.iter().enumerate() {
            if i > 0 {
                x = downsample(x);
            }
            x = block.forward(x);
        }
        x
    }
}
