use crate::common;

use apunet::model::attention_gate::AttentionGate;
use apunet::model::gaussian::Gaussian;
use apunet::model::prob_unet::bce_with_logits_per_image;
use apunet::model::{ModelConfig, NormKind, ProbUNet, TransformerLevels, elbo_loss, to_host};
use apunet::train::checkpoint::{load_model, save_model};
use burn::module::Param;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use common::tiny_config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

fn dev() -> Device {
    Device::flex()
}

fn t2(data: Vec<f32>, shape: [usize; 2], d: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, shape), d)
}

fn t4(data: Vec<f32>, shape: [usize; 4], d: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(data, shape), d)
}

fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

#[test]
fn shapes_through_every_module() {
    let _guard = common::rng_lock();
    let d = dev();
    for cfg in [
        tiny_config(),
        ModelConfig { filters: vec![8, 16, 24], norm: NormKind::Batch, transformer_heads: 4, latent_dim: 4, ..Default::default() },
        ModelConfig {
            filters: vec![4, 8, 8],
            attention_gates: false,
            transformer_levels: TransformerLevels::None,
            norm: NormKind::None,
            ..Default::default()
        },
    ] {
        cfg.validate().unwrap();
        let model = ProbUNet::new(&cfg, &d);
        let (b, h, w, l) = (2, 16, 24, cfg.latent_dim);
        let x = Tensor::<4>::zeros([b, 1, h, w], &d);
        let y = Tensor::<4>::ones([b, 1, h, w], &d);
        assert_eq!(model.unet.forward(x.clone()).dims(), [b, cfg.filters[0], h, w]);
        let maps = model.unet.attention_maps(x.clone());
        assert_eq!(maps.len(), if cfg.attention_gates { cfg.depth() - 1 } else { 0 });
        for (k, m) in maps.into_iter().enumerate() {
            let level = cfg.depth() - 2 - k;
            assert_eq!(m.dims(), [b, 1, h >> level, w >> level]);
        }
        let prior = model.prior.forward(x.clone());
        assert_eq!(prior.mu.dims(), [b, l]);
        assert_eq!(prior.log_sigma.dims(), [b, l]);
        let out = model.forward_train(x.clone(), y.clone(), Tensor::zeros([b, l], &d));
        assert_eq!(out.logits.dims(), [b, 1, h, w]);
        assert_eq!(out.posterior.mu.dims(), [b, l]);
        let (f, p) = model.encode(x.clone());
        let n = 5;
        assert_eq!(model.sample_from(f, &p, Tensor::zeros([b * n, l], &d)).dims(), [b * n, 1, h, w]);
        assert_eq!(model.predict_prior_mean(x.clone()).dims(), [b, 1, h, w]);
        assert_eq!(model.reconstruct(x, y).dims(), [b, 1, h, w]);
    }
}

#[test]
fn analytic_kl_matches_monte_carlo_estimate() {
    let d = dev();
    let (mq, lq, mp, lp) = ([0.3f32, -1.0, 0.5], [-0.5f32, 0.2, -1.2], [0.0f32, 0.4, -0.3], [0.1f32, -0.3, 0.0]);
    let q = Gaussian { mu: t2(mq.to_vec(), [1, 3], &d), log_sigma: t2(lq.to_vec(), [1, 3], &d) };
    let p = Gaussian { mu: t2(mp.to_vec(), [1, 3], &d), log_sigma: t2(lp.to_vec(), [1, 3], &d) };
    let analytic = to_host(q.kl(&p)).unwrap()[0] as f64;
    // E_q[log q(z) - log p(z)] by sampling.
    let mut rng = StdRng::seed_from_u64(7);
    let n = 200_000;
    let mut acc = 0f64;
    for _ in 0..n {
        for k in 0..3 {
            let e: f64 = StandardNormal.sample(&mut rng);
            let (sq, sp) = ((lq[k] as f64).exp(), (lp[k] as f64).exp());
            let z = mq[k] as f64 + sq * e;
            let log_q = -(lq[k] as f64) - 0.5 * ((z - mq[k] as f64) / sq).powi(2);
            let log_p = -(lp[k] as f64) - 0.5 * ((z - mp[k] as f64) / sp).powi(2);
            acc += log_q - log_p;
        }
    }
    let mc = acc / n as f64;
    assert!(analytic > 0.0);
    assert!((analytic - mc).abs() < 0.02 * analytic.max(0.1), "analytic {analytic} vs monte carlo {mc}");
    // KL of a distribution with itself is zero.
    assert!(to_host(q.kl(&q)).unwrap()[0].abs() < 1e-6);
}

#[test]
fn bce_matches_definition_and_is_stable() {
    let d = dev();
    let logits = t4(vec![0.0, 2.0, -3.0, 80.0, -80.0, 1.5], [1, 1, 2, 3], &d);
    let target = t4(vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [1, 1, 2, 3], &d);
    let got = to_host(bce_with_logits_per_image(logits, target)).unwrap()[0] as f64;
    let naive = |x: f64, y: f64| -(y * (1.0 / (1.0 + (-x).exp())).ln() + (1.0 - y) * (1.0 - 1.0 / (1.0 + (-x).exp())).ln());
    let want = naive(0.0, 1.0) + naive(2.0, 0.0) + naive(-3.0, 0.0) + 0.0 + 80.0 + naive(1.5, 1.0);
    assert!((got - want).abs() < 1e-3, "{got} vs {want}");
}

#[test]
fn attention_coefficients_in_unit_interval_and_gate_can_close() {
    let _guard = common::rng_lock();
    let d = dev();
    let mut rng = StdRng::seed_from_u64(3);
    let gate = AttentionGate::new(6, 10, &d);
    let skip = t4(randn(&mut rng, 2 * 6 * 8 * 8).iter().map(|v| v * 3.0).collect(), [2, 6, 8, 8], &d);
    let g = t4(randn(&mut rng, 2 * 10 * 4 * 4), [2, 10, 4, 4], &d);
    let a = to_host(gate.coefficients(skip.clone(), g.clone())).unwrap();
    assert_eq!(a.len(), 2 * 8 * 8);
    assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(a.iter().any(|&v| v > 0.01 && v < 0.99));
    // Drive psi strongly negative: the gate shuts and the skip is zeroed.
    let mut closed = gate;
    closed.psi.bias = Some(Param::from_tensor(Tensor::full([1], -1.0e4, &d)));
    let out = to_host(closed.forward(skip.clone(), g)).unwrap();
    let skip_max = to_host(skip).unwrap().iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(skip_max > 1.0);
    assert!(out.iter().all(|v| v.abs() < 1e-6), "gate did not close");
}

fn toy_batch(d: &Device, n: usize, s: usize) -> (Tensor<4>, Tensor<4>) {
    let mut img = vec![0.1f32; n * s * s];
    let mut msk = vec![0f32; n * s * s];
    for i in 0..n {
        let (cx, cy, r) = (4 + 3 * i, 10 - i, 2 + i);
        for y in 0..s {
            for x in 0..s {
                if (x as i32 - cx as i32).pow(2) + (y as i32 - cy as i32).pow(2) <= (r * r) as i32 {
                    img[i * s * s + y * s + x] = 0.4;
                    msk[i * s * s + y * s + x] = 1.0;
                }
            }
        }
    }
    (t4(img, [n, 1, s, s], d), t4(msk, [n, 1, s, s], d))
}

#[test]
fn tiny_model_overfits_four_images() {
    let _guard = common::rng_lock();
    let d = dev().autodiff();
    d.seed(1);
    let cfg = tiny_config();
    let mut model = ProbUNet::new(&cfg, &d);
    let mut optim = AdamConfig::new().init();
    let (x, y) = toy_batch(&d, 4, 16);
    let mut rng = StdRng::seed_from_u64(0);
    let mut losses = Vec::new();
    for _ in 0..120 {
        let eps = t2(randn(&mut rng, 4 * cfg.latent_dim), [4, cfg.latent_dim], &d);
        let out = model.forward_train(x.clone(), y.clone(), eps);
        let loss = elbo_loss(&out, y.clone(), 1.0);
        losses.push(to_host(loss.total.clone()).unwrap()[0]);
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    let first = losses[..5].iter().sum::<f32>() / 5.0;
    let last = losses[losses.len() - 5..].iter().sum::<f32>() / 5.0;
    assert!(last < first / 5.0, "loss fell only from {first} to {last}");
}

#[test]
fn checkpoint_round_trip_gives_identical_outputs() {
    let _guard = common::rng_lock();
    let d = dev();
    d.seed(5);
    let cfg = ModelConfig { norm: NormKind::Batch, ..tiny_config() };
    let model = ProbUNet::new(&cfg, &d);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bpk");
    save_model(&model, &path).unwrap();
    d.seed(99);
    let fresh = ProbUNet::new(&cfg, &d);
    let (x, _) = toy_batch(&d, 2, 16);
    let before = to_host(fresh.predict_prior_mean(x.clone())).unwrap();
    let loaded = load_model(fresh, &path).unwrap();
    let a = to_host(model.predict_prior_mean(x.clone())).unwrap();
    let b = to_host(loaded.predict_prior_mean(x)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, before, "the fresh model should differ before loading");
    // A checkpoint for another architecture is refused with a message, not a panic.
    let other = ProbUNet::new(&ModelConfig { filters: vec![8, 32], ..tiny_config() }, &d);
    let err = load_model(other, &path).expect_err("mismatched checkpoint must fail");
    assert!(format!("{err:#}").contains("m.bpk"), "{err:#}");
}

#[test]
fn different_z_give_different_masks_and_same_seed_same_result() {
    let _guard = common::rng_lock();
    let d = dev();
    let l = tiny_config().latent_dim;
    let (x, _) = toy_batch(&d, 1, 16);
    let mut rng = StdRng::seed_from_u64(2);
    let eps: Vec<f32> = (0..4 * l).map(|_| rng.gen_range(-3.0..3.0)).collect();
    // Parameters initialise lazily from the device's RNG, so seed, build and run as one unit.
    let run = || {
        d.seed(11);
        let m = ProbUNet::new(&tiny_config(), &d);
        let (f, p) = m.encode(x.clone());
        to_host(m.sample_from(f, &p, t2(eps.clone(), [4, l], &d))).unwrap()
    };
    let logits = run();
    let hw = 16 * 16;
    let distinct = (1..4).filter(|&k| logits[k * hw..(k + 1) * hw] != logits[..hw]).count();
    assert_eq!(distinct, 3, "each z should give its own logits");
    assert_eq!(logits, run(), "same seed must give the same result");
}

#[test]
fn invalid_configs_are_reported() {
    let bad_depth = ModelConfig { filters: vec![], ..Default::default() };
    assert!(bad_depth.validate().is_err());
    let bad_heads = ModelConfig { transformer_heads: 5, ..Default::default() };
    assert!(format!("{:#}", bad_heads.validate().unwrap_err()).contains("transformer_heads"));
    for p in [0.0, 1.0, f32::NAN] {
        let bad_prior = ModelConfig { output_prior: p, ..Default::default() };
        assert!(format!("{:#}", bad_prior.validate().unwrap_err()).contains("output_prior"));
    }
    let cfg = ModelConfig::default();
    let err = cfg.check_size(100, 128).unwrap_err();
    assert!(format!("{err:#}").contains("not divisible by 2^(depth-1) = 8"), "{err:#}");
    assert!(cfg.check_size(128, 128).is_ok());
}

#[test]
fn the_posterior_depends_on_the_mask_and_the_prior_does_not() {
    let _guard = common::rng_lock();
    let d = dev();
    d.seed(11);
    let model = ProbUNet::new(&tiny_config(), &d);
    let (x, y) = toy_batch(&d, 2, 16);
    let eps = t2(vec![0.0; 2 * 3], [2, 3], &d);
    let with = model.forward_train(x.clone(), y.clone(), eps.clone());
    let without = model.forward_train(x, y.zeros_like(), eps);
    let gap = |a: Tensor<2>, b: Tensor<2>| to_host(a.sub(b).abs().max()).unwrap()[0];
    assert!(gap(with.posterior.mu.clone(), without.posterior.mu.clone()) > 1e-4, "q(z|x,y) ignores y");
    assert!(gap(with.posterior.log_sigma, without.posterior.log_sigma) > 1e-5);
    assert_eq!(gap(with.prior.mu, without.prior.mu), 0.0, "p(z|x) must not see y");
    // Training draws from the posterior: the logits follow y too.
    assert!(to_host(with.logits.sub(without.logits).abs().max()).unwrap()[0] > 1e-5);
}

#[test]
fn upsample2x_equals_burns_bilinear_forward_and_backward() {
    use apunet::model::upsample2x;
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    let d = dev();
    let ad = d.clone().autodiff();
    let mut rng = StdRng::seed_from_u64(5);
    for [b, c, h, w] in [[2, 3, 4, 4], [1, 2, 1, 1], [1, 1, 1, 5], [2, 1, 7, 3], [1, 4, 16, 8]] {
        let v = randn(&mut rng, b * c * h * w);
        let reference = |x: Tensor<4>| {
            interpolate(x, InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false).with_output_size([2 * h, 2 * w]))
        };
        let ours = to_host(upsample2x(t4(v.clone(), [b, c, h, w], &d))).unwrap();
        let theirs = to_host(reference(t4(v.clone(), [b, c, h, w], &d))).unwrap();
        let err = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-6, "{b}x{c}x{h}x{w}: forward differs by {err}");
        // Gradients of the same weighted sum through both.
        let weights = randn(&mut rng, b * c * 4 * h * w);
        let grad = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
            let x = t4(v.clone(), [b, c, h, w], &ad).require_grad();
            let loss = (f(x.clone()) * t4(weights.clone(), [b, c, 2 * h, 2 * w], &ad)).sum();
            let g = loss.backward();
            to_host(x.grad(&g).unwrap()).unwrap()
        };
        let (g1, g2) = (grad(&|x| upsample2x(x)), grad(&|x| reference(x)));
        let err = g1.iter().zip(&g2).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-5, "{b}x{c}x{h}x{w}: gradient differs by {err}");
    }
}

#[test]
fn transformers_at_every_level_window_the_large_maps() {
    use apunet::train::RunConfig;
    let _guard = common::rng_lock();
    let toml_text = "[model]\nfilters = [4, 8, 8]\ntransformer_levels = \"all\"\ntransformer_heads = 2\n";
    let cfg: RunConfig = toml::from_str(toml_text).unwrap();
    assert_eq!(cfg.model.transformer_levels(), vec![0, 1]);
    // Written back as "all", so a deeper model read from the same file still gets every level.
    let again: RunConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(again, cfg);
    assert!(toml::to_string(&cfg).unwrap().contains("transformer_levels = \"all\""));
    let bad = toml::from_str::<RunConfig>("[model]\ntransformer_levels = \"most\"\n").unwrap_err();
    assert!(bad.to_string().contains("'most' is not a level") && bad.to_string().contains("none"), "{bad}");
    // At 128 px level 0 attends over 64x64 = 4,096 tokens: windowed, and nothing to warn about.
    assert!(cfg.model.transformer_warnings(128, 128).is_empty());
    let d = dev();
    d.seed(9);
    let model = ProbUNet::new(&ModelConfig { latent_dim: 2, ..cfg.model }, &d);
    let x = t4(vec![0.5; 2 * 128 * 128], [2, 1, 128, 128], &d);
    let out = model.forward_train(x.clone(), x.clone().greater_elem(0.4).float(), Tensor::zeros([2, 2], &d));
    let v = to_host(out.logits).unwrap();
    assert_eq!(v.len(), 2 * 128 * 128);
    assert!(v.iter().all(|x| x.is_finite()));
}
