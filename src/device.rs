//! Picking the backend at run time: one code path for every device.

use anyhow::{Result, bail};
use burn::prelude::*;

/// `cpu` (burn's flex backend), `wgpu` or `cuda`, as compiled in.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        "wgpu" => wgpu(None),
        "cuda" => cuda(0),
        other => match other.split_once(':') {
            Some(("wgpu", i)) => wgpu(Some(index(other, i)?)),
            Some(("cuda", i)) => cuda(index(other, i)?),
            _ => bail!("unknown device '{other}': use cpu, wgpu, cuda, wgpu:N or cuda:N"),
        },
    }
}

fn index(name: &str, i: &str) -> Result<usize> {
    i.parse().map_err(|_| anyhow::anyhow!("device '{name}': '{i}' is not a GPU index (e.g. cuda:1)"))
}

#[cfg(feature = "wgpu")]
fn wgpu(index: Option<usize>) -> Result<Device> {
    Ok(match index {
        Some(i) => Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(i)),
        None => Device::wgpu(Default::default()),
    })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_: Option<usize>) -> Result<Device> {
    bail!("this apunet was built without GPU support: rebuild with `cargo build --release --features wgpu`")
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Device> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_: usize) -> Result<Device> {
    bail!(
        "this apunet was built without CUDA: rebuild with `cargo build --release --features cuda` \
         (needs network access at build time for cubecl's LLVM bundle)"
    )
}
