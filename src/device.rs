//! Picking the backend at run time: one code path for every device.

use anyhow::{Result, bail};
use burn::prelude::*;

/// `cpu` (burn's flex backend), `wgpu` or `cuda`, as compiled in.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        "wgpu" => wgpu(),
        "cuda" => cuda(),
        other => bail!("unknown device '{other}': use cpu, wgpu or cuda"),
    }
}

#[cfg(feature = "wgpu")]
fn wgpu() -> Result<Device> {
    Ok(Device::wgpu(Default::default()))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu() -> Result<Device> {
    bail!("this apunet was built without GPU support: rebuild with `cargo build --release --features wgpu`")
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device> {
    Ok(Device::cuda(0))
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device> {
    bail!(
        "this apunet was built without CUDA: rebuild with `cargo build --release --features cuda` \
         (needs network access at build time for cubecl's LLVM bundle)"
    )
}
