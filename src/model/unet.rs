//! Attention U-Net: the encoder, then per decoder level an optional transformer block on the
//! coarser features, an attention gate on the skip, bilinear upsampling, concat and convs.

use burn::prelude::*;

use super::attention_gate::AttentionGate;
use super::blocks::{ConvBlock, Encoder};
use super::config::ModelConfig;
use super::resample;
use super::transformer::TransformerBlock;

#[derive(Module, Debug)]
pub struct DecoderLevel {
    transformer: Option<TransformerBlock>,
    gate: Option<AttentionGate>,
    block: ConvBlock,
}

#[derive(Module, Debug)]
pub struct AttentionUNet {
    encoder: Encoder,
    /// Coarsest decoder level first.
    decoder: Vec<DecoderLevel>,
}

impl AttentionUNet {
    pub fn new(cfg: &ModelConfig, device: &Device) -> Self {
        let f = &cfg.filters;
        let encoder = Encoder::new(cfg.in_channels, f, cfg.convs_per_block, cfg.norm, device);
        let transformers = cfg.transformer_levels();
        let decoder = (0..f.len().saturating_sub(1))
            .rev()
            .map(|l| DecoderLevel {
                transformer: transformers.contains(&l).then(|| TransformerBlock::new(f[l + 1], cfg.transformer_heads, l % 2 == 1, device)),
                gate: cfg.attention_gates.then(|| AttentionGate::new(f[l], f[l + 1], device)),
                block: ConvBlock::new(f[l] + f[l + 1], f[l], cfg.convs_per_block, cfg.norm, device),
            })
            .collect();
        Self { encoder, decoder }
    }

    /// The last decoder features, [B, filters[0], H, W].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.decode(x, None)
    }

    /// Attention coefficients of every gate, coarsest first (for figures and tests).
    pub fn attention_maps(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut maps = Vec::new();
        self.decode(x, Some(&mut maps));
        maps
    }

    fn decode(&self, x: Tensor<4>, mut maps: Option<&mut Vec<Tensor<4>>>) -> Tensor<4> {
        let mut skips = self.encoder.forward(x);
        let mut g = skips.pop().expect("at least one level");
        for level in &self.decoder {
            let skip = skips.pop().expect("one skip per decoder level");
            if let Some(t) = &level.transformer {
                g = t.forward(g);
            }
            let [_, _, h, w] = skip.dims();
            let skip = match &level.gate {
                Some(gate) => {
                    let alpha = gate.coefficients(skip.clone(), g.clone());
                    if let Some(maps) = maps.as_deref_mut() {
                        maps.push(alpha.clone());
                    }
                    skip * alpha
                }
                None => skip,
            };
            let up = resample(g, h, w);
            g = level.block.forward(Tensor::cat(vec![up, skip], 1));
        }
        g
    }
}
