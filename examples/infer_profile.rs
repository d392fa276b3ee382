//! Times one inference batch of the default model at 128x128, split into its parts (the
//! backbone, the prior net, fcomb's samples), to see where `predict` spends a patch.
//!
//!     cargo run --release --example infer_profile [-- BATCH REPS PART]
//!
//! Other models: `SIZE=64 FILTERS=16,32,64,96 LEVELS=all` (the LIDC recipe with a transformer
//! before every decoder block).

use std::time::Instant;

use apunet::model::{ModelConfig, ProbUNet, to_host};
use burn::prelude::*;
use burn::tensor::Distribution;

fn main() -> anyhow::Result<()> {
    apunet::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let b: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4);
    let reps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    let part = args.get(3).cloned().unwrap_or_else(|| "all".into());
    let device = Device::flex();
    device.seed(0);
    let mut cfg = ModelConfig::default();
    if let Ok(f) = std::env::var("FILTERS") {
        cfg.filters = f.split(',').map(|v| v.trim().parse()).collect::<Result<_, _>>()?;
    }
    if let Ok(l) = std::env::var("LEVELS") {
        cfg.transformer_levels = l.parse().map_err(anyhow::Error::msg)?;
    }
    let s: usize = std::env::var("SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    let m = ProbUNet::new(&cfg, &device);
    let x = Tensor::<4>::random([b, 1, s, s], Distribution::Uniform(0.0, 1.0), &device);
    let n = 16;
    let z = Tensor::<2>::random([b * n, cfg.latent_dim], Distribution::Normal(0.0, 1.0), &device);
    let feats = m.unet.forward(x.clone());
    let time = |name: &str, f: &mut dyn FnMut() -> anyhow::Result<()>| -> anyhow::Result<()> {
        if part != "all" && part != name {
            return Ok(());
        }
        f()?;
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        println!("{name:<10} {:>8.2} ms per batch of {b}", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
        Ok(())
    };
    time("backbone", &mut || to_host(m.unet.forward(x.clone())).map(|_| ()))?;
    time("prior", &mut || to_host(m.prior.forward(x.clone()).mu).map(|_| ()))?;
    time("samples", &mut || to_host(m.decode_latents(feats.clone(), z.clone())).map(|_| ()))?;
    Ok(())
}
