//! Evaluation: metrics and figures.

pub mod figures;
pub mod metrics;
