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

/// burn's RNG is per device and process-wide: tests that seed it or build models hold this
/// lock so parallel tests cannot interleave their draws.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
