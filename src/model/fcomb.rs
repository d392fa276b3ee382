//! fcomb: combines a latent sample with the U-Net's last features into segmentation logits.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::kernels::conv2d;

/// A final 1x1 convolution to one logit per pixel whose bias starts at logit(`prior`): with the
/// lesion's share of a crop (a few percent) instead of 0.5, the first hundreds of steps do not
/// only learn "background" (the RetinaNet prior trick).
pub fn output_conv(channels: usize, prior: f32, device: &Device) -> Conv2d {
    let mut out = Conv2dConfig::new([channels, 1], [1, 1]).init(device);
    let logit = (prior / (1.0 - prior)).ln();
    out.bias = Some(Param::from_tensor(Tensor::full([1], logit, device)));
    out
}

#[derive(Module, Debug)]
pub struct Fcomb {
    layers: Vec<Conv2d>,
    out: Conv2d,
}

impl Fcomb {
    pub fn new(feature_channels: usize, latent_dim: usize, hidden_layers: usize, output_prior: f32, device: &Device) -> Self {
        let c = feature_channels;
        let layers =
            (0..hidden_layers).map(|i| Conv2dConfig::new([if i == 0 { c + latent_dim } else { c }, c], [1, 1]).init(device)).collect();
        let c_last = if hidden_layers == 0 { c + latent_dim } else { c };
        Self { layers, out: output_conv(c_last, output_prior, device) }
    }

    /// `features` [B,C,H,W] and `z` [B*n,L] (image-major: n latents per image) to logits
    /// [B*n,1,H,W], as the 1x1 convolutions over the features with z tiled over H x W.
    ///
    /// z is constant over the image, so the first layer's weights split into a feature part,
    /// applied once per image however many samples it gets, and a latent part that is only a
    /// per-sample bias: the same sums as the concatenation, without n copies of its input.
    pub fn forward(&self, features: Tensor<4>, z: Tensor<2>) -> Tensor<4> {
        let [b, c, h, w] = features.dims();
        let [bn, l] = z.dims();
        let n = bn / b;
        let first = self.layers.first().unwrap_or(&self.out);
        let weight = first.weight.val();
        let c_out = weight.dims()[0];
        let weight = weight.reshape([c_out, c + l]);
        let w_feat = weight.clone().narrow(1, 0, c).unsqueeze_dim::<3>(0);
        let w_z = weight.narrow(1, c, l);
        let feat = w_feat.matmul(features.reshape([b, c, h * w])).reshape([b, 1, c_out, h, w]);
        let mut per_sample = z.matmul(w_z.transpose());
        if let Some(bias) = &first.bias {
            per_sample = per_sample + bias.val().unsqueeze_dim::<2>(0);
        }
        if !self.layers.is_empty() {
            let first_out = feat.clone().reshape([b, c_out, h, w]);
            if let Some(logits) = crate::kernels::fcomb_tail(&first_out, &per_sample, &self.layers[1..], &self.out) {
                return logits;
            }
        }
        let per_sample = per_sample.reshape([b, n, c_out, 1, 1]);
        let x = (feat.expand([b, n, c_out, h, w]) + per_sample).reshape([bn, c_out, h, w]);
        if self.layers.is_empty() {
            return x;
        }
        let mut x = relu(x);
        for layer in &self.layers[1..] {
            x = relu(conv2d(layer, x));
        }
        conv2d(&self.out, x)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::module::conv2d as burn_conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Distribution, Tolerance};

    use super::*;

    /// The plain reference: z tiled over the image, concatenated, every 1x1 conv with burn's op.
    fn reference(f: &Fcomb, features: Tensor<4>, z: Tensor<2>) -> Tensor<4> {
        let [b, c, h, w] = features.dims();
        let [bn, l] = z.dims();
        let n = bn / b;
        let feats = features.unsqueeze_dim::<5>(1).expand([b, n, c, h, w]).reshape([bn, c, h, w]);
        let mut x = Tensor::cat(vec![feats, z.reshape([bn, l, 1, 1]).expand([bn, l, h, w])], 1);
        let conv = |layer: &Conv2d, x| {
            burn_conv2d(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()), ConvOptions::new([1, 1], [0, 0], [1, 1], 1))
        };
        for layer in &f.layers {
            x = relu(conv(layer, x));
        }
        conv(&f.out, x)
    }

    #[test]
    fn the_output_bias_starts_at_the_priors_logit() {
        let device = Device::default();
        for (prior, logit) in [(0.05, -2.944), (0.5, 0.0), (0.9, 2.197)] {
            let bias: f32 = output_conv(4, prior, &device).bias.unwrap().val().into_scalar();
            assert!((bias - logit).abs() < 1e-3, "prior {prior}: bias {bias}, want {logit}");
        }
    }

    #[test]
    fn orthogonal_init_zeroes_the_hidden_biases_and_keeps_the_output_prior() {
        let device = Device::default();
        let f = crate::model::init::apply(Fcomb::new(8, 2, 2, 0.05, &device), crate::model::WeightInit::Orthogonal);
        for layer in &f.layers {
            let bias = layer.bias.as_ref().unwrap().val().into_data().try_to_vec::<f32>().unwrap();
            assert!(bias.iter().all(|&b| b == 0.0), "hidden bias {bias:?}");
        }
        let out: f32 = f.out.bias.as_ref().unwrap().val().into_scalar();
        assert!((out + 2.944).abs() < 1e-3, "output bias {out}");
    }

    #[test]
    fn split_first_layer_matches_the_concatenation() {
        let device = Device::flex();
        for (hidden, b, n, h, w) in [(3, 2, 5, 7, 5), (1, 1, 1, 4, 4), (0, 3, 2, 3, 6)] {
            let f = Fcomb::new(6, 3, hidden, 0.05, &device);
            let features = Tensor::<4>::random([b, 6, h, w], Distribution::Normal(0.0, 1.0), &device);
            let z = Tensor::<2>::random([b * n, 3], Distribution::Normal(0.0, 1.0), &device);
            let got = f.forward(features.clone(), z.clone());
            assert_eq!(got.dims(), [b * n, 1, h, w]);
            got.into_data().assert_approx_eq::<f32>(&reference(&f, features, z).into_data(), Tolerance::relative(1e-4));
        }
    }

    /// The fused per-sample layers (`kernels/head.rs`, where the CPU has them) against burn's ops:
    /// channels that fill the micro-kernel's 16 lanes or not, images of several pixel tiles with
    /// a partial last one, and the autodiff device, which must keep burn's ops. (That a fresh
    /// seeded model gets the same weights either way is in tests/it/kernels.rs, under the lock
    /// of the device's RNG.)
    #[test]
    fn fused_sampling_layers_match_burns_ops() {
        let device = Device::flex();
        for (c, hidden, b, n, h, w) in [(32, 3, 2, 4, 13, 11), (6, 2, 1, 3, 20, 9), (24, 1, 2, 2, 5, 5), (16, 4, 1, 2, 1, 1)] {
            let f = Fcomb::new(c, 6, hidden, 0.05, &device);
            let features = Tensor::<4>::random([b, c, h, w], Distribution::Normal(0.0, 1.0), &device);
            let z = Tensor::<2>::random([b * n, 6], Distribution::Normal(0.0, 1.0), &device);
            let fused = f.forward(features.clone(), z.clone());
            crate::kernels::set_enabled(false);
            let plain = f.forward(features.clone(), z.clone());
            crate::kernels::set_enabled(true);
            assert_eq!(fused.dims(), [b * n, 1, h, w]);
            fused.into_data().assert_approx_eq::<f32>(&plain.into_data(), Tolerance::relative(1e-4));
        }
        // With gradients tracked, the fused path (which has no backward) must stand aside.
        let ad = device.autodiff();
        let f = Fcomb::new(8, 2, 2, 0.05, &ad);
        let features = Tensor::<4>::random([1, 8, 4, 4], Distribution::Normal(0.0, 1.0), &ad).require_grad();
        let z = Tensor::<2>::random([2, 2], Distribution::Normal(0.0, 1.0), &ad);
        let grads = f.forward(features.clone(), z).sum().backward();
        let g = features.grad(&grads).expect("a gradient through fcomb");
        assert!(g.abs().sum().into_scalar::<f32>() > 0.0);
    }
}
