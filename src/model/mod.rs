//! The networks: one module per concept.

pub mod attention_gate;
pub mod blocks;
pub mod config;
pub mod fcomb;
pub mod gaussian;
pub mod prob_unet;
pub mod transformer;
pub mod unet;

pub use config::{ModelConfig, NormKind};
pub use prob_unet::{ProbUNet, elbo_loss};

use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

/// Bilinear resize to `h` x `w` (identity when already that size).
pub fn resample(x: Tensor<4>, h: usize, w: usize) -> Tensor<4> {
    let [_, _, xh, xw] = x.dims();
    if xh == h && xw == w {
        return x;
    }
    interpolate(
        x,
        InterpolateOptions::new(InterpolateMode::Bilinear)
            .with_align_corners(false)
            .with_output_size([h, w]),
    )
}

/// Copies a float tensor to the host.
pub fn to_host<const D: usize>(t: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading tensor back from the device: {e:?}"))
}
