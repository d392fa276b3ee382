// References written as the formulas they check index by position.
#![allow(clippy::needless_range_loop)]
//! apunet's integration tests, as one test binary: linking burn (and wgpu) once instead of
//! once per file keeps CI's build short. Tests that seed burn's RNG hold `common::rng_lock()`.

mod common;

mod attention;
mod channels;
mod cli;
mod ct;
mod data;
mod dicom_seg;
mod fortran;
mod fuzz;
mod gan;
mod gan_run;
mod head_ct;
mod hpunet;
mod import;
mod kernels;
mod kill;
mod layout;
mod lidc;
mod metrics;
mod mismatch;
mod model;
#[cfg(feature = "mpi")]
mod mpi;
mod painter;
mod parallel;
mod predict;
mod recipe;
mod review;
mod spacing;
mod train;
mod truth;
mod weights;
mod wgpu;
