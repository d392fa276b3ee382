//! Sampling from a trained run directory: which run and checkpoint, how many samples, which
//! device (the flags `sample`, `eval` and `predict` share), and `sample` itself, to a file.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use burn::prelude::Device;
use clap::Args;
use ndarray::Axis;

use crate::data::Dataset;
use crate::data::npz::{self, NpzEntry};
use crate::device::parse_device;
use crate::eval::figures;
use crate::inference::{Sampling, sample_images};
use crate::model::{ModelKind, Segmenter};
use crate::train::{RunConfig, Which};

/// How to sample from a trained run.
#[derive(Args, Debug, Clone)]
pub struct RunSampling {
    /// The run directory (config.toml + checkpoints).
    #[arg(long)]
    pub run: PathBuf,
    /// Samples per image.
    #[arg(long, default_value_t = 16)]
    pub n: usize,
    /// Which checkpoint: best (by the run's selection) or last.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    pub checkpoint: Which,
    /// Seed of the latent draws.
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

impl RunSampling {
    /// The defaults for `run`, as the command line gives them.
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

    /// The sampling settings for the run's model, checking `--scales` against its latent scales.
    pub fn sampling(&self, cfg: &RunConfig) -> Result<Sampling> {
        let mean_scales = match &self.scales {
            None => Vec::new(),
            Some(list) => {
                if cfg.model.kind != ModelKind::Hpunet {
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
        Ok(Sampling { n: self.n, seed: self.seed, batch: self.batch_size, mean_scales })
    }

    /// Checks `n` and the batch size, opens the device and rebuilds the trained model.
    pub fn load(&self) -> Result<(Device, RunConfig, Segmenter)> {
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

    /// Refuses images of other input channels than the run's model takes.
    pub fn check_channels(&self, cfg: &RunConfig, channels: usize, source: &str) -> Result<()> {
        if channels != cfg.model.in_channels {
            anyhow::bail!(
                "{source} holds {channels}-channel images but run {}'s model takes {} channel(s); give data imported as its training data was",
                self.run.display(),
                cfg.model.in_channels
            );
        }
        Ok(())
    }

    /// Refuses a dataset of other input channels than the model takes, and one preprocessed
    /// otherwise than the run's training data (unless `allow_mismatch`), naming both.
    pub fn check_data(&self, cfg: &RunConfig, ds: &Dataset, data: &Path) -> Result<()> {
        self.check_channels(cfg, ds.channels(), &data.display().to_string())?;
        crate::data::preprocess::check_match(
            (&format!("run {}", self.run.display()), cfg.data.preprocess.as_ref()),
            (&data.display().to_string(), ds.preprocess.as_ref()),
            self.allow_mismatch,
        )
    }
}

/// What `sample_to_file` wrote.
#[derive(Debug, Clone)]
pub struct SampledFile {
    pub images: usize,
    pub height: usize,
    pub width: usize,
    /// The figure beside the npz.
    pub figure: PathBuf,
}

/// `apunet sample`: n masks per image of `data` into `out` (samples [N,n,H,W] uint8, mean
/// [N,H,W] float32, prior_mean [N,H,W] uint8), and a figure of the first `figure_images`.
pub fn sample_to_file(s: &RunSampling, data: &Path, out: &Path, figure_images: usize) -> Result<SampledFile> {
    let (device, cfg, model) = s.load()?;
    let ds = Dataset::load(data)?;
    s.check_data(&cfg, &ds, data)?;
    cfg.model.check_size(ds.height(), ds.width())?;
    let pb = crate::progress::bar(ds.len() as u64, false, "sample");
    let samples = sample_images(&model, &ds.images, &s.sampling(&cfg)?, &device, |k| pb.inc(k as u64))?;
    pb.finish_and_clear();
    let masks = samples.masks.clone().into_dyn();
    let mean = samples.mean.clone().into_dyn();
    let prior_mean = samples.prior_mean.clone().into_dyn();
    npz::write_npz(out, &[("samples", NpzEntry::U8(&masks)), ("mean", NpzEntry::F32(&mean)), ("prior_mean", NpzEntry::U8(&prior_mean))])?;
    let idx: Vec<usize> = (0..figure_images.min(ds.len())).collect();
    let n = s.n;
    let fig = crate::train::render_figure(
        &ds.subset(&idx),
        &samples.masks.select(Axis(0), &idx),
        n.min(6),
        &format!("{n} samples from the prior"),
    );
    let figure = out.with_extension("png");
    figures::save_png(&fig, &figure)?;
    Ok(SampledFile { images: ds.len(), height: ds.height(), width: ds.width(), figure })
}
