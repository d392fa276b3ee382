//! The model's configuration, saved with every run so `sample` rebuilds it from the run alone.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

pub use super::init::WeightInit;
pub use super::levels::TransformerLevels;

/// Normalisation after each 3x3 convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    /// Batch norm: running statistics at inference lag behind fast training (small batches).
    Batch,
    /// Group norm with up to 8 groups: the same computation in training and inference and
    /// independent of batch size (nnU-Net uses instance norm for the same reason). Default.
    Group,
    None,
}

/// Which model a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Probabilistic U-Net: one global latent vector, an Attention U-Net backbone. Default.
    #[default]
    Punet,
    /// Hierarchical Probabilistic U-Net: per-pixel latents at the coarsest decoder scales.
    Hpunet,
}

/// The reference HPU-Net's channels per level for 128x128 crops (128 px down to 1 px).
pub const HPUNET_FILTERS: [usize; 8] = [24, 48, 96, 192, 192, 192, 192, 192];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub kind: ModelKind,
    pub in_channels: usize,
    /// Filters per level; its length is the depth.
    pub filters: Vec<usize>,
    pub convs_per_block: usize,
    pub norm: NormKind,
    /// Additive attention gates on the skip connections (off: a plain U-Net, for ablation).
    pub attention_gates: bool,
    /// Decoder levels (0 = full resolution) with a self-attention block before them.
    pub transformer_levels: TransformerLevels,
    pub transformer_heads: usize,
    pub latent_dim: usize,
    /// 1x1 conv + ReLU layers in fcomb before the final 1x1 conv to logits.
    pub fcomb_layers: usize,
    /// Clamp range for the Gaussians' log sigma: keeps exp() finite (the public PyTorch port NaNs here).
    pub log_sigma_min: f32,
    pub log_sigma_max: f32,
    /// HPU-Net: decoder scales with latents, counted from the coarsest level.
    pub latent_scales: usize,
    /// HPU-Net: latent channels per pixel at each scale.
    pub latent_channels: usize,
    /// HPU-Net: residual blocks per level.
    pub res_blocks: usize,
    /// Each pixel's lesion probability before training: the output bias starts at its logit.
    /// 0.05 (lesions cover a few percent of a crop); DeepMind's HPU-Net starts at 0.5.
    pub output_prior: f32,
    /// How the convolutions' weights start: burn's default or orthogonal (DeepMind's HPU-Net).
    pub init: WeightInit,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            filters: vec![32, 64, 128, 192],
            convs_per_block: 3,
            norm: NormKind::Group,
            attention_gates: true,
            transformer_levels: TransformerLevels::Coarsest,
            transformer_heads: 4,
            latent_dim: 6,
            fcomb_layers: 3,
            log_sigma_min: -8.0,
            log_sigma_max: 4.0,
            kind: ModelKind::Punet,
            latent_scales: 4,
            latent_channels: 1,
            res_blocks: 3,
            output_prior: 0.05,
            init: WeightInit::Default,
        }
    }
}

impl ModelConfig {
    /// The reference HPU-Net for `size`-pixel crops: as many of its 8 levels as halve down to
    /// 1 px, no attention gates, no transformers. `attention` makes it the Hierarchical
    /// Probabilistic Attention U-Net (gates on every skip, a transformer as
    /// [`Self::hpunet_transformer_levels`] places it).
    pub fn hpunet(size: usize, attention: bool) -> Self {
        let depth = Self::hpunet_depth(size, size, size);
        Self {
            kind: ModelKind::Hpunet,
            filters: HPUNET_FILTERS[..depth].to_vec(),
            norm: NormKind::None,
            attention_gates: attention,
            transformer_levels: Self::hpunet_transformer_levels(depth, attention),
            latent_scales: 4.min(depth - 1),
            ..Self::default()
        }
    }

    /// The reference HPU-Net's depth (2 to 8) for `h` x `w` inputs trained on `side`-px crops or
    /// patches: the most levels whose coarsest still holds a pixel and that h and w halve into.
    pub fn hpunet_depth(h: usize, w: usize, side: usize) -> usize {
        // The crops and the training patches (`side`) must both halve d - 1 times.
        let fits = |d: usize| side >= 1 << (d - 1) && [h, w, side].iter().all(|n| n % (1 << (d - 1)) == 0);
        (2..=HPUNET_FILTERS.len()).rev().find(|&d| fits(d)).unwrap_or(2)
    }

    /// The reference HPU-Net's transformer levels at `depth`: with `attention`, self-attention
    /// over the features before the finest of its 4 latent scales (8x8, 64 tokens, at 128 px;
    /// the coarser levels hold 1 to 16 tokens); none without.
    pub fn hpunet_transformer_levels(depth: usize, attention: bool) -> TransformerLevels {
        if attention { TransformerLevels::Levels(vec![depth - 1 - 4.min(depth - 1)]) } else { TransformerLevels::None }
    }

    /// The model a run of `kind` starts from: the Probabilistic U-Net's defaults, or the
    /// reference HPU-Net for 128-px crops (its depth is fitted to the data when the run starts),
    /// `attention` making it the attention variant. `in_channels` carries over.
    pub fn for_kind(kind: ModelKind, attention: bool, in_channels: usize) -> Self {
        let base = match kind {
            ModelKind::Punet => Self::default(),
            ModelKind::Hpunet => Self::hpunet(128, attention),
        };
        Self { in_channels, ..base }
    }

    /// A plain U-Net backbone: no attention gates, no transformer.
    pub fn without_attention(&mut self) {
        self.attention_gates = false;
        self.transformer_levels = TransformerLevels::None;
    }

    /// Turns an HPU-Net into its attention variant (gates and the reference's transformer).
    pub fn with_hpunet_attention(&mut self) {
        self.attention_gates = true;
        self.transformer_levels = Self::hpunet_transformer_levels(self.depth(), true);
    }

    pub fn depth(&self) -> usize {
        self.filters.len()
    }

    /// New filters (and so a new depth); the HPU-Net's reference defaults that depend on the
    /// depth (its transformer level, its latent scales) follow it, settings given otherwise stay.
    pub fn set_filters(&mut self, filters: Vec<usize>) {
        let old = self.depth().max(1);
        let hp = self.kind == ModelKind::Hpunet;
        let default_levels = hp && self.transformer_levels == Self::hpunet_transformer_levels(old, self.attention_gates);
        let default_scales = hp && self.latent_scales == 4.min(old - 1);
        self.filters = filters;
        let new = self.depth().max(1);
        if default_levels {
            self.transformer_levels = Self::hpunet_transformer_levels(new, self.attention_gates);
        }
        if default_scales {
            self.latent_scales = 4.min(new - 1);
        }
    }

    /// Decoder levels that get a transformer block, resolved from the default and "all".
    pub fn transformer_levels(&self) -> Vec<usize> {
        self.transformer_levels.resolve(self.depth())
    }

    /// H and W must halve cleanly at every level.
    pub fn size_multiple(&self) -> usize {
        1 << self.depth().saturating_sub(1)
    }

    pub fn validate(&self) -> Result<()> {
        if self.filters.is_empty() {
            bail!("model.filters must list at least one level");
        }
        if self.filters.contains(&0) {
            bail!("model.filters must all be positive, got {:?}", self.filters);
        }
        if self.convs_per_block == 0 {
            bail!("model.convs_per_block must be at least 1");
        }
        if self.latent_dim == 0 {
            bail!("model.latent_dim must be at least 1");
        }
        if self.in_channels == 0 {
            bail!("model.in_channels must be at least 1");
        }
        if !(self.output_prior > 0.0 && self.output_prior < 1.0) {
            bail!("model.output_prior must be a probability strictly between 0 and 1, got {}", self.output_prior);
        }
        if self.log_sigma_min >= self.log_sigma_max {
            bail!("model.log_sigma_min must be below log_sigma_max");
        }
        if self.kind == ModelKind::Hpunet {
            if self.latent_scales == 0 || self.latent_scales >= self.depth() {
                bail!(
                    "model.latent_scales must be between 1 and depth - 1 = {} for {} levels, got {}",
                    self.depth().saturating_sub(1),
                    self.depth(),
                    self.latent_scales
                );
            }
            if self.latent_channels == 0 || self.res_blocks == 0 {
                bail!("model.latent_channels and model.res_blocks must be at least 1");
            }
        }
        for l in self.transformer_levels() {
            if l + 1 >= self.depth() {
                bail!(
                    "model.transformer_levels: decoder level {l} does not exist (decoder levels are 0..{})",
                    self.depth().saturating_sub(1)
                );
            }
            let c = self.filters[l + 1];
            if self.transformer_heads == 0 || !c.is_multiple_of(self.transformer_heads) {
                bail!("model.transformer_heads ({}) must divide the {c} channels at decoder level {l}", self.transformer_heads);
            }
        }
        if self.norm == NormKind::Group {
            for &c in &self.filters {
                if c % group_count(c) != 0 {
                    bail!("group norm needs filters divisible by their group count, got {c}");
                }
            }
        }
        Ok(())
    }

    /// Full self-attention over more tokens than this costs gigabytes (tokens^2 per head).
    pub const TRANSFORMER_TOKEN_WARNING: usize = 2500;

    /// A warning per transformer level whose attention (over the whole map up to 1,024 tokens,
    /// else over windows) holds more tokens than is sensible at input size `h` x `w`.
    pub fn transformer_warnings(&self, h: usize, w: usize) -> Vec<String> {
        use super::transformer::{FULL_ATTENTION_TOKENS, window_side};
        self.transformer_levels()
            .into_iter()
            .filter_map(|l| {
                let (th, tw) = (h >> (l + 1), w >> (l + 1));
                let tokens = if th * tw <= FULL_ATTENTION_TOKENS { th * tw } else { window_side(th) * window_side(tw) };
                (tokens > Self::TRANSFORMER_TOKEN_WARNING).then(|| {
                    let gib = (tokens * tokens * 4 * self.transformer_heads) as f64 / (1u64 << 30) as f64;
                    format!(
                        "the transformer at decoder level {l} attends over {tokens} tokens at a time at {h}x{w} (the map's \
                         sides have no small divisor for windows): {gib:.1} GiB of attention scores per window; \
                         choose other levels (--transformer-levels) or crops whose sides are multiples of 8"
                    )
                })
            })
            .collect()
    }

    /// Checks an input size against the depth, with an error a user can act on.
    pub fn check_size(&self, h: usize, w: usize) -> Result<()> {
        let m = self.size_multiple();
        if !h.is_multiple_of(m) || !w.is_multiple_of(m) || h == 0 || w == 0 {
            bail!(
                "image size {h}x{w} is not divisible by 2^(depth-1) = {m} for a model of depth {}; \
                 crop or pad the images to a multiple of {m}",
                self.depth()
            );
        }
        Ok(())
    }
}

pub fn group_count(channels: usize) -> usize {
    (1..=8).rev().find(|g| channels.is_multiple_of(*g)).unwrap_or(1)
}
