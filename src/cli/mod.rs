//! The `apunet` command line.

pub mod bench;
pub mod demo;
pub mod evaluate;
pub mod gan;
pub mod import;
pub mod predict;
pub mod review;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::ProgressBar;
use ndarray::Axis;

use crate::data::npz::{self, NpzEntry};
use crate::data::synth::{self, SynthConfig};
use crate::data::Dataset;
use crate::device::parse_device;
use crate::eval::figures;
use crate::inference;
use crate::train::{RunConfig, Which};

pub use train::{TrainArgs, TransformerLevels, apply_overrides};

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
    /// The review page (one HTML file) for a folder `eval` wrote: every case's CT, expert
    /// contours, samples as a flip-book, uncertainty, sortable by GED and more.
    Review(review::ReviewArgs),
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// The npz to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Crops to make.
    #[arg(long, default_value_t = 256)]
    pub count: usize,
    /// Crop side in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Simulated experts per crop.
    #[arg(long, default_value_t = 4)]
    pub annotators: usize,
    /// Seed of the generator (split: of the series drawn for validation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct SplitArgs {
    /// Dataset npz.
    #[arg(long)]
    pub data: PathBuf,
    /// Share of series held out for validation.
    #[arg(long, default_value_t = 0.2)]
    pub val_fraction: f64,
    /// Seed of the generator (split: of the series drawn for validation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The training part (npz).
    #[arg(long)]
    pub train_out: PathBuf,
    /// The validation part (npz).
    #[arg(long)]
    pub val_out: PathBuf,
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
    /// Which checkpoint: best (by the run's selection) or last.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    pub checkpoint: Which,
    /// Seed of the generator (split: of the series drawn for validation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images (or patches) per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// cpu | wgpu | cuda
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// HPU-Net: the latent scales to sample (0 = coarsest, comma-separated); the others take
    /// the prior's mean. Coarse scales alone vary the whole finding, fine ones its outline.
    /// Default: every scale.
    #[arg(long, value_delimiter = ',')]
    pub scales: Option<Vec<usize>>,
    /// Go on with data or scans whose preprocessing (HU window, CLAHE, units) differs from
    /// what the run trained on [default: refused, naming both].
    #[arg(long)]
    pub allow_mismatch: bool,
}

impl SamplingArgs {
    /// The sampling settings for `model`, checking `--scales` against its latent scales.
    pub fn sampling(&self, cfg: &RunConfig) -> Result<crate::inference::Sampling> {
        let mean_scales = match &self.scales {
            None => Vec::new(),
            Some(list) => {
                if cfg.model.kind != crate::model::ModelKind::Hpunet {
                    bail!("--scales applies to the HPU-Net only; this run's model has one global latent");
                }
                let count = cfg.model.latent_scales;
                if let Some(bad) = list.iter().find(|&&s| s >= count) {
                    bail!(
                        "--scales: scale {bad} does not exist: this model has {count} latent scale(s), numbered 0 (the coarsest) to {}",
                        count.saturating_sub(1)
                    );
                }
                (0..count).map(|s| !list.contains(&s)).collect()
            }
        };
        Ok(crate::inference::Sampling { n: self.n, seed: self.seed, batch: self.batch_size, mean_scales })
    }

    /// Checks `--n` and `--batch-size`, opens the device and rebuilds the trained model from the run.
    pub fn load(&self) -> Result<(burn::prelude::Device, RunConfig, crate::model::Segmenter)> {
        if self.n == 0 {
            bail!("--n must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let device = parse_device(&self.device)?;
        let (cfg, model) = crate::train::load_run(&self.run, self.checkpoint, &device)?;
        Ok((device, cfg, model))
    }

    /// Refuses a dataset preprocessed otherwise than the run's training data (unless
    /// --allow-mismatch), naming both.
    pub fn check_data(&self, cfg: &RunConfig, ds: &Dataset, data: &Path) -> Result<()> {
        crate::data::preprocess::check_match(
            (&format!("run {}", self.run.display()), cfg.data.preprocess.as_ref()),
            (&data.display().to_string(), ds.preprocess.as_ref()),
            self.allow_mismatch,
        )
    }

    /// Defaults for `run`, as the command line gives them.
    pub fn for_run(run: &Path) -> Self {
        Self {
            run: run.to_path_buf(),
            n: 16,
            checkpoint: Which::Best,
            seed: 0,
            batch_size: 8,
            device: "cpu".into(),
            scales: None,
            allow_mismatch: false,
        }
    }
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Dataset npz.
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

const EXAMPLE: &str = "Examples:
  apunet demo                                    # synthetic data, training, samples, figures (minutes)
  apunet train --data lidc.npz --out runs/a      # train on your own crops with several annotators
  apunet eval --run runs/a --data val.npz --out eval/   # sample, score (GED, HM-IoU, Dice) and draw";

/// The command line as users see it: every flag's default in its help (for `train`, the
/// configuration defaults its flags fall back to), required flags marked, and negative numbers
/// taken as values so validation can say why they are wrong.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let defaults = toml::Value::try_from(RunConfig::default()).ok();
    decorate(Cli::command(), defaults.as_ref(), false).after_help(EXAMPLE)
}

/// Parses arguments with `command()`'s help (what `main` and the tests use).
pub fn parse_from<I, T>(args: I) -> std::result::Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches;
    Cli::from_arg_matches(&command().try_get_matches_from(args)?)
}

/// `train` is true for `apunet train` alone (not `apunet gan train`): its flags fall back to the
/// run configuration's defaults.
fn decorate(cmd: clap::Command, defaults: Option<&toml::Value>, train: bool) -> clap::Command {
    let top = cmd.get_name() == "apunet";
    cmd.mut_args(|mut a| {
        let takes_value = a.get_action().takes_values();
        let mut help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        if a.is_required_set() {
            help.push_str(" [required]");
        }
        let configured = defaults.filter(|_| train && takes_value && !help.contains("[default:"));
        if let Some(v) = configured.and_then(|d| config_default(d, a.get_id().as_str())) {
            help.push_str(&format!(" [default: {v}]"));
        }
        if takes_value {
            a = a.allow_negative_numbers(true);
        }
        a.help(help.trim().to_string())
    })
    .mut_subcommands(|c| {
        let train = top && c.get_name() == "train";
        decorate(c, defaults, train)
    })
}

/// The default of a [train] or [model] key as a flag would spell it.
fn config_default(defaults: &toml::Value, key: &str) -> Option<String> {
    let v = ["train", "model"].iter().find_map(|s| defaults.get(s)?.get(key))?;
    Some(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    })
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth(a) => synth_cmd(a),
        Command::Split(a) => split_cmd(a),
        Command::Train(a) => train::train_cmd(a),
        Command::Sample(a) => sample_cmd(a),
        Command::Eval(a) => evaluate::eval_cmd(a),
        Command::Metrics(a) => evaluate::metrics_cmd(a),
        Command::Plot(a) => evaluate::plot_cmd(a),
        Command::Import(a) => import::import_cmd(a),
        Command::Predict(a) => predict::predict_cmd(a),
        Command::Gan(c) => gan::run(c),
        Command::Demo(a) => demo::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Review(a) => review::review_cmd(a),
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
    crate::say!("wrote {} ({} images {}x{}, {} annotators)", a.out.display(), ds.len(), a.size, a.size, a.annotators);
    Ok(())
}

fn split_cmd(a: SplitArgs) -> Result<()> {
    let ds = Dataset::load(&a.data)?;
    let sp = crate::data::split::split_by_series(&ds.series, a.val_fraction, a.seed)?;
    ds.subset(&sp.train).save(&a.train_out)?;
    ds.subset(&sp.val).save(&a.val_out)?;
    crate::say!(
        "wrote {} ({} images) and {} ({} images); no series on both sides",
        a.train_out.display(),
        sp.train.len(),
        a.val_out.display(),
        sp.val.len()
    );
    Ok(())
}

/// Samples a dataset with a run and writes the npz + figure; used by `sample` and `demo`.
pub fn sample_to(s: &SamplingArgs, data: &Path, out: &Path, figure_images: usize) -> Result<()> {
    let n = s.n;
    let (device, cfg, model) = s.load()?;
    let ds = Dataset::load(data)?;
    s.check_data(&cfg, &ds, data)?;
    cfg.model.check_size(ds.height(), ds.width())?;
    let pb = ProgressBar::new(ds.len() as u64);
    let samples =
        inference::sample_images(&model, &ds.images, &crate::inference::Sampling { n, ..s.sampling(&cfg)? }, &device, |k| pb.inc(k as u64))?;
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
    let fig = crate::train::render_figure(&sub, &smp, n.min(6), &format!("{n} samples from the prior"));
    let png = out.with_extension("png");
    figures::save_png(&fig, &png)?;
    crate::say!("wrote {} (samples [{}, {n}, {}, {}]) and {}", out.display(), ds.len(), ds.height(), ds.width(), png.display());
    Ok(())
}

fn sample_cmd(a: SampleArgs) -> Result<()> {
    sample_to(&a.sampling, &a.data, &a.out, a.figure_images)
}
