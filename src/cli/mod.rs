//! The `apunet` command line.

pub mod bench;
pub mod demo;
pub mod evaluate;
pub mod gan;
pub mod import;
pub mod predict;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;
use ndarray::Axis;

use crate::data::npz::{self, NpzEntry};
use crate::data::synth::{self, SynthConfig};
use crate::data::{AnnotatorChoice, Dataset};
use crate::device::parse_device;
use crate::eval::figures;
use crate::inference;
use crate::train::{self, RunConfig, Select, TrainRequest, Which};

#[derive(Parser, Debug)]
#[command(name = "apunet", version, about = "Ambiguous medical image segmentation: Probabilistic Attention U-Net")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Make a synthetic CT-like dataset with disagreeing annotators (npz).
    Synth(SynthArgs),
    /// Split a dataset into train and validation npz files, grouped by series.
    Split(SplitArgs),
    /// Train a Probabilistic Attention U-Net.
    Train(TrainArgs),
    /// Sample n masks per image from a trained run.
    Sample(SampleArgs),
    /// Sample with a run and score it: GED, Hungarian-matched IoU, Dice, calibration, figures.
    Eval(evaluate::EvalArgs),
    /// Score any model's sampled masks against annotators' masks.
    Metrics(evaluate::MetricsArgs),
    /// Training curves from a run's metrics.csv.
    Plot(evaluate::PlotArgs),
    /// Build a dataset npz from a folder of scans and annotators' labels (nnU-Net layout).
    Import(import::ImportArgs),
    /// Samples and uncertainty for whole scans of any size (DICOM, NIfTI, PNG), patch-wise.
    Predict(predict::PredictArgs),
    /// ResNet CycleGAN: train it, or generate new examples with it.
    #[command(subcommand)]
    Gan(gan::GanCommand),
    /// Synthetic data, brief training, sampling and figures in one go.
    Demo(demo::DemoArgs),
    /// Training and sampling throughput as JSON.
    Bench(bench::BenchArgs),
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub count: usize,
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    #[arg(long, default_value_t = 4)]
    pub annotators: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct SplitArgs {
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub train_out: PathBuf,
    #[arg(long)]
    pub val_out: PathBuf,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset npz (images [N,H,W], masks [N,A,H,W], optional series_uid).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run directory for config, checkpoints, metrics and figures.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// TOML with [model] and [train] sections; flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue the run in this directory where it stopped.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub beta: Option<f32>,
    #[arg(long)]
    pub latent_dim: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Filters per level, e.g. 32,64,128,192 (the count sets the depth).
    #[arg(long, value_delimiter = ',')]
    pub filters: Option<Vec<usize>>,
    /// random | majority | annotator index.
    #[arg(long)]
    pub annotator: Option<AnnotatorChoice>,
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
    /// Train on random NxN patches of the crops (a third placed over a lesion); validation
    /// and inference still use whole crops.
    #[arg(long, value_name = "N")]
    pub patch: Option<usize>,
    /// Write the sample figure every N epochs (and after the last).
    #[arg(long, value_name = "N")]
    pub figure_every: Option<usize>,
    /// Turn the attention gates off (plain U-Net backbone).
    #[arg(long)]
    pub no_attention: bool,
    /// cpu | wgpu | cuda
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
}

/// What every command that samples from a trained run takes.
#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    /// The run directory (config.toml + checkpoints).
    #[arg(long)]
    pub run: PathBuf,
    /// Samples per image.
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    #[arg(long, value_enum, default_value_t = Which::Best)]
    pub checkpoint: Which,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images (or patches) per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// cpu | wgpu | cuda
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl SamplingArgs {
    /// Checks `--n`, opens the device and rebuilds the trained model from the run.
    pub fn load(&self) -> Result<(burn::prelude::Device, RunConfig, crate::model::ProbUNet)> {
        if self.n == 0 {
            bail!("--n must be at least 1");
        }
        let device = parse_device(&self.device)?;
        let (cfg, model) = train::load_run(&self.run, self.checkpoint, &device)?;
        Ok((device, cfg, model))
    }

    /// Defaults for `run`, as the command line gives them.
    pub fn for_run(run: &Path) -> Self {
        Self { run: run.to_path_buf(), n: 16, checkpoint: Which::Best, seed: 0, batch_size: 8, device: "cpu".into() }
    }
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[arg(long)]
    pub data: PathBuf,
    /// Output npz (samples [N,n,H,W] uint8, mean [N,H,W] float32, prior_mean [N,H,W] uint8);
    /// a PNG figure goes beside it.
    #[arg(long)]
    pub out: PathBuf,
    /// Images in the figure.
    #[arg(long, default_value_t = 8)]
    pub figure_images: usize,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth(a) => synth_cmd(a),
        Command::Split(a) => split_cmd(a),
        Command::Train(a) => train_cmd(a),
        Command::Sample(a) => sample_cmd(a),
        Command::Eval(a) => evaluate::eval_cmd(a),
        Command::Metrics(a) => evaluate::metrics_cmd(a),
        Command::Plot(a) => evaluate::plot_cmd(a),
        Command::Import(a) => import::import_cmd(a),
        Command::Predict(a) => predict::predict_cmd(a),
        Command::Gan(c) => gan::run(c),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
    }
}

fn synth_cmd(a: SynthArgs) -> Result<()> {
    let ds = synth::generate(&SynthConfig {
        count: a.count,
        size: a.size,
        annotators: a.annotators,
        seed: a.seed,
        ..Default::default()
    })?;
    ds.save(&a.out)?;
    println!("wrote {} ({} images {}x{}, {} annotators)", a.out.display(), ds.len(), a.size, a.size, a.annotators);
    Ok(())
}

fn split_cmd(a: SplitArgs) -> Result<()> {
    let ds = Dataset::load(&a.data)?;
    let sp = crate::data::split::split_by_series(&ds.series, a.val_fraction, a.seed)?;
    ds.subset(&sp.train).save(&a.train_out)?;
    ds.subset(&sp.val).save(&a.val_out)?;
    println!(
        "wrote {} ({} images) and {} ({} images); no series on both sides",
        a.train_out.display(),
        sp.train.len(),
        a.val_out.display(),
        sp.val.len()
    );
    Ok(())
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
    if let Some(v) = a.patch {
        t.patch = Some(v);
    }
    if let Some(v) = a.figure_every {
        t.figure_every = v;
    }
    if let Some(v) = a.latent_dim {
        cfg.model.latent_dim = v;
    }
    if let Some(v) = &a.filters {
        cfg.model.filters = v.clone();
    }
    if a.no_attention {
        cfg.model.attention_gates = false;
    }
}

fn train_cmd(a: TrainArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let (out, resume) = match (&a.resume, &a.out) {
        (Some(r), _) => (r.clone(), true),
        (None, Some(o)) => (o.clone(), false),
        (None, None) => bail!("give --out RUN_DIR for a new run, or --resume RUN_DIR"),
    };
    let mut cfg = match (&a.config, resume) {
        (Some(p), _) => RunConfig::load(p)?,
        // Resuming keeps the run's own settings unless a flag overrides them.
        (None, true) => RunConfig::load(&train::RunPaths::new(&out).config())
            .with_context(|| format!("--resume: {} holds no run to resume", out.display()))?,
        (None, false) => RunConfig::default(),
    };
    apply_overrides(&mut cfg, &a);
    let data = match (&a.data, resume) {
        (Some(d), _) => d.clone(),
        (None, true) => {
            let state = train::checkpoint::load_state(&train::RunPaths::new(&out).state())
                .context("--resume without --data needs the run's checkpoints/state.json")?;
            PathBuf::from(state.data)
        }
        (None, false) => bail!("--data FILE.npz is required"),
    };
    if !resume && out.join("checkpoints/state.json").exists() {
        bail!(
            "{} already holds a run; continue it with --resume {} or choose another --out",
            out.display(),
            out.display()
        );
    }
    let summary = train::train(TrainRequest { data, out: out.clone(), config: cfg, device, resume, quiet: a.quiet })?;
    println!(
        "trained {} epochs; best epoch {}; run in {}",
        summary.history.len(),
        summary.best_epoch,
        out.display()
    );
    Ok(())
}

/// Samples a dataset with a run and writes the npz + figure; used by `sample` and `demo`.
pub fn sample_to(s: &SamplingArgs, data: &Path, out: &Path, figure_images: usize) -> Result<()> {
    let n = s.n;
    let (device, cfg, model) = s.load()?;
    let ds = Dataset::load(data)?;
    cfg.model.check_size(ds.height(), ds.width())?;
    let pb = ProgressBar::new(ds.len() as u64);
    let samples =
        inference::sample_images(&model, &ds.images, n, cfg.model.latent_dim, s.seed, s.batch_size, &device, |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    let masks = samples.masks.clone().into_dyn();
    let mean = samples.mean.clone().into_dyn();
    let prior_mean = samples.prior_mean.clone().into_dyn();
    npz::write_npz(
        out,
        &[("samples", NpzEntry::U8(&masks)), ("mean", NpzEntry::F32(&mean)), ("prior_mean", NpzEntry::U8(&prior_mean))],
    )?;
    let k = figure_images.min(ds.len());
    let idx: Vec<usize> = (0..k).collect();
    let sub = ds.subset(&idx);
    let smp = samples.masks.select(Axis(0), &idx);
    let fig = train::render_figure(&sub, &smp, n.min(6), &format!("{n} samples from the prior"));
    let png = out.with_extension("png");
    figures::save_png(&fig, &png)?;
    println!("wrote {} (samples [{}, {n}, {}, {}]) and {}", out.display(), ds.len(), ds.height(), ds.width(), png.display());
    Ok(())
}

fn sample_cmd(a: SampleArgs) -> Result<()> {
    sample_to(&a.sampling, &a.data, &a.out, a.figure_images)
}
