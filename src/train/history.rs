//! metrics.csv: one line per finished epoch, rewritten atomically after each.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::fsio;

/// One epoch's line in metrics.csv.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub loss: f64,
    pub reconstruction: f64,
    pub kl: f64,
    pub val_loss: f64,
    pub val_reconstruction: f64,
    pub val_kl: f64,
    pub val_ged: f64,
    pub images_per_s: f64,
    pub skipped_steps: usize,
    pub beta: f32,
    pub seconds: f64,
}

const CSV_HEADER: &str = "epoch,loss,reconstruction,kl,val_loss,val_reconstruction,val_kl,val_ged,images_per_s,skipped_steps,beta,seconds";

impl EpochMetrics {
    fn csv(&self) -> String {
        format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.3},{},{},{:.2}",
            self.epoch,
            self.loss,
            self.reconstruction,
            self.kl,
            self.val_loss,
            self.val_reconstruction,
            self.val_kl,
            self.val_ged,
            self.images_per_s,
            self.skipped_steps,
            self.beta,
            self.seconds
        )
    }
}

pub fn write_metrics(path: &Path, rows: &[EpochMetrics]) -> Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for r in rows {
        text.push_str(&r.csv());
        text.push('\n');
    }
    fsio::write_atomic(path, text.as_bytes())
}

pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(path)?;
    let mut out = Vec::new();
    for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 12 {
            bail!("{}: malformed line '{line}'", path.display());
        }
        let p = |i: usize| f[i].parse::<f64>().with_context(|| format!("{}: bad number '{}'", path.display(), f[i]));
        out.push(EpochMetrics {
            epoch: f[0].parse()?,
            loss: p(1)?,
            reconstruction: p(2)?,
            kl: p(3)?,
            val_loss: p(4)?,
            val_reconstruction: p(5)?,
            val_kl: p(6)?,
            val_ged: p(7)?,
            images_per_s: p(8)?,
            skipped_steps: f[9].parse()?,
            beta: p(10)? as f32,
            seconds: p(11)?,
        });
    }
    Ok(out)
}

/// A run's curves as the plot draws them: loss, reconstruction and KL (train and validation)
/// and validation GED, per epoch.
pub fn curve_panels(history: &[EpochMetrics]) -> Vec<crate::eval::plots::Panel> {
    type Series = (&'static str, fn(&EpochMetrics) -> f64);
    let specs: [(&str, Vec<Series>); 4] = [
        ("loss", vec![("train", |m| m.loss), ("validation", |m| m.val_loss)]),
        ("reconstruction", vec![("train", |m| m.reconstruction), ("validation", |m| m.val_reconstruction)]),
        ("KL", vec![("train", |m| m.kl), ("validation", |m| m.val_kl)]),
        ("validation GED", vec![("GED (16 samples)", |m| m.val_ged)]),
    ];
    specs
        .into_iter()
        .map(|(title, series)| crate::eval::plots::Panel {
            title: title.to_string(),
            series: series
                .into_iter()
                .map(|(name, f)| (name.to_string(), history.iter().map(|m| (m.epoch as f64, f(m))).collect()))
                .collect(),
        })
        .collect()
}
