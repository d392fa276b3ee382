//! Evaluation: metrics and figures.

pub mod figures;
pub mod metrics;
pub mod plots;
pub mod report;
pub mod review;
