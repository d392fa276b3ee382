//! Weights to and from PyTorch: a run's network as safetensors under PyTorch's names
//! (`apunet export`), and a run made from such a file (`apunet import-weights`).
//!
//! The key of a tensor is its path in apunet's network (config.toml says which network), with
//! PyTorch's conventions (docs/python.md, "Weights to and from PyTorch"):
//! - a norm's `gamma` / `beta` are `weight` / `bias`, and `norms.K.group.` / `norms.K.batch.`
//!   is `norms.K.` (PyTorch's block holds its `nn.GroupNorm` / `nn.BatchNorm2d` directly);
//! - a linear layer's weight is [out, in] (burn stores [in, out]);
//! - convolutions are [out, in, kh, kw] in both.
//!
//! The metadata key `apunet_config` carries the run's config.toml, so the PyTorch side
//! (`bench/torch_peer.py`) builds the same network from the file alone.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};

use crate::device::parse_device;
use crate::fsio;
use crate::model::{ModelKind, NormKind, Segmenter};
use crate::train::checkpoint::{RunPaths, save_segmenter};
use crate::train::{RunConfig, Which, load_run};

/// The metadata key that holds the run's config.toml.
pub const CONFIG_KEY: &str = "apunet_config";

/// What `export` wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    pub kind: ModelKind,
    pub tensors: usize,
    pub parameters: usize,
}

/// Writes run `run`'s `which` checkpoint to `out` (safetensors, PyTorch's names), atomically.
pub fn export(run: &Path, which: Which, out: &Path) -> Result<Exported> {
    let (cfg, model) = load_run(run, which, &parse_device("cpu")?)?;
    let text = toml::to_string_pretty(&cfg)?;
    fsio::write_atomic_with(out, |tmp| match &model {
        Segmenter::PUNet(m) => save_torch(m, &text, tmp),
        Segmenter::HPUNet(m) => save_torch(m, &text, tmp),
    })?;
    // Tensors include batch norm's running statistics; parameters do not.
    let tensors = model.collect(None, None, true).len();
    Ok(Exported { path: out.to_path_buf(), kind: cfg.model.kind, tensors, parameters: model.num_params() })
}

fn save_torch<M: Module>(model: &M, config_toml: &str, path: &Path) -> Result<()> {
    let mut store = SafetensorsStore::from_file(path)
        .overwrite(true)
        .with_to_adapter(BurnToPyTorchAdapter)
        .with_key_remapping(r"\.norms\.(\d+)\.(group|batch)\.", ".norms.$1.")
        .metadata(CONFIG_KEY, config_toml);
    model.save_into(&mut store).map_err(|e| anyhow!("{e}"))
}

/// Makes run directory `out` (config.toml and the last checkpoint) from `weights`, a safetensors
/// file under the names `export` writes. `config`: a config.toml for a file without the
/// `apunet_config` metadata, or to replace it. Refuses any tensor missing, left over or of
/// another shape, naming the first few.
pub fn import_weights(weights: &Path, config: Option<&Path>, out: &Path) -> Result<RunConfig> {
    let paths = RunPaths::new(out);
    if paths.config().exists() {
        bail!("{} already holds a run (config.toml); choose another --out", out.display());
    }
    let cfg = match config {
        Some(path) => RunConfig::load(path)?,
        None => {
            let text = metadata(weights)?.remove(CONFIG_KEY).ok_or_else(|| {
                anyhow!(
                    "{} has no '{CONFIG_KEY}' metadata (apunet export and bench/torch_peer.py write it); give the network's settings with --config config.toml",
                    weights.display()
                )
            })?;
            let cfg: RunConfig = toml::from_str(&text)
                .with_context(|| format!("the '{CONFIG_KEY}' metadata of {} is not a valid config", weights.display()))?;
            cfg.validate()?;
            cfg
        }
    };
    if cfg.data.height == 0 || cfg.data.width == 0 {
        bail!(
            "the config of {} has no [data] height and width: give the crop size the network was trained on (predict tiles scans in patches of it)",
            weights.display()
        );
    }
    let model = Segmenter::new(&cfg.model, &parse_device("cpu")?);
    let model = match model {
        Segmenter::PUNet(m) => Segmenter::PUNet(load_torch(m, cfg.model.norm, weights)?),
        Segmenter::HPUNet(m) => Segmenter::HPUNet(load_torch(m, cfg.model.norm, weights)?),
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    save_segmenter(&model, &paths.last_model())?;
    // The config last: a directory holds a run only once its weights are in place.
    cfg.save(&paths.config())?;
    Ok(cfg)
}

fn load_torch<M: Module>(mut model: M, norm: NormKind, path: &Path) -> Result<M> {
    let inner = match norm {
        NormKind::Batch => ".norms.$1.batch.",
        NormKind::Group | NormKind::None => ".norms.$1.group.",
    };
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .with_key_remapping(r"\.norms\.(\d+)\.", inner)
        // Every mismatch is gathered and named below, not only the first shape error.
        .allow_partial(true)
        .validate(false);
    let result = model.load_from(&mut store).map_err(|e| anyhow!("{e}")).with_context(|| format!("reading {}", path.display()))?;
    let first = |v: Vec<String>| v.into_iter().take(3).collect::<Vec<_>>().join(", ");
    let problems = [
        (result.missing.len(), "missing", first(result.missing.into_iter().map(|(p, _)| p).collect())),
        (result.unused.len(), "not in this network", first(result.unused)),
        (result.errors.len(), "of the wrong shape or type", first(result.errors.iter().map(|e| e.to_string()).collect())),
    ];
    let said: Vec<String> =
        problems.iter().filter(|p| p.0 > 0).map(|(n, what, names)| format!("{n} tensor(s) {what} (e.g. {names})")).collect();
    if !said.is_empty() {
        bail!("{} does not fit the network its config describes: {}", path.display(), said.join("; "));
    }
    Ok(model)
}

/// A safetensors file's `__metadata__` (empty when it has none).
pub fn metadata(path: &Path) -> Result<std::collections::HashMap<String, String>> {
    let bad = || format!("{} is not a safetensors file", path.display());
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).with_context(bad)?;
    let len = u64::from_le_bytes(len);
    // safetensors caps its header at 100 MB.
    if len > 100 << 20 || len > f.metadata()?.len() {
        bail!("{}: header of {len} bytes", bad());
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).with_context(bad)?;
    let header: serde_json::Value = serde_json::from_slice(&header).with_context(bad)?;
    let Some(meta) = header.get("__metadata__") else { return Ok(Default::default()) };
    serde_json::from_value(meta.clone()).with_context(bad)
}
