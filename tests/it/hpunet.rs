//! The Hierarchical Probabilistic U-Net: shapes, the per-pixel KL against a plain formula, how
//! latents reach the masks, GECO and top-k, and a training run through every command.

use crate::common;

use apunet::data::npz::{self, NpyArray};
use apunet::data::synth::{SynthConfig, generate};
use apunet::jobs::evaluate::{EvalRequest, evaluate_run};
use apunet::jobs::predict::{PredictRequest, predict_files};
use apunet::jobs::sample::{RunSampling as SamplingArgs, sample_to_file as sample_to};
use apunet::model::hpunet::{PixelGaussian, nearest2x};
use apunet::model::{ModelConfig, ModelKind, NormKind, ProbUNet, Segmenter, TransformerLevels, WeightInit, to_host};
use apunet::train::checkpoint::{load_segmenter, save_model};
use apunet::train::objective::{GecoState, LossKind, Objective};
use apunet::train::{self, RunConfig, TrainConfig, TrainRequest, read_metrics};
use burn::prelude::*;
use burn::tensor::Distribution;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Four levels at 16 px (16, 8, 4, 2), latents at the 2 and 4 px scales, one block per level.
fn tiny_hpu(attention: bool) -> ModelConfig {
    ModelConfig {
        filters: vec![4, 8, 8, 8],
        latent_scales: 2,
        res_blocks: 1,
        transformer_heads: 2,
        attention_gates: attention,
        transformer_levels: if attention { TransformerLevels::Levels(vec![1]) } else { TransformerLevels::None },
        ..ModelConfig::hpunet(16, false)
    }
}

fn randn(shape: [usize; 4], d: &Device) -> Tensor<4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), d)
}

#[test]
fn the_reference_configuration_and_shapes() {
    let _guard = common::rng_lock();
    let reference = ModelConfig::hpunet(128, false);
    assert_eq!(reference.filters, vec![24, 48, 96, 192, 192, 192, 192, 192]);
    assert_eq!((reference.latent_scales, reference.latent_channels, reference.norm), (4, 1, NormKind::None));
    reference.validate().unwrap();
    // Depth: as many levels as the input halves into, the coarsest at least 1 px.
    assert_eq!(ModelConfig::hpunet_depth(128, 128, 128), 8);
    assert_eq!(ModelConfig::hpunet_depth(128, 128, 64), 7);
    assert_eq!(ModelConfig::hpunet_depth(24, 24, 24), 4);
    assert_eq!(ModelConfig::hpunet_depth(40, 28, 28), 3);
    assert_eq!(ModelConfig::hpunet(24, false).filters, vec![24, 48, 96, 192]);
    let bad = ModelConfig { latent_scales: 8, ..reference.clone() };
    assert!(format!("{:#}", bad.validate().unwrap_err()).contains("latent_scales"));

    let d = Device::flex();
    d.seed(1);
    for attention in [false, true] {
        let model = Segmenter::new(&tiny_hpu(attention), &d);
        let (b, n, s) = (2, 3, 16);
        // 1 channel at 2x2 and at 4x4.
        assert_eq!(model.latent_size(s, s), 4 + 16);
        let x = randn([b, 1, s, s], &d);
        let y = x.clone().greater_elem(0.5).float();
        let out = model.forward_train(x.clone(), y.clone(), Tensor::zeros([b, 20], &d));
        assert_eq!(out.logits.dims(), [b, 1, s, s]);
        let kl = to_host(out.kl).unwrap();
        assert!(kl.len() == b && kl.iter().all(|v| v.is_finite() && *v >= -1e-4), "{kl:?}");
        let enc = model.encode(x.clone());
        assert_eq!(model.sample_from(&enc, randn([b * n, 20, 1, 1], &d).reshape([b * n, 20]), &[]).dims(), [b * n, 1, s, s]);
        assert_eq!(model.predict_prior_mean(&enc).dims(), [b, 1, s, s]);
        assert_eq!(model.reconstruct(x, y).dims(), [b, 1, s, s]);
    }
    // Three input channels (stacked windows): the prior takes them, the posterior them and the mask.
    let model = Segmenter::new(&ModelConfig { in_channels: 3, ..tiny_hpu(true) }, &d);
    let x = randn([2, 3, 16, 16], &d);
    let y = x.clone().narrow(1, 0, 1).greater_elem(0.5).float();
    assert_eq!(model.forward_train(x.clone(), y, Tensor::zeros([2, 20], &d)).logits.dims(), [2, 1, 16, 16]);
    assert_eq!(model.sample_from(&model.encode(x), Tensor::zeros([6, 20], &d), &[]).dims(), [6, 1, 16, 16]);
}

#[test]
fn nearest_upsampling_and_the_per_pixel_kl_match_plain_formulas() {
    let d = Device::flex();
    let x = Tensor::<4>::from_data(TensorData::new((0..12).map(|v| v as f32).collect::<Vec<_>>(), [1, 2, 2, 3]), &d);
    let up = to_host(nearest2x(x)).unwrap();
    for c in 0..2 {
        for y in 0..4 {
            for xx in 0..6 {
                assert_eq!(up[(c * 4 + y) * 6 + xx], (c * 6 + (y / 2) * 3 + xx / 2) as f32);
            }
        }
    }
    let vals = |seed: u64| {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..2 * 3 * 4).map(|_| rand::Rng::gen_range(&mut rng, -1.0f32..1.0)).collect::<Vec<f32>>()
    };
    let t = |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [2, 3, 2, 2]), &d);
    let (mq, sq, mp, sp) = (vals(1), vals(2), vals(3), vals(4));
    let q = PixelGaussian { mu: t(&mq), log_sigma: t(&sq) };
    let p = PixelGaussian { mu: t(&mp), log_sigma: t(&sp) };
    let got = to_host(q.kl(&p)).unwrap();
    for b in 0..2 {
        let mut want = 0f64;
        for i in b * 12..(b + 1) * 12 {
            let (vq, vp) = ((2.0 * sq[i] as f64).exp(), (2.0 * sp[i] as f64).exp());
            want += sp[i] as f64 - sq[i] as f64 + (vq + (mq[i] as f64 - mp[i] as f64).powi(2)) / (2.0 * vp) - 0.5;
        }
        assert!((got[b] as f64 - want).abs() < 1e-4 * want.abs().max(1.0), "image {b}: {} vs {want}", got[b]);
    }
    assert!(to_host(q.kl(&q)).unwrap().iter().all(|v| v.abs() < 1e-5));
}

#[test]
fn latents_drive_the_masks_and_mean_scales_fix_them() {
    let _guard = common::rng_lock();
    let d = Device::flex();
    d.seed(2);
    let model = Segmenter::new(&tiny_hpu(false), &d);
    let x = randn([1, 1, 16, 16], &d);
    let enc = model.encode(x);
    let eps = Tensor::<2>::random([2, 20], Distribution::Normal(0.0, 3.0), &d);
    let gap = |a: Tensor<4>| {
        let v = to_host(a).unwrap();
        let half = v.len() / 2;
        (0..half).map(|i| (v[i] - v[half + i]).abs()).fold(0f32, f32::max)
    };
    assert!(gap(model.sample_from(&enc, eps.clone(), &[])) > 1e-4, "two latent draws give the same logits");
    assert!(gap(model.sample_from(&enc, eps.clone(), &[true, true])) < 1e-6, "means at every scale must ignore eps");
    // Sampling only the fine scale still varies the mask; the mean at both is the prior mean.
    assert!(gap(model.sample_from(&enc, eps.clone(), &[true, false])) > 1e-4);
    let mean = to_host(model.predict_prior_mean(&enc)).unwrap();
    let fixed = to_host(model.sample_from(&enc, eps.narrow(0, 0, 1), &[true, true])).unwrap();
    assert!(mean.iter().zip(&fixed).all(|(a, b)| (a - b).abs() < 1e-5));
}

#[test]
fn geco_raises_lambda_while_the_constraint_is_violated_and_topk_keeps_k_pixels() {
    let mut g = GecoState::default();
    assert!((g.lambda() - 1.0).abs() < 1e-9);
    let d = Device::flex();
    let obj = Objective { kind: LossKind::Geco, topk: Some(0.1), beta: 1.0, kappa: 0.05, rate: 1e-2 };
    let logits = Tensor::<4>::from_data(TensorData::new((0..200).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>(), [2, 1, 10, 10]), &d);
    let target = Tensor::<4>::zeros([2, 1, 10, 10], &d);
    let out = apunet::model::TrainOut { logits: logits.clone(), kl: Tensor::from_data([0.5f32, 1.5], &d) };
    let mut rng = StdRng::seed_from_u64(0);
    let loss = obj.loss(&out, target.clone(), &g, &mut rng).unwrap();
    // 10% of 200 pixels: 20 kept, each at most the largest per-pixel loss (softplus(3)).
    let rec = loss.settled.values[1] as f64;
    let max_xe = (1.0 + 3f64.exp()).ln();
    assert!(rec > 0.0 && rec <= 10.0 * max_xe + 1e-4, "top-k reconstruction {rec}");
    assert!((loss.settled.values[2] - 1.0).abs() < 1e-6);
    let before = g.lambda();
    for _ in 0..5 {
        let l = obj.loss(&out, target.clone(), &g, &mut rng).unwrap();
        obj.commit(&l.settled, &mut g);
    }
    assert!(g.ema.is_some());
    assert!(g.lambda() > before, "reconstruction above kappa per pixel: lambda must rise");
    // A met constraint (everything predicted right) lowers it.
    let good = apunet::model::TrainOut { logits: logits.zeros_like() - 20.0, kl: out.kl.clone() };
    let mut met = GecoState::default();
    for _ in 0..5 {
        let l = obj.loss(&good, target.clone(), &met, &mut rng).unwrap();
        obj.commit(&l.settled, &mut met);
    }
    assert!(met.lambda() < 1.0);
    // The ELBO with top-k 1.0 is the plain sum over pixels per image.
    let elbo = Objective { kind: LossKind::Elbo, topk: Some(1.0), ..obj };
    let full = elbo.loss(&out, target, &GecoState::default(), &mut rng).unwrap();
    let xe = to_host(apunet::train::objective::bce_with_logits(logits, Tensor::zeros([2, 1, 10, 10], &d))).unwrap();
    let want = xe.iter().map(|&v| v as f64).sum::<f64>() / 2.0;
    assert!((full.settled.values[1] as f64 - want).abs() < 1e-3, "{} vs {want}", full.settled.values[1]);
}

#[test]
fn a_probabilistic_unet_checkpoint_from_before_the_hpunet_still_loads() {
    let _guard = common::rng_lock();
    let d = Device::flex();
    d.seed(4);
    let cfg = common::tiny_config();
    let plain = ProbUNet::new(&cfg, &d);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.bpk");
    save_model(&plain, &path).unwrap();
    let loaded = load_segmenter(Segmenter::new(&cfg, &d), &path).unwrap();
    let x = randn([1, 1, 16, 16], &d);
    let a = to_host(plain.predict_prior_mean(x.clone())).unwrap();
    let b = to_host(loaded.predict_prior_mean(&loaded.encode(x))).unwrap();
    assert_eq!(a, b);
}

#[test]
fn hpunet_trains_with_geco_resumes_and_serves_every_command() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.npz");
    generate(&SynthConfig { count: 12, size: 16, annotators: 4, seed: 5, per_series: 2, ..Default::default() })
        .unwrap()
        .save(&data)
        .unwrap();
    let run = dir.path().join("run");
    let config = |epochs| RunConfig {
        model: tiny_hpu(true),
        train: TrainConfig {
            epochs,
            batch_size: 4,
            lr: 2e-3,
            val_fraction: 0.25,
            val_samples: 3,
            figure_images: 2,
            figure_samples: 2,
            loss: LossKind::Geco,
            topk: Some(0.02),
            ..Default::default()
        },
        ..Default::default()
    };
    let req = |epochs, resume| TrainRequest {
        data: data.clone(),
        out: run.clone(),
        config: config(epochs),
        device: Device::flex(),
        resume,
        quiet: true,
    };
    train::train(req(1, false)).unwrap();
    let state = train::checkpoint::load_state(&run.join("checkpoints/state.json")).unwrap();
    assert!(state.geco.ema.is_some() && state.geco.steps > 0, "GECO's state is saved with the run");
    let resumed = train::train(req(2, true)).unwrap();
    assert_eq!(resumed.history.len(), 2);
    let later = train::checkpoint::load_state(&run.join("checkpoints/state.json")).unwrap();
    assert!(later.geco.steps > state.geco.steps, "resume continues GECO");
    let csv = read_metrics(&run.join("metrics.csv")).unwrap();
    assert!(csv.iter().all(|m| m.loss.is_finite() && m.val_ged.is_finite() && m.beta > 0.0));
    assert_eq!(RunConfig::load(&run.join("config.toml")).unwrap().model.kind, ModelKind::Hpunet);

    // sample, with all scales and with the coarse scale at its mean.
    let sampling = |scales: Option<Vec<usize>>| SamplingArgs { n: 4, batch_size: 4, scales, ..SamplingArgs::for_run(&run) };
    let out = dir.path().join("s.npz");
    sample_to(&sampling(None), &data, &out, 2).unwrap();
    match &npz::read_npz(&out).unwrap()["samples"] {
        NpyArray::U8(a) => assert_eq!(a.shape(), &[12, 4, 16, 16]),
        other => panic!("samples has kind {}", other.kind()),
    }
    sample_to(&sampling(Some(vec![1])), &data, &dir.path().join("fine.npz"), 2).unwrap();
    let e = sample_to(&sampling(Some(vec![2])), &data, &dir.path().join("x.npz"), 2).unwrap_err();
    // "0..2" read as a range that holds 2: the message names the last scale that exists.
    assert!(format!("{e:#}").contains("scale 2 does not exist: this model has 2 latent scale(s), numbered 0 (the coarsest) to 1"), "{e:#}");

    // eval and predict on an image larger than the crops.
    let ev = dir.path().join("eval");
    evaluate_run(&EvalRequest {
        sampling: sampling(None),
        data: data.clone(),
        out: ev.clone(),
        images: None,
        overlay: false,
        review: true,
        open: false,
    })
    .unwrap();
    assert!(ev.join("metrics.json").exists());
    let big = dir.path().join("big.png");
    let img = image::GrayImage::from_fn(40, 28, |x, y| image::Luma([((x * 5 + y * 3) % 256) as u8]));
    img.save(&big).unwrap();
    let pred = dir.path().join("pred");
    predict_files(&PredictRequest::new(sampling(None), big, pred.clone()), |_| {}).unwrap();
    assert!(std::fs::read_dir(&pred).unwrap().count() > 0);
}

#[test]
fn the_command_line_fits_the_reference_to_the_crops_and_keeps_attention_to_the_hpunet() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.npz");
    generate(&SynthConfig { count: 8, size: 16, seed: 2, ..Default::default() }).unwrap().save(&data).unwrap();
    let train = |out: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_apunet"))
            .args(["train", "--data", data.to_str().unwrap(), "--out", dir.path().join(out).to_str().unwrap()])
            .args(["--epochs", "1", "--batch-size", "4", "--val-fraction", "0", "--quiet"])
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = train(
        "hpu",
        &[
            "--model",
            "hpunet",
            "--loss",
            "geco",
            "--geco-kappa",
            "0.1",
            "--geco-rate",
            "5e-4",
            "--output-prior",
            "0.5",
            "--init",
            "orthogonal",
        ],
    );
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let cfg = RunConfig::load(&dir.path().join("hpu/config.toml")).unwrap();
    assert_eq!((cfg.train.geco_kappa, cfg.train.geco_rate, cfg.model.output_prior), (0.1, 5e-4, 0.5));
    assert_eq!(cfg.model.init, WeightInit::Orthogonal);
    // 16-px crops halve 4 times: 5 of the reference's 8 levels, latents at the 4 coarsest.
    assert_eq!(cfg.model.filters, vec![24, 48, 96, 192, 192]);
    assert_eq!((cfg.model.kind, cfg.model.latent_scales), (ModelKind::Hpunet, 4));
    assert_eq!((cfg.train.loss, cfg.train.topk), (LossKind::Geco, Some(0.02)));
    let refused = train("pu", &["--attention"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--model hpunet"));
}
