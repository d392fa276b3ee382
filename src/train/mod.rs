//! The training loop: posterior-sampled ELBO steps, a validation pass with GED each epoch,
//! metrics.csv, figures, atomic checkpoints and resume.

pub mod checkpoint;
pub mod config;
pub mod distributed;
pub mod ema;
mod epoch;
pub mod history;
mod launch;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod objective;
pub mod schedule;
pub mod threads;
pub mod validation;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::AdamConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

pub use checkpoint::{RunPaths, TrainState, Which, load_run};
pub use config::{DataConfig, RunConfig, Select, TrainConfig};
pub use distributed::Collective;
pub use history::{EpochMetrics, read_metrics, write_metrics};
pub use launch::{Launch, launch, launch_watched};
pub use validation::{figure, render_figure};
pub use watch::{Stopped, Unwatched, Watch};

use crate::data::augment::Augmentation;
use crate::data::{AnnotatorChoice, Dataset, preprocess, split};
use crate::eval::figures;
use crate::model::config::HPUNET_FILTERS;
use crate::model::{ModelConfig, ModelKind, NormKind, Segmenter};
use objective::LossKind;

/// How a training run is asked for.
pub struct TrainRequest {
    pub data: PathBuf,
    pub out: PathBuf,
    pub config: RunConfig,
    pub device: Device,
    pub resume: bool,
    pub quiet: bool,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub history: Vec<EpochMetrics>,
    pub best_epoch: usize,
    pub skipped_steps: usize,
    /// Epochs trained by this call (0 when a resumed run had already reached its target).
    pub epochs_run: usize,
    pub target_epochs: usize,
}

fn epoch_rng(seed: u64, epoch: usize, stream: u64) -> StdRng {
    StdRng::seed_from_u64(seed.wrapping_mul(6364136223846793005).wrapping_add((epoch as u64) << 8 | stream))
}

fn normal(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// Everything a run trains on, resolved once: config, data and the split.
struct Setup {
    cfg: RunConfig,
    state: TrainState,
    data: Dataset,
    train_idx: Vec<usize>,
    val_idx: Vec<usize>,
    /// Synthetic examples, after the real ones in `data`; they only fill training batches.
    extra_idx: Vec<usize>,
}

/// Trains (or resumes) a run in `req.out`.
pub fn train(req: TrainRequest) -> Result<TrainSummary> {
    train_with(req, &distributed::Alone)
}

/// Trains as one rank of a data-parallel run: every rank steps on its rows of each global
/// batch; rank 0 alone validates and writes the run (checkpoints, metrics, figures).
pub fn train_with(req: TrainRequest, comm: &dyn Collective) -> Result<TrainSummary> {
    train_watched(req, comm, &Unwatched)
}

/// [`train_with`], reporting each committed epoch to `watch` and stopping when it asks.
pub fn train_watched(req: TrainRequest, comm: &dyn Collective, watch: &dyn Watch) -> Result<TrainSummary> {
    let lead = comm.rank() == 0;
    let paths = RunPaths::new(&req.out);
    let Setup { cfg, mut state, data, train_idx, val_idx, extra_idx } = prepare_ranks(&req, &paths, comm)?;
    let tc = cfg.train.clone();
    if comm.size() > 1 && cfg.model.norm == NormKind::Batch && cfg.model.kind == ModelKind::Punet {
        bail!("--norm batch cannot train data-parallel: each rank's batch statistics would drift apart. Use --norm group (the default)");
    }
    if comm.size() > tc.batch_size {
        bail!(
            "{} ranks cannot share batches of {}: give --batch-size {} or more (the global batch)",
            comm.size(),
            tc.batch_size,
            comm.size()
        );
    }
    let device = req.device.clone().autodiff();
    // Ranks that share a device (--devices cpu,cpu) share its RNG: the others seed and build
    // after rank 0, whose weights they then receive, so rank 0 starts as one process would.
    if !lead {
        comm.broadcast(&mut Vec::new(), "rank 0's model")?;
    }
    device.seed(tc.seed);
    let mut model = Segmenter::new(&cfg.model, &device);
    // A run that `apunet import-weights` made holds weights but no epoch: training starts from them.
    if lead && req.resume && state.epoch == 0 && paths.last_model().exists() {
        model = checkpoint::load_segmenter(model, &paths.last_model())?;
        tracing::info!("starting from the weights in {}", paths.last_model().display());
    }
    if comm.size() > 1 {
        distributed::initialize(&model);
    }
    if lead {
        comm.broadcast(&mut Vec::new(), "rank 0's model")?;
    }
    let mut optim = optimizer(&tc);
    let mut history = if lead { read_metrics(&paths.metrics()).unwrap_or_default() } else { Vec::new() };
    // Under EMA, last.bpk holds the average and train.bpk the weights being trained.
    let mut ema = (lead && tc.ema.is_some()).then(|| ema::Ema { model: model.valid(), decay: tc.ema.unwrap_or(0.0), updates: 0 });
    if state.epoch > 0 && lead {
        if let Some(e) = &mut ema {
            e.model = checkpoint::load_segmenter(Segmenter::new(&cfg.model, &req.device), &paths.last_model())?;
            e.updates = state.ema_updates;
        }
        let trained = if ema.is_some() { paths.train_model() } else { paths.last_model() };
        model = checkpoint::load_segmenter(model, &trained)?;
        if paths.optimizer().exists() {
            optim = checkpoint::load_optimizer(optim, &paths.optimizer())?;
        }
        tracing::info!("resuming {} after epoch {}", req.out.display(), state.epoch);
    }
    // Every rank starts from rank 0's weights and optimizer state.
    let mut model = distributed::broadcast_module(comm, model)?;
    let mut optim = distributed::broadcast_optimizer(comm, optim)?;
    if comm.size() > 1 && lead && !req.quiet {
        let params = model.num_params();
        tracing::info!(
            "data-parallel over {} ranks: global batch {}, {params} parameters, {:.1} MB of gradients summed per step",
            comm.size(),
            tc.batch_size,
            params as f64 * 4.0 / 1e6
        );
    }
    history.retain(|m| m.epoch <= state.epoch);
    if lead {
        write_metrics(&paths.metrics(), &history)?;
    }
    let epochs_run = tc.epochs.saturating_sub(state.epoch);
    let quiet = req.quiet || !lead;
    let mut stepper = epoch::Stepper {
        tc: &tc,
        consecutive_bad: 0,
        quiet,
        report_exchange: !req.quiet,
        geco: state.geco.clone(),
        comm,
        exchange_seconds: 0.0,
        augmentation: augmentation(&tc, &data, &train_idx),
        ema,
        watch,
    };
    for epoch in state.epoch + 1..=tc.epochs {
        let started = Instant::now();
        let (batches, mut rng) = epoch::batches(&tc, epoch, &train_idx, &extra_idx);
        let (m, trained) = stepper.epoch(model, &mut optim, &data, &batches, epoch, &mut rng, &device)?;
        model = trained;
        state.skipped_steps += m.skipped_steps;
        state.geco = stepper.geco.clone();
        state.epoch = epoch;
        if !lead {
            continue;
        }
        let valid = match &stepper.ema {
            Some(e) => {
                state.ema_updates = e.updates;
                e.model.clone()
            }
            None => model.valid(),
        };
        let inner = req.device.clone();
        let (val_loss, val_reconstruction, val_kl, val_ged) = if val_idx.is_empty() {
            (f64::NAN, f64::NAN, f64::NAN, f64::NAN)
        } else {
            validation::validate(&valid, &data, &val_idx, &tc, m.beta, &inner)?
        };
        let m = EpochMetrics { val_loss, val_reconstruction, val_kl, val_ged, seconds: started.elapsed().as_secs_f64(), ..m };
        if epoch % tc.figure_every == 0 || epoch == tc.epochs {
            let source = if val_idx.is_empty() { &train_idx } else { &val_idx };
            let fig_idx: Vec<usize> = source.iter().copied().take(tc.figure_images).collect();
            let title = format!("epoch {epoch}");
            let fig = figure(&valid, &data, &fig_idx, tc.figure_samples, tc.seed, &inner, &title)?;
            figures::save_png(&fig, &paths.figure(epoch))?;
        }
        let improved = state.best_score.is_none_or(|b| selection_score(&tc, &m) < b);
        if improved {
            state.best_score = Some(selection_score(&tc, &m));
            state.best_epoch = epoch;
        }
        history.push(m.clone());
        write_metrics(&paths.metrics(), &history)?;
        let trained = stepper.ema.is_some().then_some(&model);
        checkpoint::commit_epoch(&paths, &valid, trained, &optim, improved, &state)?;
        if !req.quiet {
            eprintln!("{}", epoch_line(&m, val_idx.is_empty()));
        }
        watch.epoch(&m);
    }
    Ok(TrainSummary { history, best_epoch: state.best_epoch, skipped_steps: state.skipped_steps, epochs_run, target_epochs: tc.epochs })
}

/// [`prepare`] on rank 0, which alone reads and writes the run directory; the other ranks take
/// its resolved config, state and data path and load the data themselves.
fn prepare_ranks(req: &TrainRequest, paths: &RunPaths, comm: &dyn Collective) -> Result<Setup> {
    if comm.size() == 1 {
        return prepare(req, paths);
    }
    let lead = if comm.rank() == 0 { Some(prepare(req, paths)?) } else { None };
    // The config travels as the TOML it is saved as (its custom serde is written for TOML).
    let resolved = match &lead {
        Some(s) => Some((toml::to_string(&s.cfg)?, s.state.clone(), req.data.clone())),
        None => None,
    };
    let (cfg, state, data_path): (String, TrainState, PathBuf) = distributed::broadcast_json(comm, resolved.as_ref(), "the run's config")?;
    let cfg: RunConfig = toml::from_str(&cfg).with_context(|| format!("rank {}: reading rank 0's config", comm.rank()))?;
    if let Some(setup) = lead {
        return Ok(setup);
    }
    let data = Dataset::load(&data_path).with_context(|| format!("rank {}", comm.rank()))?;
    let (data, train_idx, val_idx, extra_idx) = split_data(&cfg, data, &data_path)?;
    Ok(Setup { cfg, state, data, train_idx, val_idx, extra_idx })
}

/// Resolves the config (checking what a resume may change), loads the data and splits it.
fn prepare(req: &TrainRequest, paths: &RunPaths) -> Result<Setup> {
    let mut cfg = req.config.clone();
    let mut state = TrainState::default();
    if req.resume {
        let saved = RunConfig::load(&paths.config()).with_context(|| format!("--resume: {} holds no run to resume", req.out.display()))?;
        let fixed = saved.fixed_differences(&cfg)?;
        if !fixed.is_empty() {
            bail!(
                "--resume cannot change what a run started with: {}. Only {} can change on a resume; \
                 start a new run (--out) to change the rest",
                fixed.join("; "),
                config::resumable_text()
            );
        }
        cfg.data = saved.data;
        checkpoint::recover(paths)?;
        if paths.state().exists() {
            state = checkpoint::load_state(&paths.state())?;
        }
        if cfg.train.epochs < state.epoch {
            bail!("--epochs {} is below the {} epochs {} has already trained", cfg.train.epochs, state.epoch, req.out.display());
        }
        let recorded: &[String] = if state.data.is_empty() { &[] } else { std::slice::from_ref(&state.data) };
        checkpoint::check_same_data(&req.out, recorded, std::slice::from_ref(&req.data))?;
    }
    cfg.validate()?;
    let data = Dataset::load(&req.data)?;
    let saved_size = (cfg.data.height, cfg.data.width);
    check_data(&mut cfg, &data, &req.data, req.resume)?;
    if req.resume && saved_size != (0, 0) && saved_size != (cfg.data.height, cfg.data.width) {
        bail!(
            "--resume: {} trained on {}x{} crops but {} holds {}x{} crops; a run keeps its data",
            req.out.display(),
            saved_size.0,
            saved_size.1,
            req.data.display(),
            cfg.data.height,
            cfg.data.width
        );
    }
    let (data, train_idx, val_idx, extra_idx) = split_data(&cfg, data, &req.data)?;
    std::fs::create_dir_all(req.out.join("checkpoints")).with_context(|| format!("creating run directory {}", req.out.display()))?;
    cfg.save(&paths.config())?;
    // Absolute, so a resume from another directory finds it.
    state.data = crate::fsio::canonical(&req.data).display().to_string();
    // Saved before the first step: a run killed during epoch 1 resumes from the start.
    if state.epoch == 0 {
        checkpoint::save_state(&state, &paths.state())?;
    }
    Ok(Setup { cfg, state, data, train_idx, val_idx, extra_idx })
}

/// The data (synthetic extras appended) and its training, validation and extra indices.
type Split = (Dataset, Vec<usize>, Vec<usize>, Vec<usize>);

/// The split of `data` by series, with `[train] extra`'s synthetic examples appended.
fn split_data(cfg: &RunConfig, data: Dataset, data_path: &Path) -> Result<Split> {
    let tc = &cfg.train;
    let sp = split::split_by_series(&data.series, tc.val_fraction, tc.seed)?;
    // Synthetic examples never validate.
    let val_idx: Vec<usize> = sp.val.iter().copied().filter(|&i| !data.synthetic[i]).collect();
    let train_idx = sp.train.clone();
    let (data, extra_idx) = match &tc.extra {
        Some(path) => {
            let extra = Dataset::load(Path::new(path))?;
            // Crops windowed otherwise would teach the model intensities it never sees.
            preprocess::check_match(
                (&data_path.display().to_string(), data.preprocess.as_ref()),
                (&format!("--extra {path}"), extra.preprocess.as_ref()),
                tc.allow_mismatch,
            )?;
            let first = data.len();
            let all = data.append_synthetic(&extra, path)?;
            (all, (first..first + extra.len()).collect::<Vec<_>>())
        }
        None => (data, Vec::new()),
    };
    if train_idx.is_empty() {
        bail!("no training examples left after the split");
    }
    Ok((data, train_idx, val_idx, extra_idx))
}

/// Checks the data against the model and records the crop size, input channels and
/// preprocessing in `cfg`.
fn check_data(cfg: &mut RunConfig, data: &Dataset, path: &Path, resume: bool) -> Result<()> {
    match (cfg.model.in_channels, data.channels()) {
        (m, d) if m == d => {}
        // A new run takes the data's channels unless its config states others.
        (1, d) if !resume => cfg.model.in_channels = d,
        (m, d) => bail!(
            "{} holds {d}-channel images ({}) but the model takes {m} (model.in_channels){}",
            path.display(),
            preprocess::describe(data.preprocess.as_ref()),
            if resume { "; a run keeps its data" } else { "" }
        ),
    }
    fit_hpunet_depth(cfg, data.height(), data.width());
    cfg.model.check_size(data.height(), data.width())?;
    if let Some(p) = cfg.train.patch {
        if p > data.height() || p > data.width() {
            bail!("--patch {p} is larger than the {}x{} crops in {}", data.height(), data.width(), path.display());
        }
        cfg.model.check_size(p, p).context("--patch")?;
    }
    let (th, tw) = cfg.train.patch.map_or((data.height(), data.width()), |p| (p, p));
    for w in cfg.model.transformer_warnings(th, tw) {
        tracing::warn!("{w}");
    }
    cfg.data.height = data.height();
    cfg.data.width = data.width();
    cfg.data.preprocess = data.preprocess.clone();
    if let AnnotatorChoice::Fixed(k) = cfg.train.annotator
        && k >= data.annotators()
    {
        bail!("annotator {k} requested but {} has {} annotators", path.display(), data.annotators());
    }
    Ok(())
}

/// The reference HPU-Net has 8 levels for 128-px crops; with its channels unchanged, drop the
/// levels the crops (or patches) cannot halve into, down to 1 px. A shallower model asked for
/// stays as it is.
fn fit_hpunet_depth(cfg: &mut RunConfig, h: usize, w: usize) {
    let m = &mut cfg.model;
    if m.kind != ModelKind::Hpunet || !HPUNET_FILTERS.starts_with(&m.filters) {
        return;
    }
    let depth = ModelConfig::hpunet_depth(h, w, cfg.train.patch.unwrap_or(h.min(w)));
    if depth < m.depth() {
        let what = cfg.train.patch.map_or(format!("{h}x{w} crops"), |p| format!("{p}x{p} patches"));
        tracing::info!("HPU-Net: {depth} levels for {what} (the reference's 8 are for 128x128 crops)");
        // The attention variant's default transformer level moves with the depth.
        if m.transformer_levels == ModelConfig::hpunet_transformer_levels(m.depth(), true) {
            m.transformer_levels = ModelConfig::hpunet_transformer_levels(depth, true);
        }
        m.filters = HPUNET_FILTERS[..depth].to_vec();
        m.latent_scales = m.latent_scales.min(depth - 1);
    }
}

/// The run's augmentation; lesions for copy-paste come from the real training crops that an
/// expert marked.
fn augmentation(tc: &TrainConfig, data: &Dataset, train_idx: &[usize]) -> Augmentation {
    let donors = if tc.copy_paste > 0.0 {
        train_idx
            .iter()
            .copied()
            .filter(|&i| !data.synthetic[i] && data.masks.index_axis(ndarray::Axis(0), i).iter().any(|&v| v > 0))
            .collect()
    } else {
        Vec::new()
    };
    if tc.copy_paste > 0.0 && donors.is_empty() {
        tracing::warn!("--copy-paste: no training crop has a marked lesion to paste; training without it");
    }
    Augmentation { symmetry: tc.augment, spatial: tc.spatial_augment, intensity: tc.intensity_augment, copy_paste: tc.copy_paste, donors }
}

fn optimizer(tc: &TrainConfig) -> burn::optim::ModuleOptimizer {
    let mut adam = AdamConfig::new();
    if let Some(wd) = tc.weight_decay {
        adam = adam.with_weight_decay(Some(WeightDecayConfig::new(wd)));
    }
    if let Some(clip) = tc.grad_clip_norm {
        adam = adam.with_grad_clipping(Some(GradientClippingConfig::Norm(clip)));
    }
    adam.init()
}

/// What "best" minimises: the selected validation score, else the training loss. Under GECO
/// both losses weigh the KL by 1/lambda, which moves from epoch to epoch, so epochs compare by
/// reconstruction + KL instead.
fn selection_score(tc: &TrainConfig, m: &EpochMetrics) -> f64 {
    let geco = tc.loss == LossKind::Geco;
    match tc.select {
        Select::Loss if m.val_loss.is_finite() && geco => m.val_reconstruction + m.val_kl,
        Select::Loss if m.val_loss.is_finite() => m.val_loss,
        Select::Ged if m.val_ged.is_finite() => m.val_ged,
        _ if geco => m.reconstruction + m.kl,
        _ => m.loss,
    }
}

fn epoch_line(m: &EpochMetrics, no_validation: bool) -> String {
    let val = if no_validation { "no validation set".to_string() } else { format!("val loss {:.3} ged {:.4}", m.val_loss, m.val_ged) };
    let skipped = if m.skipped_steps > 0 { format!(" | {} steps skipped", m.skipped_steps) } else { String::new() };
    format!(
        "epoch {:>3}: loss {:.3} (rec {:.3}, kl {:.3}) | {val} | {:.1} img/s{skipped}",
        m.epoch, m.loss, m.reconstruction, m.kl, m.images_per_s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_survives_the_trip_to_the_other_ranks() {
        let mut hp = RunConfig::default();
        hp.model.kind = ModelKind::Hpunet;
        hp.model.transformer_levels = crate::model::TransformerLevels::All;
        for cfg in [RunConfig::default(), hp] {
            let text = toml::to_string(&cfg).unwrap();
            let sent = serde_json::to_vec(&(text, TrainState::default(), PathBuf::from("d.npz"))).unwrap();
            let (text, _, _): (String, TrainState, PathBuf) = serde_json::from_slice(&sent).unwrap();
            assert_eq!(toml::from_str::<RunConfig>(&text).unwrap(), cfg);
        }
    }

    #[test]
    fn geco_runs_pick_the_best_epoch_by_reconstruction_and_kl() {
        let m = |loss: f64, rec: f64, kl: f64| EpochMetrics {
            epoch: 1,
            loss,
            reconstruction: rec,
            kl,
            val_loss: f64::NAN,
            val_reconstruction: f64::NAN,
            val_kl: f64::NAN,
            val_ged: f64::NAN,
            images_per_s: 1.0,
            skipped_steps: 0,
            beta: 1.0,
            seconds: 1.0,
        };
        // lambda grew between the epochs: the GECO loss rose though the fit improved.
        let (early, late) = (m(50.0, 40.0, 5.0), m(300.0, 20.0, 6.0));
        let geco = TrainConfig { loss: LossKind::Geco, ..Default::default() };
        assert!(selection_score(&geco, &late) < selection_score(&geco, &early));
        let elbo = TrainConfig::default();
        assert!(selection_score(&elbo, &late) > selection_score(&elbo, &early));
        let with_val = EpochMetrics { val_loss: 9.0, val_reconstruction: 3.0, val_kl: 2.0, ..late };
        assert_eq!(selection_score(&geco, &with_val), 5.0);
        assert_eq!(selection_score(&elbo, &with_val), 9.0);
    }
}
