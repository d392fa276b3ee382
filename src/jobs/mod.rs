//! What each command does, on top of the library's parts: sampling a dataset with a run, its
//! evaluation, prediction of whole scans, the benchmarks and the demo. Nothing below depends
//! on this module; the command line calls it.

pub mod bench;
pub mod demo;
pub mod evaluate;
pub mod predict;
pub mod sample;
pub mod weights;
