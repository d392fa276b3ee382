//! `apunet bench` and `apunet gan bench`: training images/s, sampled masks/s (or CycleGAN
//! iterations/s) and peak memory, as JSON.
//! Timings are measured, never asserted; compare with `bench/torch_peer.py` in the same run.

use std::time::Instant;

use anyhow::Result;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use clap::Args;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;

use crate::device::parse_device;
use crate::gan::networks::GanConfig;
use crate::gan::train::{CycleGan, GanStepper, GanTrainConfig};
use crate::model::{ModelConfig, ModelKind, Segmenter, to_host};
use crate::train::distributed::Collective;
use crate::train::objective::bce_with_logits;

#[derive(Args, Debug)]
pub struct BenchSettings {
    /// cpu | wgpu | cuda
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Default: 8 on CPU, 32 on a GPU.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Square image side in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Samples per image in the sampling benchmark.
    #[arg(long, default_value_t = 16)]
    pub samples: usize,
    /// Filters per level [default: the model's].
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set)]
    pub filters: Option<Vec<usize>>,
    /// punet, or hpunet (the reference HPU-Net for --size).
    #[arg(long, value_enum, default_value_t = ModelKind::Punet)]
    pub model: ModelKind,
    /// With --model hpunet: attention gates and a transformer (the attention variant).
    #[arg(long)]
    pub attention: bool,
    /// A plain U-Net backbone: no attention gates, no transformer.
    #[arg(long)]
    pub no_attention: bool,
    /// Decoder levels with a transformer: e.g. 2, 0,1,2, all or none [default: the model's].
    #[arg(long, value_name = "LEVELS")]
    pub transformer_levels: Option<crate::model::TransformerLevels>,
    /// Time training as `train --devices` does with this many ranks on --device, one thread
    /// each, every rank stepping on its rows of the batch [default: 1, one rank].
    #[arg(long, default_value_t = 1)]
    pub ranks: usize,
    /// Only measure one core's fp32 FMA peak (a register-only loop, AVX2 and AVX-512), the
    /// figure kernel rates are shares of (examples/conv_gflops.rs, bench/torch_conv.py).
    #[arg(long)]
    pub fma_peak: bool,
}

fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// Peak resident memory of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The default model (or the one the settings name) trained and sampled on random data: a
/// JSON report.
pub fn bench(a: &BenchSettings) -> Result<serde_json::Value> {
    if a.fma_peak {
        let p = crate::kernels::peak::measure();
        return Ok(
            serde_json::json!({ "fma_peak_gflops_per_core": p.best(), "avx2_gflops": p.avx2_gflops, "avx512_gflops": p.avx512_gflops }),
        );
    }
    let device = parse_device(&a.device)?;
    let gpu = a.device != "cpu" && a.device != "flex";
    let b = a.batch_size.unwrap_or(if gpu { 32 } else { 8 });
    let mut cfg = match (a.model, &a.filters) {
        (ModelKind::Punet, _) => ModelConfig::default(),
        // The reference with as many levels as --filters lists (a model trained on patches,
        // timed at the crop size), else as many as --size halves into.
        (ModelKind::Hpunet, Some(f)) => ModelConfig::hpunet(1 << f.len().saturating_sub(1), a.attention),
        (ModelKind::Hpunet, None) => ModelConfig::hpunet(a.size, a.attention),
    };
    if let Some(f) = &a.filters {
        cfg.filters = f.clone();
    }
    if a.no_attention {
        cfg.without_attention();
    }
    if let Some(l) = &a.transformer_levels {
        cfg.transformer_levels = l.clone();
    }
    cfg.validate()?;
    cfg.check_size(a.size, a.size)?;
    let s = a.size;
    let mut rng = StdRng::seed_from_u64(0);
    let ad = device.clone().autodiff();
    ad.seed(0);
    let model = Segmenter::new(&cfg, &ad);
    let l = model.latent_size(s, s);
    let params = model.num_params();
    let x: Vec<f32> = randn(&mut rng, b * s * s).into_iter().map(|v| 0.1 + 0.05 * v).collect();
    let y: Vec<f32> = (0..b * s * s).map(|i| ((i % s) > s / 2) as u8 as f32).collect();
    let ranks = a.ranks.clamp(1, b);
    let group = crate::train::threads::group(ranks, std::time::Duration::from_secs(600));
    let train = TrainBench { x: &x, y: &y, b, s, l, warmup: a.warmup, steps: a.steps };
    let results: Vec<Result<(Vec<f64>, Segmenter)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = group
            .iter()
            .map(|rank| {
                // Each rank its own parameters (autodiff leaves must not be shared between
                // threads' graphs); rank 0's values reach the others in `run`.
                let model = if rank.rank() == 0 { model.clone() } else { Segmenter::new(&cfg, &ad) };
                let (ad, train) = (ad.clone(), &train);
                sc.spawn(move || {
                    let res = train.run(rank, model, &ad);
                    if let Err(e) = &res {
                        rank.fail(&format!("{e:#}"));
                    }
                    res
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a rank panicked")))).collect()
    });
    let mut step_times = Vec::new();
    let mut trained = None;
    for r in results {
        let (times, m) = r?;
        if trained.is_none() {
            step_times = times;
            trained = Some(m);
        }
    }
    let train_s: f64 = step_times.iter().sum();
    let train_ips = (a.steps * b) as f64 / train_s.max(1e-9);
    let slot = trained;

    let valid = slot.expect("model after training").valid();
    let n = a.samples;
    let sample_times = timed("sample", a.warmup, a.steps, || {
        let xi = Tensor::<4>::from_data(TensorData::new(x.clone(), [b, 1, s, s]), &device);
        let eps = Tensor::<2>::from_data(TensorData::new(randn(&mut rng, b * n * l), [b * n, l]), &device);
        let masks = valid.sample_from(&valid.encode(xi), eps, &[]).greater_elem(0.0);
        masks.try_into_data().map(|_| ()).map_err(|e| anyhow::anyhow!("the device failed to sample: {e:?}"))
    })?;
    let sample_s: f64 = sample_times.iter().sum();
    let masks_per_s = (a.steps * b * n) as f64 / sample_s.max(1e-9);
    let report = json!({
        "impl": "apunet (burn 0.22.1)",
        "device": a.device,
        "batch_size": b,
        "size": s,
        "model": a.model,
        "filters": cfg.filters,
        "transformer_levels": cfg.transformer_levels(),
        "params": params,
        "train_ranks": ranks,
        "train_images_per_s": train_ips,
        "train_step_s_median": median(&step_times),
        "samples_per_image": n,
        "sampled_masks_per_s": masks_per_s,
        "sample_batch_s_median": median(&sample_times),
        "peak_rss_mib": peak_rss_mib(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    Ok(report)
}

/// The training half of `bench`: the same step on every rank, timed on each.
struct TrainBench<'a> {
    x: &'a [f32],
    y: &'a [f32],
    b: usize,
    s: usize,
    l: usize,
    warmup: usize,
    steps: usize,
}

impl TrainBench<'_> {
    /// One rank's steps on its rows of the batch, gradients summed over the ranks as in
    /// `train --devices`; returns its step times and its trained model.
    fn run(&self, rank: &crate::train::threads::ThreadRank, model: Segmenter, ad: &Device) -> Result<(Vec<f64>, Segmenter)> {
        use crate::train::distributed;
        let (b, s, l) = (self.b, self.s, self.l);
        let rows = distributed::shard(rank, b);
        let (n, px) = (rows.len(), s * s);
        let mut rng = StdRng::seed_from_u64(rank.rank() as u64);
        let mut optim = AdamConfig::new().init();
        let mut slot = Some(distributed::broadcast_module(rank, model)?);
        let label = if rank.rank() == 0 { "train" } else { "" };
        let times = timed(label, self.warmup, self.steps, || {
            let xi = Tensor::<4>::from_data(TensorData::new(self.x[rows.start * px..rows.end * px].to_vec(), [n, 1, s, s]), ad);
            let yi = Tensor::<4>::from_data(TensorData::new(self.y[rows.start * px..rows.end * px].to_vec(), [n, 1, s, s]), ad);
            let eps = Tensor::<2>::from_data(TensorData::new(randn(&mut rng, n * l), [n, l]), ad);
            let model = slot.take().expect("model is put back after every step");
            let out = model.forward_train(xi, yi.clone(), eps);
            let loss = bce_with_logits(out.logits, yi).sum() / n as f64 + out.kl.mean();
            let grads = GradientsParams::from_grads(loss.clone().backward(), &model);
            let grads = distributed::average_gradients(rank, Some(grads), &model, n as f32 / b as f32)?;
            slot = Some(optim.step(1e-4, model, grads));
            // Reading a value back waits for the device, so the step is fully timed.
            to_host(loss).map(|_| ())
        })?;
        Ok((times, slot.expect("model after training")))
    }
}

#[derive(Args, Debug)]
pub struct GanBenchSettings {
    /// cpu | wgpu | cuda
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Square image sizes to time, e.g. 128,256.
    #[arg(long, value_delimiter = ',', action = clap::ArgAction::Set, default_value = "128,256")]
    pub sizes: Vec<usize>,
    /// Generator width (64 in the paper).
    #[arg(long, default_value_t = 64)]
    pub base: usize,
    /// Residual blocks (9 in the paper).
    #[arg(long, default_value_t = 9)]
    pub blocks: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
}

/// CycleGAN iterations/s at batch 1: the exact step `apunet gan train` runs (two generators,
/// two discriminators, LSGAN + cycle + identity losses, pools, four Adam updates).
pub fn gan_bench(a: &GanBenchSettings) -> Result<serde_json::Value> {
    let device = parse_device(&a.device)?;
    let ad = device.clone().autodiff();
    let mut rows = Vec::new();
    for &s in &a.sizes {
        CycleGan::check_size(s, s)?;
        ad.seed(0);
        let cfg = GanTrainConfig { net: GanConfig { base: a.base, residual_blocks: a.blocks, ..Default::default() }, ..Default::default() };
        let mut stepper = GanStepper::new(&cfg, &ad);
        let params = stepper.net.g_ab.num_params() * 2 + stepper.net.d_a.num_params() * 2;
        let mut rng = StdRng::seed_from_u64(0);
        let xa: Vec<f32> = randn(&mut rng, s * s).into_iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let xb: Vec<f32> = randn(&mut rng, s * s).into_iter().map(|v| (0.5 * v).tanh()).collect();
        let times = timed(&format!("gan {s}x{s}"), a.warmup, a.steps, || {
            let ra = Tensor::<4>::from_data(TensorData::new(xa.clone(), [1, 1, s, s]), &ad);
            let rb = Tensor::<4>::from_data(TensorData::new(xb.clone(), [1, 1, s, s]), &ad);
            // The step reads its losses back, so each iteration is fully timed.
            stepper.step(ra, rb, 2e-4, &mut rng).map(|_| ())
        })?;
        let total: f64 = times.iter().sum();
        rows.push(json!({
            "size": s,
            "iterations_per_s": a.steps as f64 / total.max(1e-9),
            "iteration_s_median": median(&times),
            "params": params,
        }));
    }
    let report = json!({
        "impl": "apunet (burn 0.22.1)",
        "device": a.device,
        "batch_size": 1,
        "base": a.base,
        "residual_blocks": a.blocks,
        "results": rows,
        "peak_rss_mib": peak_rss_mib(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    Ok(report)
}

/// Runs `warmup + steps` steps, printing each time; returns the timed (post-warm-up) ones.
fn timed(label: &str, warmup: usize, steps: usize, mut step: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t = Instant::now();
        step()?;
        let dt = t.elapsed().as_secs_f64();
        if !label.is_empty() {
            eprintln!("{label} step {i}: {dt:.3} s{}", if i < warmup { " (warm-up)" } else { "" });
        }
        if i >= warmup {
            times.push(dt);
        }
    }
    Ok(times)
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}
