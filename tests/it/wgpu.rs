//! The GPU path (cargo feature `wgpu`): every op the models use must run forward and backward
//! on burn's cubecl backend. `.ci/run` (or `cargo test --features wgpu wgpu::`). Without a GPU it needs
//! Mesa's Vulkan driver (lavapipe, Debian's `mesa-vulkan-drivers`): wgpu's OpenGL path
//! deadlocks in cubecl's poll thread. On lavapipe the training test took about 10 minutes here
//! (shader compilation), and CI runs it through `.ci/run`.
#![cfg(feature = "wgpu")]

use crate::common;

use apunet::gan::networks::GanConfig;
use apunet::gan::train::{GanStepper, GanTrainConfig};
use apunet::inference::{Sampling, sample_images};
use apunet::model::{ModelConfig, ProbUNet, Segmenter, elbo_loss, to_host};
use apunet::predict::predict_image;
use apunet::train::checkpoint::{load_model, save_model};
use burn::module::{ModuleVisitor, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Gradients;
use ndarray::Array4;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

fn gpu() -> Device {
    require_vulkan_driver();
    apunet::device::parse_device("wgpu").unwrap()
}

/// Without a Vulkan driver wgpu falls back to OpenGL, which fails deep inside wgpu-hal: say why
/// up front instead.
fn require_vulkan_driver() {
    if !cfg!(target_os = "linux") || ["VK_ICD_FILENAMES", "VK_DRIVER_FILES"].iter().any(|v| std::env::var_os(v).is_some()) {
        return;
    }
    let dirs = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"];
    let found = dirs.iter().any(|d| std::fs::read_dir(d).map(|mut e| e.next().is_some()).unwrap_or(false));
    assert!(found, "no Vulkan driver found in {dirs:?}: run .ci/run, which installs Debian's mesa-vulkan-drivers");
}

fn tiny() -> ModelConfig {
    ModelConfig { filters: vec![4, 8], convs_per_block: 2, transformer_heads: 2, latent_dim: 2, ..Default::default() }
}

fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

/// Every parameter's gradient, in module order.
struct Grads<'a>(&'a Gradients, Vec<Vec<f32>>);

impl ModuleVisitor for Grads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let g = param.val().grad(self.0).map(|g| to_host(g).unwrap()).unwrap_or_default();
        self.1.push(g);
    }
}

fn close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = a.iter().map(|v| v.abs()).fold(1e-3f32, f32::max);
    let err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(err <= rel * scale, "{what}: differs by {err} (scale {scale})");
}

#[test]
fn a_tiny_model_trains_on_the_gpu_as_on_the_cpu() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let cpu = Device::flex().autodiff();
    cpu.seed(7);
    let mut on_cpu = ProbUNet::new(&tiny(), &cpu);
    let ckpt = dir.path().join("init.bpk");
    save_model(&on_cpu, &ckpt).unwrap();
    let ad_gpu = gpu().autodiff();
    let mut on_gpu = load_model(ProbUNet::new(&tiny(), &ad_gpu), &ckpt).unwrap();
    let (mut opt_c, mut opt_g) = (AdamConfig::new().init(), AdamConfig::new().init());
    let mut rng = StdRng::seed_from_u64(1);
    let (b, s) = (2, 16);
    for step in 0..2 {
        let x = randn(&mut rng, b * s * s).into_iter().map(|v| (0.4 + 0.1 * v).clamp(0.0, 1.0)).collect::<Vec<_>>();
        let y: Vec<f32> = (0..b * s * s).map(|i| ((i % s) > 7 && (i / s) % s > 5) as u8 as f32).collect();
        let eps = randn(&mut rng, b * 2);
        let run = |model: &ProbUNet, d: &Device| {
            let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [b, 1, s, s]), d);
            let yt = Tensor::<4>::from_data(TensorData::new(y.clone(), [b, 1, s, s]), d);
            let et = Tensor::<2>::from_data(TensorData::new(eps.clone(), [b, 2]), d);
            let loss = elbo_loss(&model.forward_train(xt, yt.clone(), et), yt, 1.0);
            let values = to_host(Tensor::cat(vec![loss.total.clone(), loss.reconstruction, loss.kl], 0)).unwrap();
            let grads = loss.total.backward();
            let mut v = Grads(&grads, Vec::new());
            model.visit(&mut v);
            (values, v.1, GradientsParams::from_grads(grads, model))
        };
        let (lc, gc, pc) = run(&on_cpu, &cpu);
        let (lg, gg, pg) = run(&on_gpu, &ad_gpu);
        close(&lc, &lg, 1e-3, &format!("step {step} losses"));
        assert_eq!(gc.len(), gg.len());
        for (k, (a, b)) in gc.iter().zip(&gg).enumerate() {
            close(a, b, 1e-3, &format!("step {step} gradient of parameter {k}"));
        }
        on_cpu = opt_c.step(1e-3, on_cpu, pc);
        on_gpu = opt_g.step(1e-3, on_gpu, pg);
    }

    // Sampling and large-image prediction run on the GPU and agree with the CPU.
    let (vc, vg) = (Segmenter::PUNet(on_cpu.valid()), Segmenter::PUNet(on_gpu.valid()));
    let imgs = Array4::from_shape_fn((3, 1, s, s), |(i, _, y, x)| ((i + y * x) % 9) as f32 / 9.0);
    let sampling = |batch| Sampling { n: 4, seed: 0, batch, mean_scales: vec![] };
    let sc = sample_images(&vc, &imgs, &sampling(2), &Device::flex(), |_| {}).unwrap();
    let sg = sample_images(&vg, &imgs, &sampling(2), &gpu(), |_| {}).unwrap();
    close(sc.mean.as_slice().unwrap(), sg.mean.as_slice().unwrap(), 1e-3, "sampled mean probability");
    let big: Vec<f32> = (0..40 * 52).map(|q| (q % 52) as f32 / 52.0).collect();
    let three = Sampling { n: 3, ..sampling(4) };
    let pc = predict_image(&vc, &big, 40, 52, (s, s), &three, 0.5, &Device::flex(), |_| {}).unwrap();
    let pg = predict_image(&vg, &big, 40, 52, (s, s), &three, 0.5, &gpu(), |_| {}).unwrap();
    close(&pc.mean, &pg.mean, 1e-3, "predicted mean probability");
}

#[test]
fn one_cyclegan_step_runs_on_the_gpu() {
    let _guard = common::rng_lock();
    let ad = gpu().autodiff();
    ad.seed(0);
    let cfg = GanTrainConfig { net: GanConfig { base: 4, residual_blocks: 1, ..Default::default() }, ..Default::default() };
    let mut stepper = GanStepper::new(&cfg, &ad);
    let mut rng = StdRng::seed_from_u64(0);
    let s = 32;
    let a = Tensor::<4>::from_data(
        TensorData::new(randn(&mut rng, s * s).into_iter().map(|v| v.clamp(-1.0, 1.0)).collect::<Vec<_>>(), [1, 1, s, s]),
        &ad,
    );
    let b = Tensor::<4>::from_data(
        TensorData::new(randn(&mut rng, s * s).into_iter().map(|v| (0.5 * v).tanh()).collect::<Vec<_>>(), [1, 1, s, s]),
        &ad,
    );
    let l = stepper.step(a, b, 2e-4, &mut rng).unwrap();
    assert!(l.generator.is_finite() && l.cycle.is_finite() && l.discriminator.is_finite(), "{l:?}");
}
