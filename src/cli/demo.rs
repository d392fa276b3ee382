//! `apunet demo`: the main job on an embedded default (the work is `crate::jobs::demo`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::data::synth::SynthKind;
use crate::jobs::demo::{DemoSettings, run_demo};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Folder for the data, the run, the samples and the evaluation.
    #[arg(long, default_value = "apunet-demo")]
    pub out: PathBuf,
    /// lidc-like: dark lung-CT-like crops; head-ct: head CT in HU with subtle lesions, imported
    /// through the brain window at 0.5 mm pixels, as `synth --kind head-ct` and `import` make it.
    #[arg(long, value_enum, default_value = "lidc-like")]
    pub data: SynthKind,
    /// Training epochs.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Synthetic training crops (the held-out set is a third as many).
    #[arg(long, default_value_t = 192)]
    pub count: usize,
    /// Crop side in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// cpu | wgpu | cuda
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Seed of the data, the weights and the sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let DemoArgs { out, data, epochs, count, size, device, seed } = a;
    run_demo(&DemoSettings { out, kind: data, epochs, count, size, device, seed }, |line| crate::say!("{line}"))
}
