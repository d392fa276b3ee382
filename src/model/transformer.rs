//! A pre-norm transformer block over a feature map's pixels: multi-head self-attention and an
//! MLP, each residual, with a fixed 2D sinusoidal position encoding (works at any H x W).

use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;

#[derive(Module, Debug)]
pub struct TransformerBlock {
    norm1: LayerNorm,
    attn: MultiHeadAttention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl TransformerBlock {
    pub fn new(channels: usize, heads: usize, device: &Device) -> Self {
        Self {
            norm1: LayerNormConfig::new(channels).init(device),
            attn: MultiHeadAttentionConfig::new(channels, heads).with_dropout(0.0).init(device),
            norm2: LayerNormConfig::new(channels).init(device),
            fc1: LinearConfig::new(channels, 2 * channels).init(device),
            fc2: LinearConfig::new(2 * channels, channels).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let device = x.device();
        let tokens = x.reshape([b, c, h * w]).swap_dims(1, 2);
        let pos = position_encoding(h, w, c, &device).unsqueeze_dim::<3>(0);
        let t = tokens + pos;
        let attended = self.attn.forward(MhaInput::self_attn(self.norm1.forward(t.clone()))).context;
        let t = t + attended;
        let t = t.clone() + self.fc2.forward(gelu(self.fc1.forward(self.norm2.forward(t))));
        t.swap_dims(1, 2).reshape([b, c, h, w])
    }
}

/// [H*W, C]: the first half of the channels encodes the row, the second half the column.
pub fn position_encoding(h: usize, w: usize, c: usize, device: &Device) -> Tensor<2> {
    let half = c / 2;
    let mut data = vec![0f32; h * w * c];
    for y in 0..h {
        for x in 0..w {
            let row = &mut data[(y * w + x) * c..(y * w + x + 1) * c];
            for (pos, offset, width) in [(y, 0, half), (x, half, c - half)] {
                for i in 0..width {
                    let freq = 1.0 / 10000f32.powf((2 * (i / 2)) as f32 / width.max(1) as f32);
                    let a = pos as f32 * freq;
                    row[offset + i] = if i % 2 == 0 { a.sin() } else { a.cos() };
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [h * w, c]), device)
}
