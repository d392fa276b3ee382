//! apunet: ambiguous medical image segmentation with a Probabilistic Attention U-Net.

pub mod cli;
pub mod data;
pub mod device;
pub mod eval;
pub mod fsio;
pub mod gan;
pub mod inference;
pub mod jobs;
pub mod kernels;
pub mod model;
pub mod predict;
pub mod progress;
pub mod train;

/// `println!` that never panics on a closed pipe (`apunet eval ... | head`): the command still
/// finishes its work and writes its files.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
