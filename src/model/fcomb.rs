//! fcomb: combines a latent sample with the U-Net's last features into segmentation logits.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::kernels::conv2d;

/// logit(0.05).
pub const OUTPUT_PRIOR_LOGIT: f32 = -2.944;

#[derive(Module, Debug)]
pub struct Fcomb {
    layers: Vec<Conv2d>,
    out: Conv2d,
}

impl Fcomb {
    pub fn new(feature_channels: usize, latent_dim: usize, hidden_layers: usize, device: &Device) -> Self {
        let c = feature_channels;
        let layers = (0..hidden_layers)
            .map(|i| Conv2dConfig::new([if i == 0 { c + latent_dim } else { c }, c], [1, 1]).init(device))
            .collect();
        let c_last = if hidden_layers == 0 { c + latent_dim } else { c };
        let mut out = Conv2dConfig::new([c_last, 1], [1, 1]).init(device);
        // Lesions cover a few percent of a crop: start every pixel at p ~ 0.05 (the RetinaNet
        // prior trick) instead of 0.5, or the first hundreds of steps only learn "background".
        out.bias = Some(Param::from_tensor(Tensor::full([1], OUTPUT_PRIOR_LOGIT, device)));
        Self { layers, out }
    }

    /// `features` [B,C,H,W] and `z` [B,L] to logits [B,1,H,W]; z is tiled over H x W.
    pub fn forward(&self, features: Tensor<4>, z: Tensor<2>) -> Tensor<4> {
        let [b, _, h, w] = features.dims();
        let [_, l] = z.dims();
        let tiled = z.reshape([b, l, 1, 1]).expand([b, l, h, w]);
        let mut x = Tensor::cat(vec![features, tiled], 1);
        for layer in &self.layers {
            x = relu(conv2d(layer, x));
        }
        conv2d(&self.out, x)
    }
}
