//! The small-data recipe (issue 27): spatial and intensity augmentation keep image and masks
//! together, copy-paste carries every expert's mask with the lesion, and a run with the whole
//! recipe (schedule and weight average included) resumes after a kill exactly where it stopped.

use std::process::{Command, Stdio};
use std::time::Duration;

use apunet::data::augment::Augmentation;
use apunet::data::batch::{PatchSampling, training_patches};
use apunet::data::{AnnotatorChoice, Dataset};
use apunet::model::to_host;
use apunet::train::read_metrics;
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use ndarray::{Array3, Array4};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// `n` 48x48 crops at 0.2 with a disc of 0.9 where the given experts (of 4) marked it.
fn discs(n: usize, lesion: impl Fn(usize) -> Option<(f32, f32, f32)>, experts: &[usize]) -> Dataset {
    let (h, w) = (48, 48);
    let mut images = Array3::<f32>::from_elem((n, h, w), 0.2);
    let mut masks = Array4::<u8>::zeros((n, 4, h, w));
    for i in 0..n {
        let Some((cy, cx, r)) = lesion(i) else { continue };
        for y in 0..h {
            for x in 0..w {
                if (y as f32 - cy).hypot(x as f32 - cx) <= r {
                    images[[i, y, x]] = 0.9;
                    for &k in experts {
                        masks[[i, k, y, x]] = 1;
                    }
                }
            }
        }
    }
    Dataset::gray(images, masks, None, "test").unwrap()
}

#[test]
fn spatial_augmentation_moves_image_and_every_mask_together() {
    let ds = discs(8, |i| Some((14.0 + 2.0 * i as f32, 20.0 + i as f32, 5.0 + (i % 3) as f32)), &[0, 1, 2, 3]);
    let aug = Augmentation { symmetry: true, spatial: true, ..Default::default() };
    let d = Device::flex();
    let mut rng = StdRng::seed_from_u64(5);
    let idx: Vec<usize> = (0..8).collect();
    let p = 32;
    let (mut moved, mut pixels, mut disagree) = (0, 0, 0);
    for _ in 0..20 {
        let b = training_patches(&ds, &idx, AnnotatorChoice::Random, &aug, Some(PatchSampling { size: p, foreground: 1.0 }), &mut rng, &d)
            .unwrap();
        let (im, m) = (to_host(b.images).unwrap(), to_host(b.masks).unwrap());
        for (v, l) in im.iter().zip(&m) {
            // Image and mask were sampled at the same points: bright where marked.
            pixels += 1;
            disagree += usize::from((*v >= 0.55) != (*l >= 0.5));
            assert!(*l == 0.0 || *l == 1.0);
        }
        // A pixel strictly between background and disc is only made by interpolation, which
        // only a rotation, scaling or deformation does.
        moved += im.chunks(p * p).filter(|c| c.iter().any(|v| (*v - 0.2).abs() > 1e-3 && (*v - 0.9).abs() > 1e-3)).count();
    }
    assert!((disagree as f64) < 0.01 * pixels as f64, "{disagree} of {pixels} pixels disagree");
    // About half the examples are warped (1 - 0.8^3).
    assert!((40..120).contains(&moved), "{moved} of 160 patches warped");
}

#[test]
fn intensity_augmentation_changes_the_image_only() {
    let ds = discs(8, |_| Some((24.0, 24.0, 8.0)), &[0, 1, 2, 3]);
    let idx: Vec<usize> = (0..8).collect();
    let d = Device::flex();
    let plain =
        training_patches(&ds, &idx, AnnotatorChoice::Fixed(0), &Augmentation::default(), None, &mut StdRng::seed_from_u64(1), &d).unwrap();
    let aug = Augmentation { intensity: true, ..Default::default() };
    let (mut changed, mut masks_same) = (0, true);
    for s in 0..5 {
        let b = training_patches(&ds, &idx, AnnotatorChoice::Fixed(0), &aug, None, &mut StdRng::seed_from_u64(s), &d).unwrap();
        masks_same &= to_host(b.masks).unwrap() == to_host(plain.masks.clone()).unwrap();
        let (a, b) = (to_host(b.images).unwrap(), to_host(plain.images.clone()).unwrap());
        changed += a.chunks(48 * 48).zip(b.chunks(48 * 48)).filter(|(x, y)| x != y).count();
        assert!(a.iter().all(|v| v.is_finite()));
    }
    assert!(masks_same, "intensity augmentation touched a mask");
    assert!(changed >= 10, "only {changed} of 40 images changed");
}

#[test]
fn copy_paste_carries_the_lesion_with_each_experts_mask() {
    // Crop 0 holds the only lesion, marked by experts 0 and 1; crops 1-7 are empty background
    // like the donor's.
    let ds = discs(8, |i| (i == 0).then_some((24.0, 24.0, 5.0)), &[0, 1]);
    let aug = Augmentation { copy_paste: 1.0, donors: vec![0], ..Default::default() };
    let d = Device::flex();
    let idx: Vec<usize> = (1..8).collect();
    for (expert, marked) in [(0, true), (1, true), (2, false), (3, false)] {
        let mut rng = StdRng::seed_from_u64(expert as u64);
        let b = training_patches(&ds, &idx, AnnotatorChoice::Fixed(expert), &aug, None, &mut rng, &d).unwrap();
        let (im, m) = (to_host(b.images).unwrap(), to_host(b.masks).unwrap());
        for (j, (ic, mc)) in im.chunks(48 * 48).zip(m.chunks(48 * 48)).enumerate() {
            let bright = ic.iter().filter(|v| **v > 0.85).count();
            // Every recipient got the lesion (pasted at 0.75-1.25x: 41-127 px for a 5-px disc).
            assert!(bright >= 30, "crop {j}: no lesion pasted ({bright} bright pixels)");
            let area: f32 = mc.iter().sum();
            if marked {
                assert!(area >= 30.0, "expert {expert}, crop {j}: the pasted lesion lost its mask ({area} px)");
                let under: f32 = ic.iter().zip(mc).filter(|(_, l)| **l > 0.5).map(|(v, _)| *v).sum::<f32>() / area;
                assert!(under > 0.8, "expert {expert}, crop {j}: the mask is not on the lesion ({under})");
            } else {
                assert_eq!(area, 0.0, "expert {expert} never marked the lesion, yet has a mask in crop {j}");
            }
        }
    }
    // No donors (or p = 0): examples stay as they were.
    let none = Augmentation { copy_paste: 1.0, donors: vec![], ..Default::default() };
    let b = training_patches(&ds, &idx, AnnotatorChoice::Fixed(0), &none, None, &mut StdRng::seed_from_u64(0), &d).unwrap();
    assert!(to_host(b.images).unwrap().iter().all(|v| *v == 0.2));
}

fn apunet<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_apunet"));
    c.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

#[test]
fn the_whole_recipe_resumes_after_a_kill_as_if_never_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.npz");
    assert!(
        apunet(&["synth", "--out", data.to_str().unwrap(), "--count", "16", "--size", "32", "--seed", "2"]).status().unwrap().success()
    );
    let flags = |out: &std::path::Path| -> Vec<String> {
        [
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "6",
            "--filters",
            "4,8",
            "--batch-size",
            "4",
            "--transformer-levels",
            "none",
            "--latent-dim",
            "2",
            "--val-fraction",
            "0.25",
            "--patch",
            "16",
            "--spatial-augment",
            "--intensity-augment",
            "--copy-paste",
            "0.5",
            "--lr-schedule",
            "cosine",
            "--lr-warmup-epochs",
            "2",
            "--ema",
            "0.9",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    let out = apunet(&flags(&whole)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The same run killed once it has saved epoch 3, then resumed.
    let mut child = apunet(&flags(&cut)).spawn().unwrap();
    let state = cut.join("checkpoints/state.json");
    while child.try_wait().unwrap().is_none() {
        let epoch = std::fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["epoch"].as_u64());
        if epoch.is_some_and(|e| e >= 3) {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait().unwrap();
    let stopped = apunet::train::checkpoint::load_state(&state).unwrap().epoch;
    assert!(stopped < 6, "the kill came after the run had finished");
    println!("killed after epoch {stopped}");
    let out = apunet(&["train", "--resume", cut.to_str().unwrap(), "--quiet"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let losses = |run: &std::path::Path| -> Vec<[u64; 4]> {
        read_metrics(&run.join("metrics.csv"))
            .unwrap()
            .iter()
            .map(|m| [m.loss.to_bits(), m.kl.to_bits(), m.val_loss.to_bits(), m.val_ged.to_bits()])
            .collect()
    };
    assert_eq!(losses(&whole).len(), 6);
    assert_eq!(losses(&whole), losses(&cut), "the resumed run's losses differ from the uninterrupted one's");
    // The weights, value by value (the files also hold parameter ids, which differ).
    let dev = Device::flex();
    let cfg = apunet::train::RunConfig::load(&whole.join("config.toml")).unwrap();
    let weights = |path: std::path::PathBuf| {
        let m = apunet::train::checkpoint::load_segmenter(apunet::model::Segmenter::new(&cfg.model, &dev), &path).unwrap();
        let mut all = Values(Vec::new());
        m.visit(&mut all);
        all.0
    };
    for f in ["last.bpk", "best.bpk", "train.bpk"] {
        let (a, b) = (weights(whole.join("checkpoints").join(f)), weights(cut.join("checkpoints").join(f)));
        assert!(!a.is_empty() && a == b, "checkpoints/{f} differs after the resume");
    }
    // last.bpk is the average, train.bpk the trained weights: they differ.
    assert_ne!(weights(whole.join("checkpoints/last.bpk")), weights(whole.join("checkpoints/train.bpk")));
}

/// Every float parameter's bits, in visiting order.
struct Values(Vec<u32>);

impl ModuleVisitor for Values {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.extend(to_host(param.val()).unwrap().into_iter().map(f32::to_bits));
    }
}
