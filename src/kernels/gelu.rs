//! GELU, x Phi(x) with the exact normal CDF, and its gradient: the transformer's MLP. flex
//! evaluates libm's scalar erff one value at a time, 4.7 ms of an 18 ms transformer block over
//! a 32x32 map (batch 8, 64 hidden channels) on the Zen 4; here the erf is a rational function
//! the compiler vectorises, over chunks shared out to the cores.

use rayon::prelude::*;

use super::vmath::{erf, exp};

/// Values per task: large enough to amortise the hand-out, small enough to share 2 cores.
const CHUNK: usize = 8 * 1024;

#[inline(always)]
fn cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn forward_chunk(x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * cdf(x));
}

/// d/dx x Phi(x) = Phi(x) + x phi(x).
#[inline(always)]
fn backward_chunk(x: &[f32], g: &[f32], dx: &mut [f32]) {
    // 1 / sqrt(2 pi)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    dx.iter_mut().zip(x.iter().zip(g)).for_each(|(d, (&x, &g))| *d = g * (cdf(x) + x * INV_SQRT_2PI * exp(-0.5 * x * x)));
}

widest!(forward_one, (x: &[f32], y: &mut [f32]) -> (), forward_chunk(x, y));
widest!(backward_one, (x: &[f32], g: &[f32], dx: &mut [f32]) -> (), backward_chunk(x, g, dx));

pub fn forward(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| forward_one(x, y));
    y
}

/// The gradient of [`forward`] at `x` for the output's gradient `grad`.
pub fn backward(x: &[f32], grad: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), grad.len());
    let mut dx = vec![0.0f32; x.len()];
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK))).for_each(|(d, (x, g))| backward_one(x, g, d));
    dx
}
