//! `apunet gan train` and `apunet gan generate`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::data::Dataset;
use crate::device::parse_device;
use crate::eval::figures;
use crate::gan::train::{Domain, GanMode, GanRequest, GanTrainConfig, generate, side_by_side, train_gan};

#[derive(Subcommand, Debug)]
pub enum GanCommand {
    /// Train a ResNet CycleGAN: --mode mask2ct --data FILE.npz, or --mode unpaired --a A.npz --b B.npz.
    Train(GanTrainArgs),
    /// Translate deformed training mask sets into new CT crops: K new examples, marked synthetic.
    Generate(GanGenerateArgs),
    /// Time CycleGAN training iterations (both generators and discriminators, batch 1) as JSON;
    /// compare with `bench/torch_cyclegan.py` on the same machine.
    Bench(super::bench::GanBenchArgs),
}

#[derive(Args, Debug)]
pub struct GanTrainArgs {
    #[arg(long, value_enum, default_value_t = GanMode::Mask2ct)]
    pub mode: GanMode,
    /// mask2ct: the dataset whose masks (A) and crops (B) it learns from.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// unpaired: domain A's npz.
    #[arg(long)]
    pub a: Option<PathBuf>,
    /// unpaired: domain B's npz.
    #[arg(long)]
    pub b: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    /// Epochs of linear learning-rate decay at the end.
    #[arg(long)]
    pub decay_epochs: Option<usize>,
    /// Generator width (64 in the paper).
    #[arg(long, default_value_t = 64)]
    pub base: usize,
    /// Residual blocks (9 in the paper, 6 for small images).
    #[arg(long, default_value_t = 9)]
    pub blocks: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub resume: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct GanGenerateArgs {
    #[arg(long)]
    pub gan: PathBuf,
    /// The dataset whose mask sets are deformed and translated.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub count: usize,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(cmd: GanCommand) -> Result<()> {
    match cmd {
        GanCommand::Train(a) => train_cmd(a),
        GanCommand::Generate(a) => generate_cmd(a),
        GanCommand::Bench(a) => super::bench::gan(a),
    }
}

fn train_cmd(a: GanTrainArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let (da, db) = match (a.mode, &a.data, &a.a, &a.b) {
        (GanMode::Mask2ct, Some(d), _, _) => {
            let ds = Dataset::load(d)?;
            (Domain::from_mean_masks(&ds), Domain::from_images(&ds))
        }
        (GanMode::Unpaired, _, Some(pa), Some(pb)) => (Domain::from_images(&Dataset::load(pa)?), Domain::from_images(&Dataset::load(pb)?)),
        (GanMode::Mask2ct, None, _, _) => bail!("--mode mask2ct needs --data FILE.npz"),
        _ => bail!("--mode unpaired needs --a A.npz and --b B.npz"),
    };
    let mut cfg = GanTrainConfig { mode: a.mode, epochs: a.epochs, seed: a.seed, ..Default::default() };
    cfg.decay_epochs = a.decay_epochs.unwrap_or(a.epochs / 2);
    cfg.net.base = a.base;
    cfg.net.residual_blocks = a.blocks;
    let state = train_gan(GanRequest { a: da, b: db, out: a.out.clone(), config: cfg, device, resume: a.resume, quiet: a.quiet })?;
    crate::say!(
        "trained {} epochs; cycle loss {:.4} -> {:.4}; GAN in {}",
        state.epoch,
        state.cycle.first().copied().unwrap_or(f64::NAN),
        state.cycle.last().copied().unwrap_or(f64::NAN),
        a.out.display()
    );
    Ok(())
}

fn generate_cmd(a: GanGenerateArgs) -> Result<()> {
    let device = parse_device(&a.device)?;
    let data = Dataset::load(&a.data)?;
    let ds = generate(&a.gan, &data, a.count, a.seed, &device)?;
    ds.save(&a.out)?;
    let fig = a.out.with_extension("png");
    figures::save_png(&side_by_side(&data, &ds, 8)?, &fig)?;
    crate::say!(
        "wrote {} ({} synthetic examples, {} annotators) and {} (real and generated side by side)",
        a.out.display(),
        ds.len(),
        ds.annotators(),
        fig.display()
    );
    Ok(())
}
