//! fcomb's per-sample layers at inference, fused. Sampling n masks per image runs fcomb's
//! 1x1 layers on n copies of the image's features. Through burn, each op materialises a
//! `[B*n, C, H, W]` tensor, and each convolution adds copies to and from channels-last. Here
//! each pixel tile goes through all of a sample's layers in L1:
//! relu(first-layer features + the sample's bias) -> (dense + bias + relu)* -> dense to one logit.
//! Inference only: no backward pass. The caller keeps burn's ops whenever a gradient could flow.

use rayon::prelude::*;

use super::direct::Dense;

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
    let width = dense.iter().map(|d| d.cop).max().unwrap_or(c).max(c);
    // The last layer's input rows: as wide as the last hidden layer's padded output.
    let last_stride = dense.last().map_or(c, |d| d.cop);
    let mut logits = vec![0f32; b * n * hw];
    logits.par_chunks_mut(hw.max(1)).enumerate().for_each_init(
        || (vec![0f32; TILE * width], vec![0f32; TILE * width]),
        |(x, y), (row, logit)| {
            let image = &feat[row / n * c * hw..][..c * hw];
            let bias = &per_sample[row * c..][..c];
            for t0 in (0..hw).step_by(TILE) {
                let px = TILE.min(hw - t0);
                // relu(features + this sample's bias), pixel-major.
                for (ch, plane) in image.chunks_exact(hw).enumerate() {
                    for (p, v) in plane[t0..t0 + px].iter().enumerate() {
                        x[p * c + ch] = (v + bias[ch]).max(0.0);
                    }
                }
                for (d, l) in dense.iter().zip(hidden) {
                    d.apply(x, px, y);
                    for pixel in y.chunks_exact_mut(d.cop).take(px) {
                        pixel.iter_mut().zip(l.bias).for_each(|(v, b)| *v = (*v + b).max(0.0));
                        // The padded channels stay 0 (no weights, no bias).
                    }
                    std::mem::swap(x, y);
                }
                for (p, l) in logit[t0..t0 + px].iter_mut().enumerate() {
                    *l = out.1 + x[p * last_stride..][..c].iter().zip(out.0).map(|(v, w)| v * w).sum::<f32>();
                }
            }
        },
    );
    logits
}
