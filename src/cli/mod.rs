//! The `apunet` command line.

pub mod demo;
pub mod evaluate;
pub mod gan;
pub mod import;
pub mod predict;
pub mod review;
pub mod train;
pub mod weights;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::data::head_ct::{self, HeadCtConfig};
use crate::data::synth::{self, SynthConfig, SynthKind};
use crate::train::RunConfig;

pub use crate::jobs::sample::RunSampling as SamplingArgs;
pub use train::{TrainArgs, apply_overrides};

#[derive(Parser, Debug)]
#[command(name = "apunet", version, about = "Ambiguous medical image segmentation: Probabilistic Attention U-Net")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// One parsed command per process: its size does not matter.
#[allow(clippy::large_enum_variant)]
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
    Bench(crate::jobs::bench::BenchSettings),
    /// The review page (one HTML file) for a folder `eval` wrote: every case's CT, expert
    /// contours, samples as a flip-book, uncertainty, sortable by GED and more.
    Review(review::ReviewArgs),
    /// A run's network as safetensors under PyTorch's names (bench/torch_peer.py loads it).
    Export(weights::ExportArgs),
    /// A run made from safetensors weights that `export` or bench/torch_peer.py wrote.
    ImportWeights(weights::ImportWeightsArgs),
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// The npz to write (--kind head-ct: the folder, in import's layout).
    #[arg(long)]
    pub out: PathBuf,
    /// lidc-like: dark lung-CT-like crops in [0, 1] (npz); head-ct: head CT slices in HU with
    /// subtle hyperdense lesions, as NIfTI scans and expert masks for `apunet import`.
    #[arg(long, value_enum, default_value = "lidc-like")]
    pub kind: SynthKind,
    /// Crops (head-ct: cases) to make [default: 256; head-ct 40].
    #[arg(long)]
    pub count: Option<usize>,
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
        Command::Bench(a) => print_json(&crate::jobs::bench::bench(&a)?),
        Command::Review(a) => review::review_cmd(a),
        Command::Export(a) => weights::export_cmd(a),
        Command::ImportWeights(a) => weights::import_weights_cmd(a),
    }
}

/// A report on stdout, pretty-printed.
pub fn print_json(v: &serde_json::Value) -> Result<()> {
    crate::say!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn synth_cmd(a: SynthArgs) -> Result<()> {
    if a.kind == SynthKind::HeadCt {
        let cfg = HeadCtConfig { cases: a.count.unwrap_or(40), size: a.size, annotators: a.annotators, seed: a.seed };
        head_ct::write_folder(&a.out, &cfg)?;
        crate::say!(
            "wrote {} head-CT slices {}x{} in HU with {} experts' masks into {} (apunet import --input {} --window brain)",
            cfg.cases,
            a.size,
            a.size,
            a.annotators,
            a.out.display(),
            a.out.display()
        );
        return Ok(());
    }
    let cfg = SynthConfig { count: a.count.unwrap_or(256), size: a.size, annotators: a.annotators, seed: a.seed, ..Default::default() };
    let ds = synth::generate_to(&cfg, &a.out)?;
    crate::say!("wrote {} ({} images {}x{}, {} annotators)", a.out.display(), ds.len(), a.size, a.size, a.annotators);
    Ok(())
}

fn split_cmd(a: SplitArgs) -> Result<()> {
    let (train, val) = crate::data::split::split_file(&a.data, a.val_fraction, a.seed, &a.train_out, &a.val_out)?;
    crate::say!("wrote {} ({train} images) and {} ({val} images); no series on both sides", a.train_out.display(), a.val_out.display());
    Ok(())
}

fn sample_cmd(a: SampleArgs) -> Result<()> {
    let done = crate::jobs::sample::sample_to_file(&a.sampling, &a.data, &a.out, a.figure_images)?;
    crate::say!(
        "wrote {} (samples [{}, {}, {}, {}]) and {}",
        a.out.display(),
        done.images,
        a.sampling.n,
        done.height,
        done.width,
        done.figure.display()
    );
    Ok(())
}
