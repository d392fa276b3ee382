use crate::common;
use std::path::Path;

use apunet::gan::networks::{Discriminator, Generator, l1, lsgan};
use apunet::model::to_host;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;

#[test]
fn generator_and_patchgan_shapes() {
    let _guard = common::rng_lock();
    let d = Device::flex();
    let g = Generator::new(1, 2, 4, 2, &d);
    let disc = Discriminator::new(2, 4, &d);
    for (size, patches) in [(128, 14), (256, 30), (36, 2)] {
        Generator::check_size(size, size).unwrap();
        let x = Tensor::<4>::random([1, 1, size, size], Distribution::Uniform(-1.0, 1.0), &d);
        let y = g.forward(x);
        assert_eq!(y.dims(), [1, 2, size, size]);
        assert!(to_host(y.clone()).unwrap().iter().all(|v| (-1.0..=1.0).contains(v)));
        // 70x70 PatchGAN: 30x30 scores on a 256x256 image, as in the paper's code.
        assert_eq!(disc.forward(y).dims(), [1, 1, patches, patches]);
    }
    // A size the two stride-2 steps cannot round-trip is refused up front.
    let e = Generator::check_size(130, 128).unwrap_err();
    assert!(format!("{e}").contains("130x128"), "{e}");
}

#[test]
fn losses_of_identical_pairs_and_targets_are_zero() {
    let _guard = common::rng_lock();
    let d = Device::flex();
    let x = Tensor::<4>::random([2, 1, 8, 8], Distribution::Uniform(-1.0, 1.0), &d);
    assert_eq!(to_host(l1(x.clone(), x.clone())).unwrap()[0], 0.0);
    assert!(to_host(l1(x.clone(), x.clone() + 0.5)).unwrap()[0] > 0.49);
    assert_eq!(to_host(lsgan(Tensor::ones([1, 1, 3, 3], &d), 1.0)).unwrap()[0], 0.0);
    assert_eq!(to_host(lsgan(Tensor::zeros([1, 1, 3, 3], &d), 1.0)).unwrap()[0], 1.0);
}

#[test]
fn tiny_cyclegan_lowers_its_cycle_loss() {
    let _guard = common::rng_lock();
    let d = Device::flex().autodiff();
    d.seed(3);
    let mut gab = Generator::new(1, 1, 4, 1, &d);
    let mut gba = Generator::new(1, 1, 4, 1, &d);
    let (mut oab, mut oba) = (AdamConfig::new().init(), AdamConfig::new().init());
    let a = Tensor::<4>::random([2, 1, 16, 16], Distribution::Uniform(-0.8, 0.8), &d);
    let mut losses = Vec::new();
    for _ in 0..40 {
        let loss = l1(gba.forward(gab.forward(a.clone())), a.clone());
        losses.push(to_host(loss.clone()).unwrap()[0]);
        let mut grads = loss.backward();
        let (ga, gb) = (GradientsParams::from_module(&mut grads, &gab), GradientsParams::from_module(&mut grads, &gba));
        gab = oab.step(2e-3, gab, ga);
        gba = oba.step(2e-3, gba, gb);
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(last < 0.7 * first, "cycle loss {first} -> {last}");
}

#[test]
fn gan_train_resume_and_generate() {
    use apunet::data::synth::{SynthConfig, generate as synth};
    use apunet::gan::networks::GanConfig;
    use apunet::gan::train::{Domain, GanMode, GanRequest, GanTrainConfig, deform_masks, generate, train_gan};
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let ds = synth(&SynthConfig { count: 3, size: 32, empty_fraction: 0.0, seed: 4, ..Default::default() }).unwrap();
    let cfg = |epochs| GanTrainConfig {
        mode: GanMode::Mask2ct,
        epochs,
        decay_epochs: 1,
        net: GanConfig { base: 4, residual_blocks: 1, ..Default::default() },
        ..Default::default()
    };
    let out = dir.path().join("gan");
    let req = |epochs, resume| GanRequest {
        a: Domain::from_mean_masks(&ds),
        b: Domain::from_images(&ds, Path::new("synth")).unwrap(),
        out: out.clone(),
        config: cfg(epochs),
        device: Device::flex(),
        resume,
        quiet: true,
        sources: Vec::new(),
    };
    let s1 = train_gan(req(1, false)).unwrap().state;
    assert_eq!(s1.epoch, 1);
    assert!(out.join("checkpoints/g_ab.bpk").exists() && out.join("figures/epoch_001.png").exists());
    let s2 = train_gan(req(2, true)).unwrap().state;
    assert_eq!((s2.epoch, s2.cycle.len()), (2, 2));
    assert_eq!(s2.cycle[0], s1.cycle[0]);
    // The schedule: constant, then linear decay.
    let c = GanTrainConfig { epochs: 10, decay_epochs: 4, ..Default::default() };
    assert_eq!(c.lr_at(6), 2e-4);
    assert!(c.lr_at(7) < 2e-4 && c.lr_at(10) > 0.0 && c.lr_at(10) < c.lr_at(9));

    let name = std::path::Path::new("ds.npz");
    let (g, twins) = generate(&out, (name, &ds), 5, 1, false, &Device::flex()).unwrap();
    assert!(twins.is_none(), "a mask2ct GAN makes no copy-paste twins");
    assert_eq!((g.len(), g.annotators(), g.height()), (5, 4, 32));
    assert!(g.synthetic.iter().all(|&s| s));
    assert!(g.images.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(generate(&out, (name, &ds), 0, 1, false, &Device::flex()).is_err());
    // The side-by-side figure: 4 rows (real CT, real masks, generated CT, generated masks) of 5
    // columns at 3x zoom for 32-pixel crops.
    let fig = apunet::gan::train::side_by_side(&ds, &g, 8).unwrap();
    assert!(fig.width() >= 5 * 96 && fig.width() < 6 * 96 + 96, "{}", fig.width());
    assert!(fig.height() >= 4 * 96 && fig.height() < 5 * 96 + 48, "{}", fig.height());
    let other = synth(&SynthConfig { count: 2, size: 16, ..Default::default() }).unwrap();
    assert!(apunet::gan::train::side_by_side(&ds, &other, 2).is_err());

    // Deformation moves masks but keeps them binary and applies one transform to all annotators.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let a: Vec<u8> = (0..256).map(|p| ((p / 16) > 4 && (p / 16) < 10 && (p % 16) > 5 && (p % 16) < 11) as u8).collect();
    let d = deform_masks(&[a.clone(), a.clone()], 16, 16, &mut rng);
    assert_eq!(d[0], d[1]);
    assert!(d[0].iter().all(|&v| v <= 1));

    // Domains that cannot train are refused with a message.
    let mut bad = req(1, false);
    bad.b.images.clear();
    assert!(format!("{:#}", train_gan(bad).unwrap_err()).contains("both domains need images"));
    let mut rgb = req(1, false);
    rgb.config.net.channels_b = 3;
    assert!(format!("{:#}", train_gan(rgb).unwrap_err()).contains("single-channel CT and masks; got channels 1 and 3"));
    for (size, text) in [(18, "18x18"), (16, "at least 24x24")] {
        let small = synth(&SynthConfig { count: 2, size, ..Default::default() }).unwrap();
        let (mut r, d) = (req(1, false), Domain::from_images(&small, Path::new("synth")).unwrap());
        r.a = d.clone();
        r.b = d;
        let e = format!("{:#}", train_gan(r).unwrap_err());
        assert!(e.contains(text), "{e}");
    }
}

#[test]
fn gan_bench_reports_iterations_per_size_and_rejects_bad_sizes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apunet"))
        .args(["gan", "bench", "--sizes", "32,48", "--base", "4", "--blocks", "1", "--steps", "1", "--warmup", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, size) in rows.iter().zip([32, 48]) {
        assert_eq!(row["size"], size);
        assert!(row["iterations_per_s"].as_f64().unwrap() > 0.0);
    }
    // Same parameter count at every size: the networks are fully convolutional.
    assert_eq!(rows[0]["params"], rows[1]["params"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apunet"))
        .args(["gan", "bench", "--sizes", "30", "--base", "4", "--blocks", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiples of 4"));
}
