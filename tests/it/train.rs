use crate::common;

use apunet::data::npz::{self, NpyArray};
use apunet::data::synth::{SynthConfig, generate};
use apunet::jobs::sample::{RunSampling as SamplingArgs, sample_to_file as sample_to};
use apunet::train::{self, RunConfig, TrainConfig, TrainRequest, read_metrics};
use burn::prelude::*;

/// A fresh (not resumed), quiet CPU run of `config` on `data` into `out`.
fn fresh(data: std::path::PathBuf, out: std::path::PathBuf, config: RunConfig) -> anyhow::Result<train::TrainSummary> {
    train::train(TrainRequest { data, out, config, device: Device::flex(), resume: false, quiet: true })
}

fn tiny_run(epochs: usize) -> RunConfig {
    RunConfig {
        model: common::tiny_config(),
        train: TrainConfig {
            epochs,
            batch_size: 4,
            lr: 2e-3,
            val_fraction: 0.25,
            val_samples: 4,
            figure_images: 3,
            figure_samples: 2,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn train_resume_and_sample_end_to_end() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.npz");
    generate(&SynthConfig { count: 16, size: 16, annotators: 4, seed: 3, per_series: 2, ..Default::default() })
        .unwrap()
        .save(&data)
        .unwrap();
    let run = dir.path().join("run");
    let req = |epochs: usize, resume: bool| TrainRequest {
        data: data.clone(),
        out: run.clone(),
        config: tiny_run(epochs),
        device: Device::flex(),
        resume,
        quiet: true,
    };
    let first = train::train(req(1, false)).unwrap();
    assert_eq!(first.history.len(), 1);
    assert!(run.join("config.toml").exists());
    assert!(run.join("checkpoints/last.bpk").exists());
    assert!(run.join("checkpoints/best.bpk").exists());
    assert!(run.join("checkpoints/optimizer.bpk").exists());
    assert!(run.join("figures/epoch_001.png").exists());
    let fig = image::open(run.join("figures/epoch_001.png")).unwrap();
    assert!(fig.width() > 3 * 16 && fig.height() > 7 * 16, "figure has 3 columns and 1+4+2 rows");

    // "Interrupted" after epoch 1: resume continues at epoch 2 and keeps epoch 1's line.
    let second = train::train(req(3, true)).unwrap();
    let epochs: Vec<usize> = second.history.iter().map(|m| m.epoch).collect();
    assert_eq!(epochs, vec![1, 2, 3]);
    assert!((second.history[0].loss - first.history[0].loss).abs() < 1e-4);
    assert!((second.history[0].val_ged - first.history[0].val_ged).abs() < 1e-4);
    let csv = read_metrics(&run.join("metrics.csv")).unwrap();
    assert_eq!(csv.len(), 3);
    assert!(csv.iter().all(|m| m.loss.is_finite() && m.val_ged.is_finite() && m.val_ged >= 0.0));

    let out = dir.path().join("samples.npz");
    let sampling = |run: &std::path::Path, n: usize, batch: usize| SamplingArgs { n, batch_size: batch, ..SamplingArgs::for_run(run) };
    sample_to(&sampling(&run, 5, 4), &data, &out, 4).unwrap();
    let arrays = npz::read_npz(&out).unwrap();
    match &arrays["samples"] {
        NpyArray::U8(a) => {
            assert_eq!(a.shape(), &[16, 5, 16, 16]);
            assert!(a.iter().all(|&v| v <= 1));
        }
        other => panic!("samples has kind {}", other.kind()),
    }
    match &arrays["mean"] {
        NpyArray::F32(a) => {
            assert_eq!(a.shape(), &[16, 16, 16]);
            assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        other => panic!("mean has kind {}", other.kind()),
    }
    match &arrays["prior_mean"] {
        NpyArray::U8(a) => assert_eq!(a.shape(), &[16, 16, 16]),
        other => panic!("prior_mean has kind {}", other.kind()),
    }
    assert!(out.with_extension("png").exists());
    // Sampling is reproducible.
    let out2 = dir.path().join("again.npz");
    sample_to(&sampling(&run, 5, 2), &data, &out2, 4).unwrap();
    match (&arrays["samples"], &npz::read_npz(&out2).unwrap()["samples"]) {
        (NpyArray::U8(a), NpyArray::U8(b)) => assert_eq!(a, b, "batch size must not change samples"),
        _ => unreachable!(),
    }
    // A size the model cannot take, and a missing run, are errors with a message.
    let odd = dir.path().join("odd.npz");
    generate(&SynthConfig { count: 2, size: 17, ..Default::default() }).unwrap().save(&odd).unwrap();
    let e = sample_to(&sampling(&run, 2, 2), &odd, &dir.path().join("x.npz"), 2).unwrap_err();
    assert!(format!("{e:#}").contains("not divisible"), "{e:#}");
    let e = sample_to(&sampling(&dir.path().join("nope"), 2, 2), &data, &dir.path().join("x.npz"), 2).unwrap_err();
    assert!(format!("{e:#}").contains("not an apunet run directory"), "{e:#}");
}

#[test]
fn diverging_run_stops_with_a_clear_message() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.npz");
    generate(&SynthConfig { count: 12, size: 16, seed: 1, ..Default::default() }).unwrap().save(&data).unwrap();
    let mut cfg = tiny_run(50);
    cfg.train.lr = 1e37;
    cfg.train.max_bad_steps = 2;
    cfg.train.val_fraction = 0.0;
    let err = fresh(data, dir.path().join("run"), cfg).unwrap_err();
    assert!(format!("{err:#}").contains("non-finite losses in a row"), "{err:#}");
}

#[test]
fn unknown_device_and_missing_data_are_errors() {
    let _guard = common::rng_lock();
    assert!(apunet::device::parse_device("tpu").is_err());
    let dir = tempfile::tempdir().unwrap();
    let err = fresh(dir.path().join("missing.npz"), dir.path().join("run"), tiny_run(1)).unwrap_err();
    assert!(format!("{err:#}").contains("missing.npz"), "{err:#}");
}

#[test]
fn extra_synthetic_examples_fill_batches_and_must_match() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("real.npz");
    generate(&SynthConfig { count: 12, size: 16, seed: 5, per_series: 2, ..Default::default() }).unwrap().save(&data).unwrap();
    let extra = dir.path().join("extra.npz");
    generate(&SynthConfig { count: 6, size: 16, seed: 6, ..Default::default() }).unwrap().save(&extra).unwrap();
    let run = |extra: &std::path::Path, ratio: f64, out: &str| {
        let mut cfg = tiny_run(1);
        cfg.train.extra = Some(extra.display().to_string());
        cfg.train.extra_ratio = ratio;
        fresh(data.clone(), dir.path().join(out), cfg)
    };
    let s = run(&extra, 0.5, "mixed").unwrap();
    assert!(s.history[0].loss.is_finite() && s.history[0].val_ged.is_finite());
    let saved = RunConfig::load(&dir.path().join("mixed/config.toml")).unwrap();
    assert_eq!(saved.train.extra.as_deref(), Some(extra.display().to_string().as_str()));

    let wrong = dir.path().join("wrong.npz");
    generate(&SynthConfig { count: 4, size: 32, ..Default::default() }).unwrap().save(&wrong).unwrap();
    let e = run(&wrong, 0.5, "wrong").unwrap_err();
    assert!(format!("{e:#}").contains("wrong.npz") && format!("{e:#}").contains("32x32"), "{e:#}");
    let e = run(&extra, 1.0, "all").unwrap_err();
    assert!(format!("{e:#}").contains("extra_ratio"), "{e:#}");
}

#[test]
fn patch_training_validates_on_whole_crops_and_checks_the_patch_size() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.npz");
    generate(&SynthConfig { count: 12, size: 32, seed: 8, per_series: 2, ..Default::default() }).unwrap().save(&data).unwrap();
    let run = |patch: usize, out: &str| {
        let mut cfg = tiny_run(3);
        cfg.train.patch = Some(patch);
        cfg.train.figure_every = 2;
        fresh(data.clone(), dir.path().join(out), cfg)
    };
    let s = run(16, "patched").unwrap();
    assert_eq!(s.history.len(), 3);
    assert!(s.history.iter().all(|m| m.loss.is_finite() && m.val_ged.is_finite()));
    // Figures only every 2nd epoch and after the last; the run still records the whole-crop size.
    let figs = dir.path().join("patched/figures");
    assert!(!figs.join("epoch_001.png").exists());
    assert!(figs.join("epoch_002.png").exists() && figs.join("epoch_003.png").exists());
    let saved = RunConfig::load(&dir.path().join("patched/config.toml")).unwrap();
    assert_eq!(saved.train.patch, Some(16));
    assert_eq!((saved.data.height, saved.data.width), (32, 32));

    let e = run(64, "big").unwrap_err();
    assert!(format!("{e:#}").contains("--patch 64 is larger than the 32x32"), "{e:#}");
    let e = run(15, "odd").unwrap_err();
    assert!(format!("{e:#}").contains("--patch") && format!("{e:#}").contains("not divisible"), "{e:#}");
}

fn synth_data(dir: &std::path::Path) -> std::path::PathBuf {
    let data = dir.join("d.npz");
    generate(&SynthConfig { count: 16, size: 16, annotators: 4, seed: 3, per_series: 2, ..Default::default() })
        .unwrap()
        .save(&data)
        .unwrap();
    data
}

fn resume(data: &std::path::Path, out: &std::path::Path, config: RunConfig) -> anyhow::Result<train::TrainSummary> {
    train::train(TrainRequest { data: data.into(), out: out.into(), config, device: Device::flex(), resume: true, quiet: true })
}

/// Every float parameter of a run's last checkpoint, in module order.
fn weights(run: &std::path::Path) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl burn::module::ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.0.extend(apunet::model::to_host(param.val()).unwrap());
        }
    }
    let (_, m) = train::load_run(run, train::Which::Last, &Device::flex()).unwrap();
    let mut c = Collect(Vec::new());
    m.visit(&mut c);
    c.0
}

fn assert_same(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: parameter counts");
    let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(differ == 0, "{what}: {differ} of {} parameters differ, by up to {worst}", a.len());
}

#[test]
fn a_run_stopped_after_epoch_1_and_resumed_ends_with_the_same_weights_and_optimizer_state() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = synth_data(dir.path());
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    fresh(data.clone(), whole.clone(), tiny_run(2)).unwrap();
    fresh(data.clone(), parts.clone(), tiny_run(1)).unwrap();
    let resumed = resume(&data, &parts, tiny_run(2)).unwrap();
    assert_eq!((resumed.epochs_run, resumed.target_epochs), (1, 2));
    let w = weights(&whole);
    assert!(w.len() > 1000);
    assert_same(&w, &weights(&parts), "weights after epoch 2");
    // The optimizer state (Adam's moments and step count) as it acts: one more epoch on each
    // must land on the same weights again.
    resume(&data, &whole, tiny_run(3)).unwrap();
    resume(&data, &parts, tiny_run(3)).unwrap();
    assert_same(&weights(&whole), &weights(&parts), "weights after epoch 3");
    let loss = |run: &std::path::Path| read_metrics(&run.join("metrics.csv")).unwrap().iter().map(|m| m.loss).collect::<Vec<_>>();
    assert_eq!(loss(&whole), loss(&parts));
}

#[test]
fn resume_applies_what_can_change_and_names_what_cannot() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = synth_data(dir.path());
    let run = dir.path().join("run");
    fresh(data.clone(), run.clone(), tiny_run(1)).unwrap();

    let mut cfg = tiny_run(2);
    cfg.train.lr = 5e-4;
    let s = resume(&data, &run, cfg).unwrap();
    assert_eq!(s.epochs_run, 1);
    assert_eq!(RunConfig::load(&run.join("config.toml")).unwrap().train.lr, 5e-4, "the new lr is the run's now");

    let mut cfg = tiny_run(3);
    cfg.train.lr = 5e-4;
    cfg.train.batch_size = 2;
    cfg.model.filters = vec![4, 8];
    let e = format!("{:#}", resume(&data, &run, cfg).unwrap_err());
    assert!(e.contains("train.batch_size 4 -> 2") && e.contains("model.filters [8, 16] -> [4, 8]"), "{e}");
    let named = e.split(". Only").next().unwrap();
    assert!(!named.contains("train.lr") && !named.contains("train.epochs"), "lr and epochs may change: {e}");

    // Nothing left to train is said, not hidden behind "trained 1 epochs".
    let mut cfg = tiny_run(2);
    cfg.train.lr = 5e-4;
    let s = resume(&data, &run, cfg.clone()).unwrap();
    assert_eq!((s.epochs_run, s.history.len()), (0, 2));
    cfg.train.epochs = 1;
    let e = format!("{:#}", resume(&data, &run, cfg).unwrap_err());
    assert!(e.contains("--epochs 1 is below the 2 epochs"), "{e}");

    // Through the command line: --lr applies, --batch-size is refused by name.
    let cli = |args: &[&str]| {
        let mut all = vec!["apunet", "train", "--resume", run.to_str().unwrap(), "--quiet"];
        all.extend_from_slice(args);
        apunet::cli::run(apunet::cli::parse_from(all).unwrap())
    };
    cli(&["--epochs", "3", "--lr", "0.0007"]).unwrap();
    let saved = RunConfig::load(&run.join("config.toml")).unwrap();
    assert_eq!((saved.train.epochs, saved.train.lr), (3, 0.0007));
    let e = format!("{:#}", cli(&["--epochs", "4", "--batch-size", "2", "--no-attention"]).unwrap_err());
    assert!(e.contains("train.batch_size") && e.contains("model.attention_gates"), "{e}");
    assert_eq!(read_metrics(&run.join("metrics.csv")).unwrap().len(), 3, "a refused resume trains nothing");
}
