//! `apunet gan train` and `apunet gan generate`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::device::parse_device;
use crate::gan::generate::generate_to_file;
use crate::gan::train::{GanMode, GanOverrides, GanSources, run_gan};

#[derive(Subcommand, Debug)]
pub enum GanCommand {
    /// Train a ResNet CycleGAN (--mode mask2ct --data FILE.npz, or --mode unpaired --a A.npz --b B.npz)
    /// or a lesion painter on the same networks (--mode painter --data FILE.npz).
    Train(GanTrainArgs),
    /// New examples, marked synthetic: deformed training mask sets translated to CT (mask2ct), or
    /// real lesions' masks placed in other real crops and painted there (painter).
    Generate(GanGenerateArgs),
    /// Time CycleGAN training iterations (both generators and discriminators, batch 1) as JSON;
    /// compare with `bench/torch_cyclegan.py` on the same machine.
    Bench(crate::jobs::bench::GanBenchSettings),
}

/// Flags left out take their value from the run on --resume, else the defaults shown.
#[derive(Args, Debug)]
pub struct GanTrainArgs {
    /// mask2ct (the annotators' mean mask -> CT, from --data), unpaired (--a -> --b), or painter
    /// (a crop with a lesion's place erased + the mean mask there -> the real crop, from --data)
    /// [default: mask2ct].
    #[arg(long, value_enum)]
    pub mode: Option<GanMode>,
    /// mask2ct and painter: the dataset whose masks (A) and crops (B) it learns from.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// unpaired: domain A's npz.
    #[arg(long)]
    pub a: Option<PathBuf>,
    /// unpaired: domain B's npz.
    #[arg(long)]
    pub b: Option<PathBuf>,
    /// The GAN run directory (gan.toml, checkpoints, figures).
    #[arg(long)]
    pub out: PathBuf,
    /// Epochs to train (on --resume: the total to reach) [default: 20].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Epochs of linear learning-rate decay at the end [default: half the epochs].
    #[arg(long)]
    pub decay_epochs: Option<usize>,
    /// Generator width (64 in the paper) [default: 64].
    #[arg(long)]
    pub base: Option<usize>,
    /// Residual blocks (9 in the paper, 6 for small images) [default: 9].
    #[arg(long)]
    pub blocks: Option<usize>,
    /// Seed of the weights' initialisation and the data order [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Generated images each discriminator keeps and draws from (50 in the paper; 0: none)
    /// [default: 50].
    #[arg(long)]
    pub pool_size: Option<usize>,
    /// Continue the run in --out where it stopped (after a kill too); only --epochs may change.
    #[arg(long)]
    pub resume: bool,
    /// cpu | wgpu | cuda, or wgpu:N / cuda:N for the N-th GPU.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct GanGenerateArgs {
    /// The GAN run directory (a mask2ct or painter run).
    #[arg(long)]
    pub gan: PathBuf,
    /// The dataset whose mask sets are deformed and translated (mask2ct), or whose lesions are
    /// placed in its crops and painted (painter).
    #[arg(long)]
    pub data: PathBuf,
    /// Examples to generate.
    #[arg(long)]
    pub count: usize,
    /// The npz to write; the real-versus-generated figure goes beside it.
    #[arg(long)]
    pub out: PathBuf,
    /// painter: also write the same examples with the donor's pixels pasted instead of painted
    /// (plain copy-paste, same masks and places) to this npz.
    #[arg(long)]
    pub copy_out: Option<PathBuf>,
    /// Seed of the deformations.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu | wgpu | cuda, or wgpu:N / cuda:N for the N-th GPU.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Go on with --data preprocessed otherwise (HU window, CLAHE) than the GAN's training data.
    #[arg(long)]
    pub allow_mismatch: bool,
}

pub fn run(cmd: GanCommand) -> Result<()> {
    match cmd {
        GanCommand::Train(a) => train_cmd(a),
        GanCommand::Generate(a) => generate_cmd(a),
        GanCommand::Bench(a) => super::print_json(&crate::jobs::bench::gan_bench(&a)?),
    }
}

fn train_cmd(a: GanTrainArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let sources = GanSources { data: a.data, a: a.a, b: a.b };
    let o = GanOverrides {
        mode: a.mode,
        epochs: a.epochs,
        decay_epochs: a.decay_epochs,
        base: a.base,
        blocks: a.blocks,
        seed: a.seed,
        pool_size: a.pool_size,
    };
    let done = run_gan(&a.out, a.resume, &sources, &o, device, a.quiet)?;
    let s = &done.state;
    if done.epochs_run == 0 {
        crate::say!(
            "nothing to train: {} already finished epoch {} of {}; give --epochs N (more than {}) to train further",
            a.out.display(),
            s.epoch,
            s.epoch,
            s.epoch
        );
        return Ok(());
    }
    let loss = if done.mode == GanMode::Painter { "L1 on the painted pixels" } else { "cycle loss" };
    crate::say!(
        "trained {} epoch(s), now at epoch {}; {loss} {:.4} -> {:.4}; GAN in {}",
        done.epochs_run,
        s.epoch,
        s.cycle.first().copied().unwrap_or(f64::NAN),
        s.cycle.last().copied().unwrap_or(f64::NAN),
        a.out.display()
    );
    Ok(())
}

fn generate_cmd(a: GanGenerateArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let (ds, fig) = generate_to_file(&a.gan, &a.data, (&a.out, a.copy_out.as_deref()), (a.count, a.seed), a.allow_mismatch, &device)?;
    crate::say!(
        "wrote {} ({} synthetic examples, {} annotators) and {} (real and generated side by side)",
        a.out.display(),
        ds.len(),
        ds.annotators(),
        fig.display()
    );
    Ok(())
}
