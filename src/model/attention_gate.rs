//! Additive attention gate (Oktay et al. 2018, "Attention U-Net"): the coarser decoder signal
//! decides, pixel by pixel, how much of the encoder's skip connection passes.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};

use super::resample;
use crate::kernels::conv2d;

#[derive(Module, Debug)]
pub struct AttentionGate {
    /// 2x2 stride-2 conv: brings the skip down to the gating signal's resolution.
    pub w_x: Conv2d,
    /// 1x1 conv on the gating signal.
    pub w_g: Conv2d,
    /// 1x1 conv to one channel: the attention logit.
    pub psi: Conv2d,
}

impl AttentionGate {
    pub fn new(skip_channels: usize, gate_channels: usize, device: &Device) -> Self {
        let inter = (skip_channels / 2).max(1);
        Self {
            w_x: Conv2dConfig::new([skip_channels, inter], [2, 2]).with_stride([2, 2]).with_bias(false).init(device),
            w_g: Conv2dConfig::new([gate_channels, inter], [1, 1]).init(device),
            psi: Conv2dConfig::new([inter, 1], [1, 1]).init(device),
        }
    }

    /// The attention coefficients in [0, 1] at the skip's resolution, [B,1,H,W].
    pub fn coefficients(&self, skip: Tensor<4>, gate: Tensor<4>) -> Tensor<4> {
        let [_, _, h, w] = skip.dims();
        let theta = conv2d(&self.w_x, skip);
        let [_, _, th, tw] = theta.dims();
        let phi = resample(conv2d(&self.w_g, gate), th, tw);
        let alpha = sigmoid(conv2d(&self.psi, relu(theta + phi)));
        resample(alpha, h, w)
    }

    /// The gated skip connection.
    pub fn forward(&self, skip: Tensor<4>, gate: Tensor<4>) -> Tensor<4> {
        let alpha = self.coefficients(skip.clone(), gate);
        skip * alpha
    }
}
