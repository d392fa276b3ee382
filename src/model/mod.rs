//! The networks: one module per concept.

pub mod attention_gate;
pub mod blocks;
pub mod config;
pub mod fcomb;
pub mod gaussian;
pub mod hpunet;
pub mod init;
pub mod levels;
pub mod prob_unet;
pub mod residual;
pub mod segmenter;
pub mod transformer;
pub mod unet;

pub use crate::kernels::to_host;
pub use config::{ModelConfig, ModelKind, NormKind};
pub use hpunet::HPUNet;
pub use init::WeightInit;
pub use levels::TransformerLevels;
pub use prob_unet::{ProbUNet, elbo_loss};
pub use segmenter::{Encoded, Segmenter, TrainOut};

use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};

/// Bilinear resize to `h` x `w` (identity when already that size). The models only ever
/// double (every size is a multiple of 2^(depth-1)); that case is `upsample2x`, differentiable
/// on every backend. Other sizes use burn's interpolate, whose backward the GPU backends lack.
pub fn resample(x: Tensor<4>, h: usize, w: usize) -> Tensor<4> {
    let [_, _, xh, xw] = x.dims();
    if xh == h && xw == w {
        return x;
    }
    if h == 2 * xh && w == 2 * xw {
        return upsample2x(x);
    }
    interpolate(x, InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false).with_output_size([h, w]))
}

/// Bilinear x2 upsampling with align_corners = false, built from slices so that every backend
/// can differentiate it (burn-cubecl 0.22.1 has no bilinear interpolate backward): along each
/// axis out[2i] = 3/4 x[i] + 1/4 x[i-1] and out[2i+1] = 3/4 x[i] + 1/4 x[i+1], edges clamped.
/// On the CPU kernels, one pass (`kernels::resize`, the same bits).
pub fn upsample2x(x: Tensor<4>) -> Tensor<4> {
    crate::kernels::resize::upsample2x_on_kernel(x).unwrap_or_else(|x| upsample2x_axis(upsample2x_axis(x, 2), 3))
}

fn upsample2x_axis(x: Tensor<4>, dim: usize) -> Tensor<4> {
    let mut dims = x.dims();
    let n = dims[dim];
    let (prev, next) = if n == 1 {
        (x.clone(), x.clone())
    } else {
        let edge = |at: usize| x.clone().narrow(dim, at, 1);
        (
            Tensor::cat(vec![edge(0), x.clone().narrow(dim, 0, n - 1)], dim),
            Tensor::cat(vec![x.clone().narrow(dim, 1, n - 1), edge(n - 1)], dim),
        )
    };
    let even = x.clone() * 0.75 + prev * 0.25;
    let odd = x * 0.75 + next * 0.25;
    dims[dim] *= 2;
    // Stacking on a new axis after `dim` and merging the two interleaves even and odd rows.
    Tensor::stack::<5>(vec![even, odd], dim + 1).reshape(dims)
}
