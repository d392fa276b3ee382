//! A training run as the command line asks for it: a new run in `out` or a resume of it, its
//! config from a file, the run itself or the defaults, with the user's settings on top, and
//! the data the run records. Rank 0 resolves all of it; the other ranks take it from rank 0.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::prelude::Device;

use super::{Collective, RunConfig, RunPaths, TrainRequest, TrainSummary, Unwatched, Watch, checkpoint, train_watched};

/// Where and how to train, before the config is resolved.
pub struct Launch {
    pub out: PathBuf,
    pub resume: bool,
    /// A TOML with [model] and [train], over the defaults (or over the run, on a resume).
    pub config: Option<PathBuf>,
    /// The data; on a resume, the run's own when not given.
    pub data: Option<PathBuf>,
    pub device: Device,
    pub quiet: bool,
}

/// Resolves `l` on rank 0 (`settings` puts the user's flags over the config and may refuse
/// them) and trains as this rank of `comm`.
pub fn launch(l: Launch, comm: &dyn Collective, settings: impl FnOnce(&mut RunConfig) -> Result<()>) -> Result<TrainSummary> {
    launch_watched(l, comm, settings, &Unwatched)
}

/// [`launch`], with `watch` told of each epoch and asked whether to stop.
pub fn launch_watched(
    l: Launch,
    comm: &dyn Collective,
    settings: impl FnOnce(&mut RunConfig) -> Result<()>,
    watch: &dyn Watch,
) -> Result<TrainSummary> {
    let Launch { out, resume, config, data, device, quiet } = l;
    if comm.rank() != 0 {
        // Rank 0 resolves the run and hands it to the others, which may not see its files.
        let req = TrainRequest { data: PathBuf::new(), out, config: RunConfig::default(), device, resume, quiet };
        return train_watched(req, comm, watch);
    }
    let paths = RunPaths::new(&out);
    let mut cfg = match (&config, resume) {
        (Some(p), _) => RunConfig::load(p)?,
        // Resuming keeps the run's own settings unless the user changes them.
        (None, true) => RunConfig::load(&paths.config()).with_context(|| format!("--resume: {} holds no run to resume", out.display()))?,
        (None, false) => RunConfig::default(),
    };
    settings(&mut cfg)?;
    let data = match (data, resume) {
        (Some(d), _) => d,
        (None, true) => {
            let state = checkpoint::load_state(&paths.state()).context("--resume without --data needs the run's checkpoints/state.json")?;
            PathBuf::from(state.data)
        }
        (None, false) => bail!("--data FILE.npz is required"),
    };
    if !resume && paths.state().exists() {
        bail!("{} already holds a run; continue it with --resume {} or choose another --out", out.display(), out.display());
    }
    train_watched(TrainRequest { data, out, config: cfg, device, resume, quiet }, comm, watch)
}
