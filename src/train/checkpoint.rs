//! Checkpoints: model weights (burnpack), optimizer state and the run's progress, each written
//! atomically so a killed run always leaves a loadable last checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::store::{BurnpackStore, ModuleSnapshot};
use serde::{Deserialize, Serialize};

use super::objective::GecoState;
use crate::fsio;
use crate::model::Segmenter;

/// Progress that `--resume` continues from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs finished (1-based count).
    pub epoch: usize,
    pub best_epoch: usize,
    pub best_score: Option<f64>,
    pub skipped_steps: usize,
    pub data: String,
    /// GECO's EMA and multiplier (unused by the ELBO).
    #[serde(default)]
    pub geco: GecoState,
    /// Steps folded into the weights' moving average (`[train] ema`).
    #[serde(default)]
    pub ema_updates: u64,
}

pub struct RunPaths {
    pub root: PathBuf,
}

impl RunPaths {
    pub fn new(root: &Path) -> Self {
        Self { root: root.to_path_buf() }
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }
    pub fn state(&self) -> PathBuf {
        self.root.join("checkpoints/state.json")
    }
    pub fn last_model(&self) -> PathBuf {
        self.root.join("checkpoints/last.bpk")
    }
    pub fn best_model(&self) -> PathBuf {
        self.root.join("checkpoints/best.bpk")
    }
    /// Under `[train] ema`, the weights being trained (last.bpk holds their average).
    pub fn train_model(&self) -> PathBuf {
        self.root.join("checkpoints/train.bpk")
    }
    pub fn optimizer(&self) -> PathBuf {
        self.root.join("checkpoints/optimizer.bpk")
    }
    /// Where an epoch's checkpoint set is written before it replaces the last one.
    pub fn staged(&self) -> PathBuf {
        self.root.join("checkpoints/staged")
    }
    pub fn figure(&self, epoch: usize) -> PathBuf {
        self.root.join(format!("figures/epoch_{epoch:03}.png"))
    }
}

/// Saves any module's weights (burnpack) atomically.
pub fn save_model<M: Module>(model: &M, path: &Path) -> Result<()> {
    fsio::write_atomic_with(path, |tmp| {
        let mut store = BurnpackStore::from_file(tmp).auto_extension(false).overwrite(true);
        model.save_into(&mut store).map_err(|e| anyhow!("{e}"))?;
        Ok(())
    })
}

/// Loads weights saved by `save_model` into `model`, refusing a checkpoint that does not fit.
pub fn load_model<M: Module>(model: M, path: &Path) -> Result<M> {
    if !path.exists() {
        anyhow::bail!("checkpoint {} not found", path.display());
    }
    let mut model = model;
    let mut store = BurnpackStore::from_file(path).auto_extension(false);
    let result =
        model.load_from(&mut store).map_err(|e| anyhow!("{e}")).with_context(|| format!("loading checkpoint {}", path.display()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        anyhow::bail!(
            "checkpoint {} does not match the model in config.toml ({} errors, {} missing tensors)",
            path.display(),
            result.errors.len(),
            result.missing.len()
        );
    }
    Ok(model)
}

/// The network inside a [`Segmenter`], saved without the enum's variant in its tensor paths:
/// config.toml names the kind, and Probabilistic U-Net checkpoints keep the layout they had
/// before the HPU-Net existed.
pub fn save_segmenter(model: &Segmenter, path: &Path) -> Result<()> {
    match model {
        Segmenter::PUNet(m) => save_model(m, path),
        Segmenter::HPUNet(m) => save_model(m, path),
    }
}

/// Loads what [`save_segmenter`] wrote into a model of the same kind.
pub fn load_segmenter(model: Segmenter, path: &Path) -> Result<Segmenter> {
    Ok(match model {
        Segmenter::PUNet(m) => Segmenter::PUNet(load_model(m, path)?),
        Segmenter::HPUNet(m) => Segmenter::HPUNet(load_model(m, path)?),
    })
}

pub fn save_optimizer(optim: &ModuleOptimizer, path: &Path) -> Result<()> {
    fsio::write_atomic_with(path, |tmp| optim.save(tmp).map_err(|e| anyhow!("{e:?}")))
}

pub fn load_optimizer(optim: ModuleOptimizer, path: &Path) -> Result<ModuleOptimizer> {
    optim.load(path).map_err(|e| anyhow!("{e:?}")).with_context(|| format!("loading optimizer state {}", path.display()))
}

pub fn save_state(state: &TrainState, path: &Path) -> Result<()> {
    fsio::write_atomic(path, serde_json::to_string_pretty(state)?.as_bytes())
}

pub fn load_state(path: &Path) -> Result<TrainState> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// One file of a checkpoint set: its name in checkpoints/ and how to write it to a path.
pub type SetFile<'a> = (&'a str, Box<dyn FnOnce(&Path) -> Result<()> + 'a>);

/// Writes a checkpoint set (every trainer's: weights, optimizer states, ...) into `staged/`,
/// then `staged/state.json` (`state`), then moves them over the previous set with state.json
/// last. A kill at any point leaves either the previous set or this one whole: [`recover`]
/// finishes a staged set that was complete and drops one that was not. Files of one set always
/// belong to one epoch, so a resumed run continues exactly where it stopped.
pub fn commit_set(paths: &RunPaths, files: Vec<SetFile<'_>>, state: &[u8]) -> Result<()> {
    let staged = paths.staged();
    if staged.exists() {
        std::fs::remove_dir_all(&staged).with_context(|| format!("clearing {}", staged.display()))?;
    }
    for (name, write) in files {
        write(&staged.join(name))?;
    }
    fsio::write_atomic(&staged.join("state.json"), state)?;
    promote(paths)
}

/// An epoch of `train`: the model to use (`weights`: the average under EMA) as last and, when
/// `best`, as best; the optimizer state; and under EMA the `trained` weights themselves.
pub fn commit_epoch(
    paths: &RunPaths,
    weights: &Segmenter,
    trained: Option<&Segmenter>,
    optim: &ModuleOptimizer,
    best: bool,
    state: &TrainState,
) -> Result<()> {
    let mut files: Vec<SetFile<'_>> = vec![
        ("last.bpk", Box::new(|p: &Path| save_segmenter(weights, p))),
        ("optimizer.bpk", Box::new(|p: &Path| save_optimizer(optim, p))),
    ];
    if best {
        files.push(("best.bpk", Box::new(|p: &Path| save_segmenter(weights, p))));
    }
    if let Some(t) = trained {
        files.push(("train.bpk", Box::new(|p: &Path| save_segmenter(t, p))));
    }
    commit_set(paths, files, serde_json::to_string_pretty(state)?.as_bytes())
}

/// Moves a complete staged set into place, state.json last.
fn promote(paths: &RunPaths) -> Result<()> {
    let (staged, dir) = (paths.staged(), paths.root.join("checkpoints"));
    let mut names: Vec<String> = std::fs::read_dir(&staged)
        .with_context(|| format!("reading {}", staged.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != "state.json" && !fsio::is_temp_name(n))
        .collect();
    names.sort();
    names.push("state.json".into());
    for name in &names {
        let from = staged.join(name);
        if from.exists() {
            std::fs::rename(&from, dir.join(name)).with_context(|| format!("moving {} into place", from.display()))?;
        }
    }
    std::fs::remove_dir_all(&staged).with_context(|| format!("removing {}", staged.display()))
}

/// After a kill: finishes a staged epoch whose state.json was written, drops one whose was not,
/// and removes temp files that atomic writes left behind.
pub fn recover(paths: &RunPaths) -> Result<()> {
    let staged = paths.staged();
    if staged.join("state.json").exists() {
        promote(paths)?;
    } else if staged.exists() {
        std::fs::remove_dir_all(&staged).with_context(|| format!("removing {}", staged.display()))?;
    }
    for dir in [paths.root.clone(), paths.root.join("checkpoints")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if fsio::is_temp_name(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// A resumed run (`train`'s or `gan train`'s) trains on the data it started with (`recorded`):
/// `given` files that differ are refused while the recorded ones exist; where one is gone
/// (moved), the given ones are taken, with a warning.
pub fn check_same_data(run: &Path, recorded: &[String], given: &[PathBuf]) -> Result<()> {
    let same =
        recorded.len() == given.len() && recorded.iter().zip(given).all(|(r, g)| fsio::canonical(Path::new(r)) == fsio::canonical(g));
    if recorded.is_empty() || given.is_empty() || same {
        return Ok(());
    }
    let (old, new) = (recorded.join(" and "), given.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "));
    if recorded.iter().all(|p| Path::new(p).exists()) {
        let other = if given.len() == 1 { "is another file" } else { "are other files" };
        anyhow::bail!(
            "--resume: {} trains on {old}, and {new} {other}; a resumed run keeps its data. Start a new run (--out) to train on {new}",
            run.display()
        );
    }
    tracing::warn!("{old}, the data {} started with, is gone; continuing on {new}", run.display());
    Ok(())
}

/// Rebuilds a trained model from RUN_DIR alone (config.toml + a checkpoint), on `device`.
pub fn load_run(run: &Path, which: Which, device: &Device) -> Result<(crate::train::RunConfig, Segmenter)> {
    let paths = RunPaths::new(run);
    let cfg =
        crate::train::RunConfig::load(&paths.config()).with_context(|| format!("{} is not an apunet run directory", run.display()))?;
    let path = match which {
        Which::Best if paths.best_model().exists() => paths.best_model(),
        _ => paths.last_model(),
    };
    let model = load_segmenter(Segmenter::new(&cfg.model, device), &path)?;
    Ok((cfg, model))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Best,
    Last,
}
