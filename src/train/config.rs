//! Training configuration and the run's saved configuration (config.toml in RUN_DIR).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::objective::{LossKind, Objective};
use super::schedule::LrSchedule;
use crate::data::AnnotatorChoice;
use crate::data::preprocess::Preprocess;
use crate::fsio;
use crate::model::ModelConfig;

/// What "best" checkpoint selection minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Select {
    /// Validation loss (reconstruction + beta * KL).
    Loss,
    /// Validation generalized energy distance with `val_samples` samples per image.
    Ged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub beta: f32,
    /// Epochs over which beta rises linearly from 0 (0: no warm-up).
    pub kl_warmup_epochs: usize,
    pub weight_decay: Option<f32>,
    /// Gradient-norm clipping threshold.
    pub grad_clip_norm: Option<f32>,
    pub seed: u64,
    pub val_fraction: f64,
    pub annotator: AnnotatorChoice,
    /// The 8 symmetries of the square, one per example.
    pub augment: bool,
    /// Rotation by any angle, scaling and elastic deformation, with nnU-Net's probabilities.
    pub spatial_augment: bool,
    /// Noise, blur, brightness, contrast, low resolution and gamma, with nnU-Net's
    /// probabilities.
    pub intensity_augment: bool,
    /// Probability that a training example receives a real lesion cut from another training
    /// crop (0: off).
    pub copy_paste: f64,
    /// How the learning rate moves over the run, per step.
    pub lr_schedule: LrSchedule,
    /// Epochs over which the learning rate rises linearly to `lr` (0: none).
    pub lr_warmup_epochs: usize,
    /// Decay of an exponential moving average of the weights, which validation, figures and
    /// the saved models use (unset: off).
    pub ema: Option<f64>,
    /// This many non-finite losses in a row stop the run.
    pub max_bad_steps: usize,
    /// Samples per validation image for GED.
    pub val_samples: usize,
    /// Columns in the per-epoch figure.
    pub figure_images: usize,
    /// Sample rows in the per-epoch figure.
    pub figure_samples: usize,
    pub select: Select,
    /// A dataset of synthetic examples (e.g. from a CycleGAN) mixed into training batches.
    pub extra: Option<String>,
    /// Share of each training batch drawn from `extra`, in [0, 1).
    pub extra_ratio: f64,
    /// Accept an `extra` dataset whose preprocessing record differs from the data's.
    pub allow_mismatch: bool,
    /// Train on random square patches of this size instead of whole crops; validation,
    /// figures and inference still see whole crops.
    pub patch: Option<usize>,
    /// Share of patches placed over an annotated pixel (nnU-Net uses 1/3).
    pub patch_foreground: f64,
    /// Write the sample figure every this many epochs (and always after the last).
    pub figure_every: usize,
    /// "elbo" (reconstruction + beta * KL) or "geco" (a constraint on the reconstruction).
    pub loss: LossKind,
    /// Share of the batch's pixels in the reconstruction term, the highest-loss ones chosen
    /// stochastically (the HPU-Net uses 0.02); unset: every pixel.
    pub topk: Option<f64>,
    /// GECO's tolerated reconstruction loss per pixel kept.
    pub geco_kappa: f64,
    /// GECO's step size for the Lagrange multiplier.
    pub geco_rate: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 20,
            batch_size: 8,
            lr: 1e-4,
            beta: 1.0,
            kl_warmup_epochs: 0,
            weight_decay: None,
            grad_clip_norm: None,
            seed: 42,
            val_fraction: 0.2,
            annotator: AnnotatorChoice::Random,
            augment: true,
            spatial_augment: false,
            intensity_augment: false,
            copy_paste: 0.0,
            lr_schedule: LrSchedule::Constant,
            lr_warmup_epochs: 0,
            ema: None,
            max_bad_steps: 20,
            val_samples: 16,
            figure_images: 8,
            figure_samples: 4,
            select: Select::Loss,
            extra: None,
            extra_ratio: 0.5,
            allow_mismatch: false,
            patch: None,
            patch_foreground: 0.33,
            figure_every: 1,
            loss: LossKind::Elbo,
            topk: None,
            geco_kappa: 0.05,
            geco_rate: 1e-2,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            bail!("train.epochs must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("train.batch_size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("train.lr must be a positive number, got {}", self.lr);
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            bail!("train.beta must be >= 0, got {}", self.beta);
        }
        if self.val_samples == 0 {
            bail!("train.val_samples must be at least 1");
        }
        if self.extra.is_some() && !(0.0..1.0).contains(&self.extra_ratio) {
            bail!("train.extra_ratio must be in [0, 1), got {}", self.extra_ratio);
        }
        if self.patch == Some(0) {
            bail!("train.patch must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.patch_foreground) {
            bail!("train.patch_foreground must be in [0, 1], got {}", self.patch_foreground);
        }
        if !(0.0..=1.0).contains(&self.copy_paste) {
            bail!("train.copy_paste must be a probability in [0, 1], got {}", self.copy_paste);
        }
        if let Some(d) = self.ema
            && !(d > 0.0 && d < 1.0)
        {
            bail!("train.ema must be a decay in (0, 1), e.g. 0.999, got {d}");
        }
        if self.lr_warmup_epochs >= self.epochs && self.lr_warmup_epochs > 0 {
            bail!("train.lr_warmup_epochs ({}) must be below train.epochs ({})", self.lr_warmup_epochs, self.epochs);
        }
        if self.figure_every == 0 {
            bail!("train.figure_every must be at least 1");
        }
        if let Some(k) = self.topk
            && !(k > 0.0 && k <= 1.0)
        {
            bail!("train.topk must be a share of pixels in (0, 1], got {k}");
        }
        // Written so that NaN fails both.
        let kappa_ok = self.geco_kappa.is_finite() && self.geco_kappa >= 0.0;
        let rate_ok = self.geco_rate.is_finite() && self.geco_rate > 0.0;
        if !kappa_ok || !rate_ok {
            bail!("train.geco_kappa must be >= 0 and train.geco_rate > 0");
        }
        Ok(())
    }

    /// The loss for an epoch (1-based).
    pub fn objective(&self, epoch: usize) -> Objective {
        Objective { kind: self.loss, topk: self.topk, beta: self.beta_at(epoch), kappa: self.geco_kappa, rate: self.geco_rate }
    }

    /// The learning rate for step `k` (0-based) of epoch `epoch` (1-based), `per_epoch` steps
    /// an epoch.
    pub fn lr_at(&self, epoch: usize, k: usize, per_epoch: usize) -> f64 {
        let step = (epoch - 1) * per_epoch + k;
        self.lr_schedule.rate(self.lr, step, self.epochs * per_epoch, self.lr_warmup_epochs * per_epoch)
    }

    /// beta for an epoch (1-based), after warm-up.
    pub fn beta_at(&self, epoch: usize) -> f32 {
        if self.kl_warmup_epochs == 0 { self.beta } else { self.beta * (epoch as f32 / self.kl_warmup_epochs as f32).min(1.0) }
    }
}

/// What the model was trained on: the crop size (the patch size for large-image inference)
/// and the preprocessing that turned scans into inputs, repeated at inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    pub height: usize,
    pub width: usize,
    /// The training data's record; unset: unknown (never taken for a window).
    pub preprocess: Option<Preprocess>,
}

/// Everything needed to rebuild and continue a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
}

/// The settings a resumed run may change, as config keys and the flags that set them (None:
/// only a --config file sets it); everything else is fixed when a run starts.
pub const RESUMABLE: [(&str, Option<&str>); 6] = [
    ("train.epochs", Some("--epochs")),
    ("train.lr", Some("--lr")),
    ("train.figure_every", Some("--figure-every")),
    ("train.grad_clip_norm", Some("--grad-clip-norm")),
    ("train.weight_decay", Some("--weight-decay")),
    ("train.max_bad_steps", None),
];

/// What a resume may change, as a user gives it: "--epochs, --lr, ... and max_bad_steps in a
/// --config file".
pub fn resumable_text() -> String {
    let flags: Vec<&str> = RESUMABLE.iter().filter_map(|(_, f)| *f).collect();
    let keys: Vec<&str> = RESUMABLE.iter().filter(|(_, f)| f.is_none()).map(|(k, _)| &k[k.find('.').map_or(0, |i| i + 1)..]).collect();
    format!("{} (and {} in a --config file)", flags.join(", "), keys.join(", "))
}

/// "key saved -> requested" for every setting (dotted, nested tables flattened) that differs
/// between two configs, but those in `changeable`.
pub fn differences<T: Serialize>(saved: &T, requested: &T, changeable: &[&str]) -> Result<Vec<String>> {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut std::collections::BTreeMap<String, toml::Value>) {
        match v.as_table() {
            Some(t) => t.iter().for_each(|(k, v)| flatten(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out)),
            None => {
                out.insert(prefix.to_string(), v.clone());
            }
        }
    }
    let (mut a, mut b) = (Default::default(), Default::default());
    flatten("", &toml::Value::try_from(saved)?, &mut a);
    flatten("", &toml::Value::try_from(requested)?, &mut b);
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let show = |v: Option<&toml::Value>| v.map_or("unset".to_string(), |v| v.to_string());
    Ok(keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k) && !changeable.contains(&k.as_str()))
        .map(|k| format!("{k} {} -> {}", show(a.get(k)), show(b.get(k))))
        .collect())
}

impl RunConfig {
    /// "key: saved -> requested" for every [model] and [train] setting that differs from this
    /// (saved) config and may not change on a resume.
    pub fn fixed_differences(&self, requested: &RunConfig) -> Result<Vec<String>> {
        let keys: Vec<&str> = RESUMABLE.iter().map(|(k, _)| *k).collect();
        let mut out = differences(self, requested, &keys)?;
        // [data] is what the run trained on, checked against the data itself.
        out.retain(|d| !d.starts_with("data."));
        Ok(out)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config {}", path.display()))?;
        let cfg: Self = toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        fsio::write_atomic(path, toml::to_string_pretty(self)?.as_bytes())
    }

    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.train.validate()
    }
}
