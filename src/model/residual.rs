//! The residual block of the Hierarchical Probabilistic U-Net, as DeepMind's reference builds
//! it: r = relu(x) -> conv3x3 -> relu -> conv3x3 -> relu -> conv3x3 at half the output
//! channels, a 1x1 conv on r and on the skip where channel counts differ, out = skip + r.
//! No norm layers.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::kernels::conv2d;

#[derive(Module, Debug)]
pub struct ResBlock {
    convs: Vec<Conv2d>,
    /// 1x1 on the skip when c_in != c_out.
    skip: Option<Conv2d>,
    /// 1x1 on the residual when its inner channels != c_out.
    project: Option<Conv2d>,
}

impl ResBlock {
    pub fn new(c_in: usize, c_out: usize, convs: usize, device: &Device) -> Self {
        let inner = (c_out / 2).max(1);
        let conv3 = |a, b| Conv2dConfig::new([a, b], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).init(device);
        let convs = (0..convs.max(1)).map(|i| conv3(if i == 0 { c_in } else { inner }, inner)).collect();
        Self {
            convs,
            skip: (c_in != c_out).then(|| Conv2dConfig::new([c_in, c_out], [1, 1]).init(device)),
            project: (inner != c_out).then(|| Conv2dConfig::new([inner, c_out], [1, 1]).init(device)),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let skip = match &self.skip {
            Some(c) => conv2d(c, x.clone()),
            None => x.clone(),
        };
        let mut r = x;
        for conv in &self.convs {
            r = conv2d(conv, relu(r));
        }
        if let Some(p) = &self.project {
            r = conv2d(p, r);
        }
        skip + r
    }
}

/// `n` residual blocks in a row, the first taking `c_in` channels.
#[derive(Module, Debug)]
pub struct ResStack {
    blocks: Vec<ResBlock>,
}

impl ResStack {
    pub fn new(c_in: usize, c_out: usize, n: usize, device: &Device) -> Self {
        let blocks = (0..n.max(1)).map(|i| ResBlock::new(if i == 0 { c_in } else { c_out }, c_out, 3, device)).collect();
        Self { blocks }
    }

    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<4> {
        for b in &self.blocks {
            x = b.forward(x);
        }
        x
    }
}
