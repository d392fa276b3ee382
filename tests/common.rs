#![allow(dead_code)]

use std::path::PathBuf;

use apunet::model::{ModelConfig, NormKind};

/// `../shared/data`, or APUNET_SHARED_DATA.
pub fn shared_data() -> PathBuf {
    std::env::var_os("APUNET_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// A model small enough for tests: two levels, a transformer at the one decoder level.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        filters: vec![8, 16],
        convs_per_block: 2,
        norm: NormKind::Group,
        transformer_heads: 2,
        latent_dim: 3,
        ..Default::default()
    }
}
