//! Evaluation: metrics and figures.

pub mod figures;
pub mod metrics;
pub mod plots;
pub mod publish;
pub mod report;
pub mod review;
