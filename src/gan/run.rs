//! A CycleGAN run directory, on the same component as `train`'s: gan.toml, a checkpoint set
//! staged and committed by checkpoints/state.json (`recover` after a kill), a resume that
//! continues bit for bit and refuses changed settings, one figure per epoch.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::networks::Generator;
use super::train::{CycleGan, Domain, GanMode, GanStepper, GanTrainConfig, tensor};
use crate::data::Dataset;
use crate::data::preprocess::Preprocess;
use crate::eval::figures;
use crate::fsio;
use crate::model::to_host;
use crate::train::checkpoint::{self, RunPaths, SetFile};
use crate::train::config::differences;

/// How a CycleGAN run is asked for: the domains, where, and the requested config (on a
/// resume: the saved one with the user's changes, which must leave fixed settings alone).
pub struct GanRequest {
    pub a: Domain,
    pub b: Domain,
    pub out: PathBuf,
    pub config: GanTrainConfig,
    pub device: Device,
    pub resume: bool,
    pub quiet: bool,
    /// The files the domains came from, recorded so a resume keeps them.
    pub sources: Vec<PathBuf>,
}

/// Progress that `--resume` continues from (checkpoints/state.json).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GanState {
    pub epoch: usize,
    /// Mean cycle loss per finished epoch.
    pub cycle: Vec<f64>,
    pub generator: Vec<f64>,
    pub discriminator: Vec<f64>,
    /// The data files, absolute.
    #[serde(default)]
    pub sources: Vec<String>,
}

impl GanState {
    /// Records finished `epoch`'s mean losses (cycle, or the painter's hole L1; generator;
    /// discriminator) and commits the checkpoint `files` with this state, written last.
    pub fn commit_epoch(&mut self, epoch: usize, [cycle, g, d]: [f64; 3], paths: &RunPaths, files: Vec<SetFile<'_>>) -> Result<()> {
        self.cycle.push(cycle);
        self.generator.push(g);
        self.discriminator.push(d);
        self.epoch = epoch;
        checkpoint::commit_set(paths, files, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

/// What a call trained.
#[derive(Debug, Clone)]
pub struct GanOutcome {
    pub state: GanState,
    /// Epochs trained by this call (0: the run had already reached its epochs).
    pub epochs_run: usize,
    /// What `state.cycle` holds: the cycle loss, or the painter's L1 on the painted pixels.
    pub mode: GanMode,
}

/// The settings only `epochs` of which a resume may change.
const RESUMABLE: [&str; 1] = ["epochs"];

fn config_path(out: &Path) -> PathBuf {
    out.join("gan.toml")
}

/// A GAN run's saved config.
pub fn load_config(out: &Path) -> Result<GanTrainConfig> {
    let path = config_path(out);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{} holds no GAN run (no gan.toml)", out.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))
}

/// The state a resume continues from, after finishing or dropping a staged set.
fn resume_state(paths: &RunPaths) -> Result<GanState> {
    checkpoint::recover(paths)?;
    let path = paths.state();
    if !path.exists() {
        bail!(
            "--resume: {} was stopped before it started (it has gan.toml but no checkpoints/state.json); \
             start it again without --resume",
            paths.root.display()
        );
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Trains (or resumes) the CycleGAN in `req.out`.
pub fn train_gan(req: GanRequest) -> Result<GanOutcome> {
    let (a, b) = (&req.a, &req.b);
    if a.images.is_empty() || b.images.is_empty() {
        bail!("both domains need images (A has {}, B has {})", a.images.len(), b.images.len());
    }
    if (a.height, a.width) != (b.height, b.width) {
        bail!("domain A is {}x{} but domain B is {}x{}; crop them to one size", a.height, a.width, b.height, b.width);
    }
    let (h, w) = (a.height, a.width);
    let mut cfg = req.config.clone();
    if cfg.net.channels_a != 1 || cfg.net.channels_b != 1 {
        bail!("apunet's domains are single-channel CT and masks; got channels {} and {}", cfg.net.channels_a, cfg.net.channels_b);
    }
    (cfg.height, cfg.width) = (h, w);
    let paths = RunPaths::new(&req.out);
    let sources: Vec<String> = req.sources.iter().map(|p| fsio::canonical(p).display().to_string()).collect();
    let mut state = GanState { sources: sources.clone(), ..Default::default() };
    if req.resume {
        let saved = load_config(&req.out).context("--resume")?;
        state = resume_state(&paths)?;
        checkpoint::check_same_data(&req.out, &state.sources, &req.sources)?;
        check_fixed(&saved, &cfg, &req.out)?;
        CycleGan::check_size(h, w)?;
        if !sources.is_empty() {
            state.sources = sources;
        }
        if cfg.epochs < state.epoch {
            bail!("--epochs {} is below the {} epochs {} has already trained", cfg.epochs, state.epoch, req.out.display());
        }
        if cfg.epochs == state.epoch {
            return Ok(GanOutcome { state, epochs_run: 0, mode: cfg.mode });
        }
    } else {
        CycleGan::check_size(h, w)?;
        if paths.state().exists() {
            bail!("{} already holds a GAN run; continue it with --resume or choose another --out", req.out.display());
        }
        // What a run killed before its first state.json left: temp files.
        checkpoint::recover(&paths)?;
    }
    std::fs::create_dir_all(req.out.join("checkpoints")).with_context(|| format!("creating {}", req.out.display()))?;
    fsio::write_atomic(&config_path(&req.out), toml::to_string_pretty(&cfg)?.as_bytes())?;
    if state.epoch == 0 {
        // A run killed in its first epoch resumes from the start.
        fsio::write_atomic(&paths.state(), serde_json::to_string_pretty(&state)?.as_bytes())?;
    }
    let device = req.device.clone().autodiff();
    device.seed(cfg.seed);
    let first = state.epoch;
    match cfg.mode {
        GanMode::Painter => super::painter::train_epochs(&req, &cfg, &mut state, &paths, &device)?,
        GanMode::Mask2ct | GanMode::Unpaired => cycle_epochs(&req, &cfg, &mut state, &paths, &device)?,
    }
    Ok(GanOutcome { epochs_run: state.epoch - first, state, mode: cfg.mode })
}

/// The CycleGAN's epochs from `state.epoch` to `cfg.epochs`, each committed as a checkpoint set.
fn cycle_epochs(req: &GanRequest, cfg: &GanTrainConfig, state: &mut GanState, paths: &RunPaths, device: &Device) -> Result<()> {
    let (a, b) = (&req.a, &req.b);
    let mut t = GanStepper::new(cfg, device);
    if state.epoch > 0 {
        t.load(&req.out)?;
    }
    for epoch in state.epoch + 1..=cfg.epochs {
        let (cycle, generator, discriminator) = train_epoch(&mut t, cfg, a, b, epoch, req.quiet, device)?;
        figure(&t.net, a, b, &req.out.join(format!("figures/epoch_{epoch:03}.png")), epoch)?;
        state.commit_epoch(epoch, [cycle, generator, discriminator], paths, t.checkpoint_files())?;
        if !req.quiet {
            eprintln!("gan epoch {epoch:>3}: G {generator:.3} cycle {cycle:.4} D {discriminator:.3} lr {:.2e}", cfg.lr_at(epoch));
        }
    }
    Ok(())
}

/// One epoch over the larger domain, both shuffled by the epoch's seed: mean cycle, generator
/// and discriminator losses.
fn train_epoch(
    t: &mut GanStepper,
    cfg: &GanTrainConfig,
    a: &Domain,
    b: &Domain,
    epoch: usize,
    quiet: bool,
    device: &Device,
) -> Result<(f64, f64, f64)> {
    let (h, w) = (a.height, a.width);
    let lr = cfg.lr_at(epoch);
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_mul(31).wrapping_add(epoch as u64));
    let steps = a.images.len().max(b.images.len());
    let mut ia: Vec<usize> = (0..a.images.len()).collect();
    let mut ib: Vec<usize> = (0..b.images.len()).collect();
    ia.shuffle(&mut rng);
    ib.shuffle(&mut rng);
    let pb = crate::progress::bar(steps as u64, quiet, &format!("gan epoch {epoch}/{}", cfg.epochs));
    let (mut sum_cyc, mut sum_g, mut sum_d) = (0f64, 0f64, 0f64);
    for s in 0..steps {
        let ra = tensor(&a.images[ia[s % ia.len()]], h, w, device);
        let rb = tensor(&b.images[ib[s % ib.len()]], h, w, device);
        let l = t.step(ra, rb, lr, &mut rng).with_context(|| format!("epoch {epoch}"))?;
        sum_g += l.generator as f64;
        sum_cyc += l.cycle as f64;
        sum_d += l.discriminator as f64;
        pb.inc(1);
        let k = (s + 1) as f64;
        pb.set_message(format!("G {:.3} cycle {:.3} D {:.3}", sum_g / k, sum_cyc / k, sum_d / k));
    }
    pb.finish_and_clear();
    let n = steps as f64;
    Ok((sum_cyc / n, sum_g / n, sum_d / n))
}

/// Refuses a resume that changes anything but the epochs, naming each setting.
fn check_fixed(saved: &GanTrainConfig, requested: &GanTrainConfig, out: &Path) -> Result<()> {
    let mut saved = saved.clone();
    // Runs from before the size and the preprocessing were recorded take the data's.
    if saved.height == 0 {
        (saved.height, saved.width) = (requested.height, requested.width);
        saved.preprocess = requested.preprocess.clone();
    }
    let fixed = differences(&saved, requested, &RESUMABLE)?;
    if !fixed.is_empty() {
        bail!(
            "--resume cannot change what the GAN run {} started with: {}. Only --epochs can change on a resume; \
             start a new run (--out) to change the rest",
            out.display(),
            fixed.join("; ")
        );
    }
    Ok(())
}

/// Real A, fake B, reconstructed A, and the other way, for four examples.
fn figure(net: &CycleGan, a: &Domain, b: &Domain, path: &Path, epoch: usize) -> Result<()> {
    let (h, w) = (a.height, a.width);
    let g_ab = net.g_ab.valid();
    let g_ba = net.g_ba.valid();
    let inner = g_ab.devices().into_iter().next().unwrap_or_else(Device::flex);
    let k = 4.min(a.images.len()).min(b.images.len());
    let to01 = |v: Vec<f32>| v.into_iter().map(|x| (x + 1.0) / 2.0).collect::<Vec<f32>>();
    let run = |g: &Generator, img: &[f32]| -> Result<Vec<f32>> { to_host(g.forward(tensor(img, h, w, &inner))) };
    let mut rows: Vec<(String, Vec<Vec<f32>>)> =
        ["real A", "fake B", "rec A", "real B", "fake A", "rec B"].iter().map(|s| (s.to_string(), Vec::new())).collect();
    for i in 0..k {
        let fb = run(&g_ab, &a.images[i])?;
        let ra = run(&g_ba, &fb)?;
        let fa = run(&g_ba, &b.images[i])?;
        let rb = run(&g_ab, &fa)?;
        for (r, img) in [a.images[i].clone(), fb, ra, b.images[i].clone(), fa, rb].into_iter().enumerate() {
            rows[r].1.push(to01(img));
        }
    }
    figures::save_png(&figures::image_rows(&rows, h, w, &format!("CycleGAN epoch {epoch}")), path)
}

/// The data files of a run, by mode.
#[derive(Debug, Clone, Default)]
pub struct GanSources {
    /// mask2ct and painter: the dataset whose mean masks (A) and crops (B) it learns from.
    pub data: Option<PathBuf>,
    /// unpaired: the two domains' datasets.
    pub a: Option<PathBuf>,
    pub b: Option<PathBuf>,
}

/// Settings the user gave; the rest come from the saved run (on a resume) or the defaults.
#[derive(Debug, Clone, Default)]
pub struct GanOverrides {
    pub mode: Option<GanMode>,
    pub epochs: Option<usize>,
    pub decay_epochs: Option<usize>,
    pub base: Option<usize>,
    pub blocks: Option<usize>,
    pub seed: Option<u64>,
    pub pool_size: Option<usize>,
}

impl GanOverrides {
    /// The requested config: `base` (saved or default) with the given settings.
    fn apply(&self, mut cfg: GanTrainConfig, new_run: bool) -> GanTrainConfig {
        if let Some(v) = self.mode {
            cfg.mode = v;
        }
        if let Some(v) = self.epochs {
            cfg.epochs = v;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = self.base {
            cfg.net.base = v;
        }
        if let Some(v) = self.blocks {
            cfg.net.residual_blocks = v;
        }
        if let Some(v) = self.pool_size {
            cfg.pool_size = v;
        }
        match self.decay_epochs {
            Some(v) => cfg.decay_epochs = v,
            // The second half decays, as in the paper; a resumed run keeps its schedule.
            None if new_run => cfg.decay_epochs = cfg.epochs / 2,
            None => {}
        }
        cfg
    }
}

/// `apunet gan train`: resolves the settings and data of a new or resumed run and trains it.
pub fn run_gan(out: &Path, resume: bool, sources: &GanSources, o: &GanOverrides, device: Device, quiet: bool) -> Result<GanOutcome> {
    let base = if resume { load_config(out).context("--resume")? } else { GanTrainConfig::default() };
    let cfg = o.apply(base.clone(), !resume);
    if resume {
        check_fixed(&base, &cfg, out)?;
    }
    let given = [&sources.data, &sources.a, &sources.b].iter().any(|p| p.is_some());
    // A resume without data flags takes the files the run recorded.
    let recorded: Vec<PathBuf> =
        if resume && !given { resume_state(&RunPaths::new(out))?.sources.iter().map(PathBuf::from).collect() } else { Vec::new() };
    let (files, da, db, preprocess) = match (cfg.mode, &sources.data, &sources.a, &sources.b) {
        (GanMode::Mask2ct | GanMode::Painter, Some(d), _, _) => load_mask2ct(d)?,
        (GanMode::Mask2ct | GanMode::Painter, None, None, None) if recorded.len() == 1 => load_mask2ct(&recorded[0])?,
        (GanMode::Unpaired, _, Some(pa), Some(pb)) => load_unpaired(pa, pb)?,
        (GanMode::Unpaired, None, None, None) if recorded.len() == 2 => load_unpaired(&recorded[0], &recorded[1])?,
        (GanMode::Mask2ct, ..) => bail!("--mode mask2ct needs --data FILE.npz"),
        (GanMode::Unpaired, ..) => bail!("--mode unpaired needs --a A.npz and --b B.npz"),
        (GanMode::Painter, ..) => bail!("--mode painter needs --data FILE.npz (crops with their experts' masks)"),
    };
    let config = GanTrainConfig { preprocess, ..cfg };
    train_gan(GanRequest { a: da, b: db, out: out.to_path_buf(), config, device, resume, quiet, sources: files })
}

type Loaded = (Vec<PathBuf>, Domain, Domain, Option<Preprocess>);

fn load_mask2ct(d: &Path) -> Result<Loaded> {
    let ds = Dataset::load(d)?;
    Ok((vec![d.to_path_buf()], Domain::from_mean_masks(&ds), Domain::from_images(&ds, d)?, ds.preprocess.clone()))
}

fn load_unpaired(pa: &Path, pb: &Path) -> Result<Loaded> {
    let (a, b) = (Dataset::load(pa)?, Dataset::load(pb)?);
    Ok((vec![pa.to_path_buf(), pb.to_path_buf()], Domain::from_images(&a, pa)?, Domain::from_images(&b, pb)?, b.preprocess.clone()))
}
