//! The learning rate over a run: an optional linear warm-up, then constant, poly (nnU-Net's
//! `lr * (1 - progress)^0.9`) or cosine decay, evaluated per step.

use serde::{Deserialize, Serialize};

/// `[train] lr_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The same rate every step. Default.
    #[default]
    Constant,
    /// `lr * (1 - progress)^0.9`, as nnU-Net trains.
    Poly,
    /// `lr * (1 + cos(pi * progress)) / 2`.
    Cosine,
}

/// nnU-Net's poly exponent.
const POLY_EXPONENT: f64 = 0.9;

impl LrSchedule {
    /// The rate for step `step` (0-based, counted over the whole run) of `total` steps, after
    /// `warmup` steps of linear rise from `lr / warmup`.
    pub fn rate(self, lr: f64, step: usize, total: usize, warmup: usize) -> f64 {
        if step < warmup {
            return lr * (step + 1) as f64 / warmup as f64;
        }
        let span = total.saturating_sub(warmup).max(1) as f64;
        let progress = ((step - warmup) as f64 / span).min(1.0);
        match self {
            Self::Constant => lr,
            Self::Poly => lr * (1.0 - progress).powf(POLY_EXPONENT),
            Self::Cosine => lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_rises_to_the_rate_then_each_schedule_decays_its_way() {
        let (lr, total, warm) = (1e-3, 100, 10);
        for s in [LrSchedule::Constant, LrSchedule::Poly, LrSchedule::Cosine] {
            assert!((s.rate(lr, 0, total, warm) - 1e-4).abs() < 1e-12);
            assert!((s.rate(lr, 9, total, warm) - lr).abs() < 1e-12);
            assert!((s.rate(lr, 10, total, warm) - lr).abs() < 1e-12);
            let rates: Vec<f64> = (10..total).map(|t| s.rate(lr, t, total, warm)).collect();
            assert!(rates.windows(2).all(|p| p[1] <= p[0]), "{s:?} rises after the warm-up");
            assert!(rates.iter().all(|r| *r > 0.0), "{s:?} reaches zero before the last step");
        }
        // Half way: poly 0.5^0.9, cosine one half.
        assert!((LrSchedule::Poly.rate(1.0, 50, 100, 0) - 0.5f64.powf(0.9)).abs() < 1e-12);
        assert!((LrSchedule::Cosine.rate(1.0, 50, 100, 0) - 0.5).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant.rate(1.0, 99, 100, 0), 1.0);
    }
}
