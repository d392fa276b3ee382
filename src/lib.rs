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

/// glibc hands a freed buffer above a moving threshold (at most 32 MiB) back to the kernel, so
/// each sampling step faulted its large tensors in afresh, zeroed page by page: keeping them
/// in the heap measured 1.4x-1.9x the sampled masks/s (docs/benchmarks.md). Set before any thread
/// starts (the binary's and the examples' `main` call it first); memory then stays with the process until it exits.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; called first thing in `main`, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// `println!` that never panics on a closed pipe (`apunet eval ... | head`): the command still
/// finishes its work and writes its files.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
