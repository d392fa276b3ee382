//! What a program embedding apunet (the Python package) sees of a training run, and how it
//! stops one: `epoch` after each epoch is committed to disk, `stop` before every step. A
//! stopped run ends with [`Stopped`] and resumes from its last committed epoch, as after a kill.

use super::EpochMetrics;

/// Hooks into a run; the defaults watch nothing and never stop.
pub trait Watch {
    /// After epoch `m.epoch` is saved (rank 0 only).
    fn epoch(&self, _m: &EpochMetrics) {}
    /// Asked before every step: true ends the run there.
    fn stop(&self) -> bool {
        false
    }
}

/// No hooks: the command line's runs.
pub struct Unwatched;

impl Watch for Unwatched {}

/// The error a run stopped by its [`Watch`] ends with.
#[derive(Debug, Clone, Copy)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("training stopped on request; the run resumes from its last saved epoch (train --resume)")
    }
}

impl std::error::Error for Stopped {}
