use crate::common;

use std::path::Path;

use apunet::data::augment::Augmentation;
use apunet::data::batch::{PatchSampling, training_batch, training_patches};
use apunet::data::npz::{self, NpyArray, NpzEntry};
use apunet::data::synth::{SynthConfig, generate};
use apunet::data::{AnnotatorChoice, Dataset};
use apunet::model::to_host;
use burn::prelude::*;
use ndarray::{Array3, Array4};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn write(path: &Path, entries: &[(&str, NpzEntry<'_>)]) {
    npz::write_npz(path, entries).unwrap();
}

fn err_text(path: &Path) -> String {
    format!("{:#}", Dataset::load(path).expect_err("load must fail"))
}

#[test]
fn reads_the_real_lidc_sample_with_unicode_series_ids() {
    let path = common::shared_data().join("lidc/lidc-small-train.npz");
    let ds = Dataset::load(&path).unwrap();
    assert_eq!(ds.len(), 51);
    assert_eq!(ds.annotators(), 4);
    assert_eq!((ds.height(), ds.width()), (128, 128));
    assert!(ds.images.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(ds.series.iter().all(|s| s.starts_with("1.3.6.1.4.1.")), "{:?}", &ds.series[..2]);
    let distinct: std::collections::HashSet<_> = ds.series.iter().collect();
    assert!(distinct.len() > 1 && distinct.len() < 51);
    assert!(ds.masks.iter().any(|&v| v == 1));
}

#[test]
fn npz_round_trip_keeps_arrays_and_strings() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.npz");
    let ds = generate(&SynthConfig { count: 6, size: 32, annotators: 3, seed: 4, ..Default::default() }).unwrap();
    let mut ds = ds;
    ds.series[0] = "séries-ü-1".into();
    ds.save(&p).unwrap();
    let back = Dataset::load(&p).unwrap();
    assert_eq!(back.images, ds.images);
    assert_eq!(back.masks, ds.masks);
    assert_eq!(back.series, ds.series);
    let raw = npz::read_npz(&p).unwrap();
    assert!(matches!(raw.get("series_uid"), Some(NpyArray::Str(s, shape)) if s.len() == 6 && shape == &vec![6]));
}

#[test]
fn parses_numpy_written_headers() {
    // Header exactly as numpy 1.x writes `np.array(['ab', 'c'])`.
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let mut dict = "{'descr': '<U2', 'fortran_order': False, 'shape': (2,), }".to_string();
    while !(10 + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    bytes.extend_from_slice(dict.as_bytes());
    for c in ['a', 'b', 'c', '\0'] {
        bytes.extend_from_slice(&(c as u32).to_le_bytes());
    }
    let h = npz::parse_header(&bytes).unwrap();
    assert_eq!(h.descr, "<U2");
    assert_eq!(h.shape, vec![2]);
    assert_eq!(npz::encode_strings(&["ab".into(), "c".into()]), bytes);
}

#[test]
fn synthetic_data_is_dark_ambiguous_and_reproducible() {
    let cfg = SynthConfig { count: 40, size: 64, annotators: 4, seed: 1, ..Default::default() };
    let a = generate(&cfg).unwrap();
    let b = generate(&cfg).unwrap();
    assert_eq!(a.images, b.images);
    assert_eq!(a.masks, b.masks);
    let mean = a.images.mean().unwrap();
    assert!(mean < 0.35, "synthetic CT should be dark, mean {mean}");
    // Annotators disagree on some images and lesions are small.
    let (s, hw) = (64usize, 64 * 64);
    let mut disagree = 0;
    let mut some_empty = 0;
    for i in 0..40 {
        let areas: Vec<usize> = (0..4).map(|k| (0..hw).filter(|&p| a.masks[[i, k, p / s, p % s]] == 1).count()).collect();
        if areas.iter().any(|&x| x != areas[0]) {
            disagree += 1;
        }
        if areas.contains(&0) {
            some_empty += 1;
        }
        assert!(areas.iter().all(|&x| x < hw / 8), "lesions should be small: {areas:?}");
    }
    assert!(disagree >= 20, "annotators should disagree often, got {disagree}/40");
    assert!(some_empty >= 3, "some lesions should be missed or absent, got {some_empty}");
    assert!(generate(&SynthConfig { annotators: 0, ..cfg.clone() }).is_err());
    assert!(generate(&SynthConfig { count: 0, ..cfg }).is_err());
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = Array3::<f32>::zeros((2, 8, 8)).into_dyn();
    let good_masks = Array4::<u8>::zeros((2, 2, 8, 8)).into_dyn();

    let missing = d.join("nope.npz");
    assert!(err_text(&missing).contains("cannot open"), "{}", err_text(&missing));

    let notzip = d.join("text.npz");
    std::fs::write(&notzip, b"hello").unwrap();
    assert!(err_text(&notzip).contains("not a valid .npz"));

    let wrong = d.join("wrong.npz");
    let masks = Array4::<u8>::zeros((2, 2, 8, 7)).into_dyn();
    write(&wrong, &[("images", NpzEntry::F32(&img)), ("masks", NpzEntry::U8(&masks))]);
    let e = err_text(&wrong);
    assert!(e.contains("[2, 2, 8, 7]") && e.contains("expected masks [2, A, 8, 8]"), "{e}");

    let nonbin = d.join("nonbin.npz");
    let mut m = Array4::<u8>::zeros((2, 2, 8, 8));
    m[[1, 0, 3, 3]] = 255;
    let m = m.into_dyn();
    write(&nonbin, &[("images", NpzEntry::F32(&img)), ("masks", NpzEntry::U8(&m))]);
    let e = err_text(&nonbin);
    assert!(e.contains("binary") && e.contains("value 255 (for 0/255 masks"), "{e}");

    let nan = d.join("nan.npz");
    let mut im = Array3::<f32>::zeros((2, 8, 8));
    im[[1, 2, 2]] = f32::NAN;
    let im = im.into_dyn();
    write(&nan, &[("images", NpzEntry::F32(&im)), ("masks", NpzEntry::U8(&good_masks))]);
    assert!(err_text(&nan).contains("image 1 contains NaN"), "{}", err_text(&nan));

    let hu = d.join("hu.npz");
    let mut raw = Array3::<f32>::from_elem((2, 8, 8), -1000.0);
    raw[[1, 4, 4]] = 40.0;
    let raw = raw.into_dyn();
    write(&hu, &[("images", NpzEntry::F32(&raw)), ("masks", NpzEntry::U8(&good_masks))]);
    let e = err_text(&hu);
    assert!(e.contains("outside [0, 1]") && e.contains("[-1000, 40]") && e.contains("apunet import"), "{e}");

    let zero_ann = d.join("zero.npz");
    let z = Array4::<u8>::zeros((2, 0, 8, 8)).into_dyn();
    write(&zero_ann, &[("images", NpzEntry::F32(&img)), ("masks", NpzEntry::U8(&z))]);
    assert!(err_text(&zero_ann).contains("annotator count 0"), "{}", err_text(&zero_ann));

    let no_masks = d.join("nomasks.npz");
    write(&no_masks, &[("images", NpzEntry::F32(&img))]);
    assert!(err_text(&no_masks).contains("no 'masks'"));

    let series = d.join("series.npz");
    let s = vec!["a".to_string()];
    write(&series, &[("images", NpzEntry::F32(&img)), ("masks", NpzEntry::U8(&good_masks)), ("series_uid", NpzEntry::Str(&s))]);
    assert!(err_text(&series).contains("'series_uid' has 1 entries"));
}

#[test]
fn batches_pick_annotators_and_augment_image_and_mask_alike() {
    let ds = generate(&SynthConfig { count: 4, size: 32, annotators: 4, seed: 9, empty_fraction: 0.0, ..Default::default() }).unwrap();
    let d = Device::flex();
    let mut rng = StdRng::seed_from_u64(0);
    let idx = [0, 1, 2, 3];
    let b = training_batch(&ds, &idx, AnnotatorChoice::Fixed(2), false, &mut rng, &d).unwrap();
    let m = to_host(b.masks).unwrap();
    for (j, &i) in idx.iter().enumerate() {
        for p in 0..32 * 32 {
            assert_eq!(m[j * 1024 + p], ds.masks[[i, 2, p / 32, p % 32]] as f32);
        }
    }
    // Augmented: the mask still sits where the (transformed) lesion is, so the image is brighter
    // under the mask than around it.
    let b = training_batch(&ds, &idx, AnnotatorChoice::Majority, true, &mut rng, &d).unwrap();
    let (im, m) = (to_host(b.images).unwrap(), to_host(b.masks).unwrap());
    for j in 0..4 {
        let (mut inside, mut n_in, mut outside, mut n_out) = (0f32, 0, 0f32, 0);
        for p in 0..1024 {
            if m[j * 1024 + p] > 0.5 {
                inside += im[j * 1024 + p];
                n_in += 1;
            } else {
                outside += im[j * 1024 + p];
                n_out += 1;
            }
        }
        if n_in > 0 {
            assert!(inside / n_in as f32 > outside / n_out as f32, "mask and image misaligned in item {j}");
        }
    }
    assert!(training_batch(&ds, &idx, AnnotatorChoice::Fixed(7), false, &mut rng, &d).is_err());
}

#[test]
fn patches_are_crops_of_the_image_and_can_be_placed_over_lesions() {
    // One small lesion in a corner, all annotators agreeing; pixel values encode their position.
    let (n, h, w) = (6, 32, 32);
    let mut images = Array3::<f32>::zeros((n, h, w));
    let mut masks = Array4::<u8>::zeros((n, 2, h, w));
    for i in 0..n {
        for y in 0..h {
            for x in 0..w {
                images[[i, y, x]] = (y * w + x) as f32 / (h * w) as f32;
            }
        }
        for k in 0..2 {
            masks[[i, k, 28, 29]] = 1;
            masks[[i, k, 29, 29]] = 1;
        }
    }
    let ds = Dataset::gray(images, masks, None, "test").unwrap();
    let d = Device::flex();
    let mut rng = StdRng::seed_from_u64(1);
    let idx: Vec<usize> = (0..n).collect();
    let p = 16;
    let b = training_patches(
        &ds,
        &idx,
        AnnotatorChoice::Random,
        &Augmentation::symmetries(false),
        Some(PatchSampling { size: p, foreground: 1.0 }),
        &mut rng,
        &d,
    )
    .unwrap();
    assert_eq!(b.images.dims(), [n, 1, p, p]);
    assert_eq!(b.masks.dims(), [n, 1, p, p]);
    let (im, m) = (to_host(b.images).unwrap(), to_host(b.masks).unwrap());
    for j in 0..n {
        let patch = &im[j * p * p..(j + 1) * p * p];
        // A contiguous window: +1/(hw) along a row, +w/(hw) down a column.
        let step = 1.0 / (h * w) as f32;
        for y in 0..p {
            for x in 1..p {
                assert!((patch[y * p + x] - patch[y * p + x - 1] - step).abs() < 1e-6);
            }
            if y > 0 {
                assert!((patch[y * p] - patch[(y - 1) * p] - w as f32 * step).abs() < 1e-6);
            }
        }
        // foreground = 1: every patch holds the lesion, at the right place in the window.
        let (oy, ox) = {
            let v = (patch[0] * (h * w) as f32).round() as usize;
            (v / w, v % w)
        };
        let expect: f32 = [(28, 29), (29, 29)].iter().filter(|&&(y, x)| y >= oy && y < oy + p && x >= ox && x < ox + p).count() as f32;
        assert!(expect > 0.0, "patch at ({oy},{ox}) misses the lesion");
        let got: f32 = m[j * p * p..(j + 1) * p * p].iter().sum();
        assert_eq!(got, expect);
    }
    // foreground = 0: placed uniformly, so over many draws some patches miss the corner lesion.
    let mut misses = 0;
    for _ in 0..10 {
        let b = training_patches(
            &ds,
            &idx,
            AnnotatorChoice::Fixed(0),
            &Augmentation::symmetries(true),
            Some(PatchSampling { size: p, foreground: 0.0 }),
            &mut rng,
            &d,
        )
        .unwrap();
        let m = to_host(b.masks).unwrap();
        misses += (0..n).filter(|j| m[j * p * p..(j + 1) * p * p].iter().sum::<f32>() == 0.0).count();
    }
    assert!(misses > 0);
    let err = training_patches(
        &ds,
        &idx,
        AnnotatorChoice::Random,
        &Augmentation::symmetries(false),
        Some(PatchSampling { size: 64, foreground: 0.5 }),
        &mut rng,
        &d,
    )
    .expect_err("a patch larger than the crop must fail");
    assert!(format!("{err:#}").contains("larger than the 32x32"));
}
