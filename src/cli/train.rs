//! `apunet train`: its flags, how they override a config, and the command itself.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::Device;
use clap::Args;

use crate::data::AnnotatorChoice;
use crate::device::parse_device;
use crate::model::{ModelConfig, ModelKind, NormKind, TransformerLevels, WeightInit};
use crate::train::distributed::Alone;
use crate::train::objective::LossKind;
use crate::train::schedule::LrSchedule;
use crate::train::{self, Collective, Launch, RunConfig, Select, TrainSummary, Unwatched, Watch};

/// Flags left out take their value from --config, else from the defaults shown; on --resume,
/// from the run's own config.toml.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset npz (images [N,H,W] in [0,1], masks [N,A,H,W], optional series_uid) (required for a new run).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run directory for config, checkpoints, metrics and figures (required for a new run).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// TOML with [model] and [train] sections; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory where it stopped; only --epochs, --lr, --figure-every,
    /// --grad-clip-norm, --weight-decay, --device and --quiet may be given with it.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Epochs to train (on --resume: the total to reach).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per step (under --distributed or --devices: the global batch).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Adam learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight of the KL term.
    #[arg(long)]
    pub beta: Option<f32>,
    /// Epochs over which beta rises linearly from 0 (0: no warm-up).
    #[arg(long)]
    pub kl_warmup_epochs: Option<usize>,
    /// Learning-rate schedule over the run's steps: constant, poly (nnU-Net's, lr * (1 -
    /// progress)^0.9) or cosine [default: constant].
    #[arg(long, value_enum)]
    pub lr_schedule: Option<LrSchedule>,
    /// Epochs over which the learning rate rises linearly to --lr [default: 0, none].
    #[arg(long, value_name = "N")]
    pub lr_warmup_epochs: Option<usize>,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999); it is
    /// what validation, figures and the saved models use [default: off].
    #[arg(long, value_name = "DECAY")]
    pub ema: Option<f64>,
    /// Rotation by any angle, scaling and elastic deformation of image and masks alike
    /// (nnU-Net's probabilities); `--spatial-augment false` turns it off [default: off].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub spatial_augment: Option<bool>,
    /// Gaussian noise and blur, brightness, contrast, simulated low resolution and gamma
    /// (nnU-Net's probabilities); `--intensity-augment false` turns it off [default: off].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub intensity_augment: Option<bool>,
    /// Probability that a training crop receives a real lesion, with every expert's mask, cut
    /// from another training crop and pasted where the surroundings match [default: 0, off].
    #[arg(long, value_name = "P")]
    pub copy_paste: Option<f64>,
    /// Clip gradients to this global norm [default: off].
    #[arg(long)]
    pub grad_clip_norm: Option<f32>,
    /// Adam weight decay [default: off].
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Probabilistic U-Net: size of the latent vector.
    #[arg(long)]
    pub latent_dim: Option<usize>,
    /// Seed of the weights, the split, the batches and the augmentation.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Filters per level, e.g. 32,64,128,192 (the count sets the depth).
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub filters: Option<Vec<usize>>,
    /// Normalisation after each conv: group | batch | none.
    #[arg(long, value_enum)]
    pub norm: Option<NormKind>,
    /// Decoder levels (0 = full resolution) with a self-attention block, e.g. 2 or 1,2; "all"
    /// for every level (windowed above 1,024 tokens); "none" for no transformer
    /// [default: the coarsest level].
    #[arg(long, value_name = "LEVELS")]
    pub transformer_levels: Option<TransformerLevels>,
    /// Attention heads per transformer block.
    #[arg(long)]
    pub transformer_heads: Option<usize>,
    /// random | majority | annotator index.
    #[arg(long)]
    pub annotator: Option<AnnotatorChoice>,
    /// Share of series held out for validation.
    #[arg(long)]
    pub val_fraction: Option<f64>,
    /// Best-checkpoint criterion.
    #[arg(long, value_enum)]
    pub select: Option<Select>,
    /// Synthetic examples (same npz format) mixed into training batches; validation stays real.
    #[arg(long)]
    pub extra: Option<PathBuf>,
    /// Share of each batch taken from --extra, in [0, 1).
    #[arg(long)]
    pub extra_ratio: Option<f64>,
    /// Accept an --extra dataset whose preprocessing record (HU window, CLAHE) differs from
    /// --data's [default: refused, naming both].
    #[arg(long)]
    pub allow_mismatch: bool,
    /// Train on random NxN patches of the crops (a third placed over a lesion); validation
    /// and inference still use whole crops [default: whole crops].
    #[arg(long, value_name = "N")]
    pub patch: Option<usize>,
    /// Write the sample figure every N epochs (and after the last).
    #[arg(long, value_name = "N")]
    pub figure_every: Option<usize>,
    /// Plain U-Net backbone: no attention gates and no transformer block.
    #[arg(long)]
    pub no_attention: bool,
    /// punet (Probabilistic U-Net, one global latent) or hpunet (Hierarchical Probabilistic
    /// U-Net: latent maps at the coarsest decoder scales, DeepMind's reference architecture,
    /// its depth fitted to the crops) [default: punet].
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// HPU-Net: attention gates on every skip and a transformer block, the Hierarchical
    /// Probabilistic Attention U-Net.
    #[arg(long)]
    pub attention: bool,
    /// HPU-Net: decoder scales with latents, counted from the coarsest [default: 4].
    #[arg(long)]
    pub latent_scales: Option<usize>,
    /// HPU-Net: latent channels per pixel [default: 1].
    #[arg(long)]
    pub latent_channels: Option<usize>,
    /// Each pixel's lesion probability before training (the output bias starts at its logit)
    /// [default: 0.05; DeepMind's HPU-Net starts at 0.5].
    #[arg(long, value_name = "P")]
    pub output_prior: Option<f32>,
    /// How the convolutions' weights start: default (burn's, as PyTorch's) or orthogonal
    /// (DeepMind's HPU-Net) [default: default].
    #[arg(long, value_enum)]
    pub init: Option<WeightInit>,
    /// elbo (reconstruction + beta * KL) or geco (a constrained reconstruction, lambda learnt;
    /// with it --topk defaults to 0.02).
    #[arg(long, value_enum)]
    pub loss: Option<LossKind>,
    /// Share of each batch's pixels in the reconstruction: the highest-loss ones, chosen
    /// stochastically [default: all; 0.02 with --loss geco].
    #[arg(long)]
    pub topk: Option<f64>,
    /// GECO's tolerated reconstruction loss per pixel kept.
    #[arg(long)]
    pub geco_kappa: Option<f64>,
    /// Step size of GECO's own Adam on the multiplier's parameter x (lambda = softplus(x)^2)
    /// [default: 0.01].
    #[arg(long)]
    pub geco_rate: Option<f64>,
    /// cpu | wgpu | cuda, or wgpu:N / cuda:N for the N-th GPU. Under --distributed, a GPU
    /// without an index is the rank's local rank on its machine.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
    /// Data-parallel training over processes: `mpi`, one process per device under `mpirun -np N`
    /// or SLURM's `srun` (cargo feature `mpi`). --batch-size is then the global batch.
    #[arg(long, value_enum, default_value = "none")]
    pub distributed: Distributed,
    /// Data-parallel training over several devices of this machine, one thread each, e.g.
    /// cuda:0,cuda:1 (or cpu,cpu). --batch-size is then the global batch [default: off, one
    /// --device].
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["distributed", "device"])]
    pub devices: Option<Vec<String>>,
    /// Seconds a rank waits for the others (a step, or rank 0's validation and checkpoint
    /// between epochs) before it ends the job as hung.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub dist_timeout: u64,
}

/// Applies command-line overrides on top of a config.
pub fn apply_overrides(cfg: &mut RunConfig, a: &TrainArgs) {
    let t = &mut cfg.train;
    if let Some(v) = a.epochs {
        t.epochs = v;
    }
    if let Some(v) = a.batch_size {
        t.batch_size = v;
    }
    if let Some(v) = a.lr {
        t.lr = v;
    }
    if let Some(v) = a.beta {
        t.beta = v;
    }
    if let Some(v) = a.seed {
        t.seed = v;
    }
    if let Some(v) = a.annotator {
        t.annotator = v;
    }
    if let Some(v) = a.val_fraction {
        t.val_fraction = v;
    }
    if let Some(v) = a.select {
        t.select = v;
    }
    if let Some(v) = &a.extra {
        t.extra = Some(v.display().to_string());
    }
    if let Some(v) = a.extra_ratio {
        t.extra_ratio = v;
    }
    if a.allow_mismatch {
        t.allow_mismatch = true;
    }
    if let Some(v) = a.patch {
        t.patch = Some(v);
    }
    if let Some(v) = a.figure_every {
        t.figure_every = v;
    }
    if let Some(v) = a.kl_warmup_epochs {
        t.kl_warmup_epochs = v;
    }
    if let Some(v) = a.lr_schedule {
        t.lr_schedule = v;
    }
    if let Some(v) = a.lr_warmup_epochs {
        t.lr_warmup_epochs = v;
    }
    if let Some(v) = a.ema {
        t.ema = Some(v);
    }
    if let Some(v) = a.spatial_augment {
        t.spatial_augment = v;
    }
    if let Some(v) = a.intensity_augment {
        t.intensity_augment = v;
    }
    if let Some(v) = a.copy_paste {
        t.copy_paste = v;
    }
    if let Some(v) = a.grad_clip_norm {
        t.grad_clip_norm = Some(v);
    }
    if let Some(v) = a.weight_decay {
        t.weight_decay = Some(v);
    }
    if let Some(v) = a.loss {
        t.loss = v;
        if v == LossKind::Geco && a.topk.is_none() && t.topk.is_none() {
            t.topk = Some(0.02);
        }
    }
    if let Some(v) = a.topk {
        t.topk = Some(v);
    }
    if let Some(v) = a.geco_kappa {
        t.geco_kappa = v;
    }
    if let Some(v) = a.geco_rate {
        t.geco_rate = v;
    }
    match a.model {
        Some(kind) if kind != cfg.model.kind => cfg.model = ModelConfig::for_kind(kind, a.attention, cfg.model.in_channels),
        _ if a.attention && cfg.model.kind == ModelKind::Hpunet => cfg.model.with_hpunet_attention(),
        _ => {}
    }
    let m = &mut cfg.model;
    if let Some(v) = &a.filters {
        m.set_filters(v.clone());
    }
    if let Some(v) = a.latent_scales {
        m.latent_scales = v;
    }
    if let Some(v) = a.latent_channels {
        m.latent_channels = v;
    }
    if let Some(v) = a.output_prior {
        m.output_prior = v;
    }
    if let Some(v) = a.init {
        m.init = v;
    }
    if let Some(v) = a.latent_dim {
        m.latent_dim = v;
    }
    if let Some(v) = a.norm {
        m.norm = v;
    }
    if let Some(v) = &a.transformer_levels {
        m.transformer_levels = v.clone();
    }
    if let Some(v) = a.transformer_heads {
        m.transformer_heads = v;
    }
    if a.no_attention {
        m.without_attention();
    }
}

/// `--distributed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distributed {
    None,
    Mpi,
}

pub fn train_cmd(a: TrainArgs) -> Result<()> {
    match (a.distributed, &a.devices) {
        (Distributed::None, Some(names)) => devices_run(&a, names),
        (Distributed::None, None) => run(&a, &Alone, parse_device(&a.device)?, &Unwatched).map(drop),
        (Distributed::Mpi, _) => mpi_run(a),
    }
}

/// `--devices`: one rank per device, each on its own thread.
fn devices_run(a: &TrainArgs, names: &[String]) -> Result<()> {
    if names.len() < 2 {
        bail!("--devices takes two or more devices (for one, use --device)");
    }
    let devices = names.iter().map(|n| parse_device(n)).collect::<Result<Vec<_>>>()?;
    let timeout = std::time::Duration::from_secs(a.dist_timeout.max(1));
    train::threads::run_ranks(devices, timeout, |rank, device| run(a, rank, device, &Unwatched).map(drop))
}

#[cfg(feature = "mpi")]
fn mpi_run(a: TrainArgs) -> Result<()> {
    let comm = train::mpi::Mpi::init(std::time::Duration::from_secs(a.dist_timeout.max(1)))?;
    let device = parse_device(&rank_device(&a.device, &comm))?;
    match run(&a, &comm, device, &Unwatched).map(drop) {
        // A rank that stops alone would leave the others waiting: end them all.
        Err(e) if comm.size() > 1 => comm.abort(&format!("rank {}: {e:#}", comm.rank())),
        other => other,
    }
}

#[cfg(not(feature = "mpi"))]
fn mpi_run(_: TrainArgs) -> Result<()> {
    bail!(
        "this apunet was built without MPI: rebuild with `cargo build --release --features mpi` \
         (needs an MPI library and libclang; Debian: libopenmpi-dev openmpi-bin libclang-dev)"
    )
}

/// `apunet train` in this process on one device, `watch` told of each epoch and asked whether
/// to stop (the Python package's progress callback and Ctrl-C); it prints what the command does.
pub fn train_in_process(a: &TrainArgs, watch: &dyn Watch) -> Result<TrainSummary> {
    if a.distributed != Distributed::None || a.devices.is_some() {
        bail!("--distributed and --devices start several ranks: run them from the command line (apunet train)");
    }
    run(a, &Alone, parse_device(&a.device)?, watch)
}

fn run(a: &TrainArgs, comm: &dyn Collective, device: Device, watch: &dyn Watch) -> Result<TrainSummary> {
    let out = match (&a.resume, &a.out) {
        (Some(r), Some(o)) if !crate::fsio::same_path(r, o) => {
            bail!("--resume {} continues that run in its own directory; --out {} names another. Give one of them", r.display(), o.display())
        }
        (Some(r), _) => r.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => bail!("give --out RUN_DIR for a new run, or --resume RUN_DIR"),
    };
    let launch =
        Launch { out: out.clone(), resume: a.resume.is_some(), config: a.config.clone(), data: a.data.clone(), device, quiet: a.quiet };
    let summary = train::launch_watched(
        launch,
        comm,
        |cfg| {
            apply_overrides(cfg, a);
            if a.attention && cfg.model.kind != ModelKind::Hpunet {
                bail!(
                    "--attention applies to --model hpunet; the Probabilistic U-Net has attention gates and a \
                 transformer by default (--no-attention removes them)"
                );
            }
            Ok(())
        },
        watch,
    )?;
    if comm.rank() != 0 {
        return Ok(summary);
    }
    if summary.epochs_run == 0 {
        crate::say!(
            "nothing to train: {} already finished epoch {} of {}; give --epochs N (more than {}) to train further",
            out.display(),
            summary.target_epochs,
            summary.target_epochs,
            summary.target_epochs
        );
    } else {
        crate::say!(
            "trained {} epoch(s), now at epoch {} of {}; best epoch {}; run in {}",
            summary.epochs_run,
            summary.target_epochs,
            summary.target_epochs,
            summary.best_epoch,
            out.display()
        );
    }
    Ok(summary)
}

/// `--device` for this rank: a GPU named without an index is the rank's local rank.
#[cfg(feature = "mpi")]
fn rank_device(name: &str, comm: &dyn Collective) -> String {
    match name {
        "cuda" | "wgpu" if comm.size() > 1 => format!("{name}:{}", comm.local_rank()),
        other => other.to_string(),
    }
}
