//! `apunet export` and `apunet import-weights`: a run's network to and from PyTorch (safetensors).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::jobs::weights;
use crate::model::ModelKind;
use crate::train::Which;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Which checkpoint: best (by the run's selection) or last.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    pub checkpoint: Which,
    /// The safetensors file to write (PyTorch's names; the run's config.toml in its metadata).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct ImportWeightsArgs {
    /// A safetensors file under the names `apunet export` writes (e.g. from bench/torch_peer.py).
    #[arg(long)]
    pub weights: PathBuf,
    /// The network's settings, for a file without apunet's config in its metadata.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The run directory to make (config.toml and checkpoints/last.bpk), for sample, eval, predict.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn export_cmd(a: ExportArgs) -> Result<()> {
    let done = weights::export(&a.run, a.checkpoint, &a.out)?;
    crate::say!(
        "wrote {}: {} tensors, {} parameters of the {}{}",
        done.path.display(),
        done.tensors,
        done.parameters,
        model_name(done.kind),
        match done.kind {
            ModelKind::Punet => "; bench/torch_peer.py loads it into PyTorch",
            ModelKind::Hpunet => "",
        }
    );
    Ok(())
}

pub fn import_weights_cmd(a: ImportWeightsArgs) -> Result<()> {
    let cfg = weights::import_weights(&a.weights, a.config.as_deref(), &a.out)?;
    crate::say!(
        "made run {} ({}) from {}; sample, eval and predict take it with --run, and train --resume fine-tunes it",
        a.out.display(),
        model_name(cfg.model.kind),
        a.weights.display()
    );
    Ok(())
}

fn model_name(kind: ModelKind) -> &'static str {
    match kind {
        ModelKind::Punet => "Probabilistic U-Net",
        ModelKind::Hpunet => "Hierarchical Probabilistic U-Net",
    }
}
