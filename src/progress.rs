//! The one progress bar every command shows: prefix, elapsed time, bar, count and a message.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps named `prefix`; hidden when `quiet`.
pub fn bar(len: u64, quiet: bool, prefix: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(prefix.to_string());
    pb
}
