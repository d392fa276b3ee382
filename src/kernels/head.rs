//! fcomb's per-sample layers at inference, fused. Sampling n masks per image runs fcomb's
//! 1x1 layers on n copies of the image's features. Through burn, each op materialises a
//! `[B*n, C, H, W]` tensor, and each convolution adds copies to and from channels-last. Here
//! each pixel tile goes through all of a sample's layers in L1:
//! relu(first-layer features + the sample's bias) -> (dense + bias + relu)* -> dense to one logit.
//! Inference only: no backward pass. The caller keeps burn's ops whenever a gradient could flow.

use rayon::prelude::*;

use super::direct::Dense;
use super::layout::{SharedOut, transpose_into};

/// Pixels per tile: 16 micro-kernel blocks of 6; a 32-channel tile is 12 KiB.
const TILE: usize = 96;

/// A hidden 1x1 layer `[co][ci]` with its bias.
pub struct Layer<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
}

/// Logits `[b * n, hw]` (image-major, n samples per image).
/// - `feat` `[b, c, hw]`: the first layer's feature part, before its bias;
/// - `per_sample` `[b * n, c]`: the first layer's latent part plus its bias, per sample;
/// - `hidden`: the layers after the first, each `c -> c`;
/// - `out`: the last layer's weights `[c]` and bias, to one channel.
///
/// One task per pixel tile of an image: the tile's features are turned pixel-major once and
/// shared by its n samples, and the last layer runs on the micro-kernel too: 1.19x faster than a
/// strided scalar transpose per sample and a scalar dot product per pixel, whose adds each
/// waited on the one before (docs/benchmarks.md).
pub fn fcomb_tail(
    feat: &[f32],
    (b, c, hw): (usize, usize, usize),
    per_sample: &[f32],
    n: usize,
    hidden: &[Layer],
    out: (&[f32], f32),
) -> Vec<f32> {
    assert!(feat.len() == b * c * hw && per_sample.len() == b * n * c && out.0.len() == c);
    assert!(hidden.iter().all(|l| l.weight.len() == c * c && l.bias.len() == c));
    // Each layer's input rows are as wide as the previous layer's padded output.
    let mut stride = c;
    let dense: Vec<Dense> = hidden
        .iter()
        .map(|l| {
            let d = Dense::new(l.weight, c, c, stride);
            stride = d.cop;
            d
        })
        .collect();
    let last = Dense::new(out.0, 1, c, stride);
    let width = dense.iter().map(|d| d.cop).chain([last.cop, c]).max().unwrap_or(c);
    let tiles = hw.div_ceil(TILE);
    let mut logits = vec![0f32; b * n * hw];
    let dst = SharedOut(logits.as_mut_ptr());
    (0..b * tiles).into_par_iter().for_each_init(
        || (vec![0f32; TILE * c], vec![0f32; TILE * width], vec![0f32; TILE * width]),
        |(feat_t, x, y), task| {
            let (image, t0) = (task / tiles, task % tiles * TILE);
            let px = TILE.min(hw - t0);
            // The tile's features, pixel-major, once for all its samples.
            transpose_into(&feat[image * c * hw + t0..], hw, feat_t, c, c, px);
            for s in 0..n {
                let bias = &per_sample[(image * n + s) * c..][..c];
                // relu(features + this sample's bias).
                for (xp, fp) in x.chunks_exact_mut(c).zip(feat_t.chunks_exact(c)).take(px) {
                    xp.iter_mut().zip(fp).zip(bias).for_each(|((v, f), b)| *v = (f + b).max(0.0));
                }
                for (d, l) in dense.iter().zip(hidden) {
                    d.apply(x, px, y);
                    for pixel in y.chunks_exact_mut(d.cop).take(px) {
                        pixel.iter_mut().zip(l.bias).for_each(|(v, b)| *v = (*v + b).max(0.0));
                        // The padded channels stay 0 (no weights, no bias).
                    }
                    std::mem::swap(x, y);
                }
                last.apply(x, px, y);
                // SAFETY: pixels t0..t0 + px of sample s of `image`: inside `logits`, and this
                // task's tile alone.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.add((image * n + s) * hw + t0).0, px) };
                for (l, v) in row.iter_mut().zip(y.chunks_exact(last.cop)) {
                    *l = v[0] + out.1;
                }
            }
        },
    );
    logits
}
