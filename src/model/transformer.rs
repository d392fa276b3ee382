//! A pre-norm transformer block over a feature map's pixels: multi-head self-attention and an
//! MLP, each residual, with a fixed 2D sinusoidal position encoding (works at any H x W).
//! Above [`FULL_ATTENTION_TOKENS`] tokens, attention runs within windows of about 8x8 pixels,
//! shifted by half a window on alternate levels (Swin): full attention over a 64x64 map holds
//! 16.8 million scores per head and image, windows hold 64 per token.

use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Bool;

/// Maps with more tokens than this attend within windows.
pub const FULL_ATTENTION_TOKENS: usize = 1024;

#[derive(Module, Debug)]
pub struct TransformerBlock {
    norm1: LayerNorm,
    attn: MultiHeadAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    /// 1: windows shifted by half their size (when windowed).
    shifted: usize,
}

impl TransformerBlock {
    pub fn new(channels: usize, heads: usize, shifted: bool, device: &Device) -> Self {
        Self {
            norm1: LayerNormConfig::new(channels).init(device),
            attn: MultiHeadAttentionConfig::new(channels, heads).with_dropout(0.0).init(device),
            norm2: LayerNormConfig::new(channels).init(device),
            fc1: LinearConfig::new(channels, 2 * channels).init(device),
            fc2: LinearConfig::new(2 * channels, channels).init(device),
            shifted: usize::from(shifted),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let device = x.device();
        let pos = position_encoding(h, w, c, &device);
        let x = x + pos;
        if h * w <= FULL_ATTENTION_TOKENS {
            let tokens = x.reshape([b, c, h * w]).swap_dims(1, 2);
            return self.tokens(tokens, None).swap_dims(1, 2).reshape([b, c, h, w]);
        }
        let (wh, ww) = (window_side(h), window_side(w));
        let shift = if self.shifted == 1 { [wh / 2, ww / 2] } else { [0, 0] };
        let x = roll(roll(x, 2, h - shift[0]), 3, w - shift[1]);
        let labels = (shift != [0, 0]).then(|| shifted_window_labels([h, w], [wh, ww], shift));
        let t = self.tokens(partition(x, wh, ww), labels.as_deref());
        let x = unpartition(t, [b, c, h, w], wh, ww);
        roll(roll(x, 2, shift[0]), 3, shift[1])
    }

    /// Attention and MLP over token sequences [N, T, C]. `labels` [W, T]: sequence n's tokens
    /// attend only to tokens of their own label in row n mod W.
    fn tokens(&self, t: Tensor<3>, labels: Option<&[f32]>) -> Tensor<3> {
        let normed = self.norm1.forward(t.clone());
        // The fused kernel where it runs (flex), burn's attention with the mask elsewhere.
        let attended = crate::kernels::self_attention(&self.attn, &normed, labels).unwrap_or_else(|| {
            let [n, tokens, _] = normed.dims();
            let mut input = MhaInput::self_attn(normed.clone());
            if let Some(l) = labels {
                input = input.mask_attn(label_mask(l, n, tokens, &normed.device()));
            }
            self.attn.forward(input).context
        });
        let t = t + attended;
        t.clone() + self.fc2.forward(crate::kernels::gelu(self.fc1.forward(self.norm2.forward(t))))
    }
}

/// A window side for a map side `n`: a divisor of n, 8 to 16 if there is one, else the
/// largest below 8 (the maps' sides are multiples of powers of two), else n itself.
pub fn window_side(n: usize) -> usize {
    (8..=16).chain((2..8).rev()).find(|d| n.is_multiple_of(*d)).unwrap_or(n)
}

/// Cyclic shift by `k` (0..n) along `dim`: element i moves to (i + k) mod n.
fn roll(x: Tensor<4>, dim: usize, k: usize) -> Tensor<4> {
    let n = x.dims()[dim];
    let k = k % n.max(1);
    if k == 0 {
        return x;
    }
    Tensor::cat(vec![x.clone().narrow(dim, n - k, k), x.narrow(dim, 0, n - k)], dim)
}

/// [B,C,H,W] to windows of tokens [B * windows, wh * ww, C].
fn partition(x: Tensor<4>, wh: usize, ww: usize) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / wh, wh, w / ww, ww]).permute([0, 2, 4, 3, 5, 1]).reshape([b * (h / wh) * (w / ww), wh * ww, c])
}

fn unpartition(t: Tensor<3>, [b, c, h, w]: [usize; 4], wh: usize, ww: usize) -> Tensor<4> {
    t.reshape([b, h / wh, w / ww, wh, ww, c]).permute([0, 5, 1, 3, 2, 4]).reshape([b, c, h, w])
}

/// Swin's regions for shifted windows, [windows, wh * ww]: after the shift, windows at the
/// map's far edges hold pixels from opposite sides, and a pixel may attend only to pixels of
/// its own region (side).
fn shifted_window_labels([h, w]: [usize; 2], [wh, ww]: [usize; 2], [sh, sw]: [usize; 2]) -> Vec<f32> {
    // Region of a row (col) of the shifted map: 0 inside, 1 and 2 for the edge bands.
    let region = |i: usize, n: usize, win: usize, s: usize| usize::from(i >= n - win) + usize::from(i >= n - s);
    let (nh, nw, t) = (h / wh, w / ww, wh * ww);
    let mut labels = Vec::with_capacity(nh * nw * t);
    for wy in 0..nh {
        for wx in 0..nw {
            labels.extend((0..t).map(|k| {
                let (y, x) = (wy * wh + k / ww, wx * ww + k % ww);
                (region(y, h, wh, sh) * 3 + region(x, w, ww, sw)) as f32
            }));
        }
    }
    labels
}

/// burn's attention mask [n, T, T] for `labels` [W, T]: true where two tokens' labels differ.
fn label_mask(labels: &[f32], n: usize, t: usize, device: &Device) -> Tensor<3, Bool> {
    let rows = labels.len() / t;
    let mut mask = Vec::with_capacity(rows * t * t);
    for row in labels.chunks(t) {
        for &own in row {
            mask.extend(row.iter().map(|&l| l != own));
        }
    }
    let per_row = Tensor::<3, Bool>::from_data(TensorData::new(mask, [rows, t, t]), device);
    per_row.unsqueeze_dim::<4>(0).expand([n / rows, rows, t, t]).reshape([n, t, t])
}

/// [1, C, H, W]: the first half of the channels encodes the row, the second half the column.
/// A channel depends on one axis only, so each axis' sines and cosines are taken once per
/// position and channel and then repeated over the other axis: per pixel and channel they were
/// a million `powf` and `sin` calls per forward of a 128 px map's block, on one thread (the
/// PyTorch peer keeps its encoding between calls).
pub fn position_encoding(h: usize, w: usize, c: usize, device: &Device) -> Tensor<4> {
    let half = c / 2;
    // [width][n]: channel i of an axis `width` channels wide, at each of its n positions.
    let axis = |n: usize, width: usize| -> Vec<f32> {
        (0..width)
            .flat_map(|i| {
                let freq = 1.0 / 10000f32.powf((2 * (i / 2)) as f32 / width.max(1) as f32);
                (0..n).map(move |pos| {
                    let a = pos as f32 * freq;
                    if i % 2 == 0 { a.sin() } else { a.cos() }
                })
            })
            .collect()
    };
    let (rows, cols) = (axis(h, half), axis(w, c - half));
    let mut data = Vec::with_capacity(c * h * w);
    for row in rows.chunks_exact(h.max(1)) {
        row.iter().for_each(|&v| data.extend(std::iter::repeat_n(v, w)));
    }
    for col in cols.chunks_exact(w.max(1)) {
        (0..h).for_each(|_| data.extend_from_slice(col));
    }
    Tensor::from_data(TensorData::new(data, [1, c, h, w]), device)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    /// Windowed attention done the plain way: the shift as index arithmetic, and each window's
    /// mask as separate attention over each edge region's pixels.
    fn reference(block: &TransformerBlock, x: Tensor<4>) -> Vec<f32> {
        let [b, c, h, w] = x.dims();
        let device = x.device();
        let pos = position_encoding(h, w, c, &device);
        let xs = (x + pos).into_data().try_to_vec::<f32>().unwrap();
        let (wh, ww) = (window_side(h), window_side(w));
        let [sh, sw] = if block.shifted == 1 { [wh / 2, ww / 2] } else { [0, 0] };
        let region = |i: usize, n: usize, win: usize, s: usize| usize::from(i >= n - win) + usize::from(s > 0 && i >= n - s);
        let mut out = vec![f32::NAN; xs.len()];
        for bi in 0..b {
            for wy in 0..h / wh {
                for wx in 0..w / ww {
                    let mut groups: std::collections::BTreeMap<usize, Vec<(usize, usize)>> = Default::default();
                    for k in 0..wh * ww {
                        let (ys, xs_) = (wy * wh + k / ww, wx * ww + k % ww);
                        let label = region(ys, h, wh, sh) * 3 + region(xs_, w, ww, sw);
                        groups.entry(label).or_default().push(((ys + sh) % h, (xs_ + sw) % w));
                    }
                    for pixels in groups.values() {
                        let at = |ch: usize, (y, x): (usize, usize)| ((bi * c + ch) * h + y) * w + x;
                        let xs = &xs;
                        let vals: Vec<f32> = pixels.iter().flat_map(|&p| (0..c).map(move |ch| xs[at(ch, p)])).collect();
                        let t = Tensor::<3>::from_data(TensorData::new(vals, [1, pixels.len(), c]), &device);
                        let r = block.tokens(t, None).into_data().try_to_vec::<f32>().unwrap();
                        for (i, &p) in pixels.iter().enumerate() {
                            for ch in 0..c {
                                out[at(ch, p)] = r[i * c + ch];
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The encoding from its axis tables against the formula per pixel and channel, bit for bit,
    /// with an odd channel count (the column half one wider).
    #[test]
    fn position_encoding_is_the_per_pixel_formula() {
        let device = Device::flex();
        let (h, w, c) = (5, 7, 9);
        let got = position_encoding(h, w, c, &device).into_data().try_to_vec::<f32>().unwrap();
        let half = c / 2;
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    let (pos, i, width) = if ch < half { (y, ch, half) } else { (x, ch - half, c - half) };
                    let a = pos as f32 * (1.0 / 10000f32.powf((2 * (i / 2)) as f32 / width as f32));
                    let want = if i % 2 == 0 { a.sin() } else { a.cos() };
                    assert_eq!(got[(ch * h + y) * w + x].to_bits(), want.to_bits(), "y {y} x {x} channel {ch}");
                }
            }
        }
    }

    #[test]
    fn windowed_and_shifted_attention_match_a_plain_reference() {
        let device = Device::flex();
        // 36x40 = 1440 tokens: windows of 9x8.
        let x = Tensor::<4>::random([2, 4, 36, 40], Distribution::Normal(0.0, 1.0), &device);
        for shifted in [false, true] {
            let block = TransformerBlock::new(4, 2, shifted, &device);
            let got = block.forward(x.clone()).into_data().try_to_vec::<f32>().unwrap();
            let want = reference(&block, x.clone());
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-4, "shifted {shifted}: differs from the reference by {err}");
        }
        assert_eq!((window_side(64), window_side(68), window_side(37), window_side(12)), (8, 4, 37, 12));
    }
}
