//! apunet: ambiguous medical image segmentation with a Probabilistic Attention U-Net.

pub mod cli;
pub mod data;
pub mod device;
pub mod eval;
pub mod inference;
pub mod train;
pub mod fsio;
pub mod gan;
pub mod model;
pub mod predict;
