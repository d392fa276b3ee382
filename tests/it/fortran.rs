//! numpy writes F-contiguous arrays in Fortran order; every command must read them as the same
//! logical arrays as C-order files and give identical results.

use crate::common;

use std::path::{Path, PathBuf};

use apunet::data::Dataset;
use apunet::data::npz::{self, NpyArray, NpzEntry, parse_header};
use apunet::data::synth::{SynthConfig, generate};
use apunet::inference::{Sampling, sample_images};
use apunet::jobs::evaluate::score_files;
use apunet::jobs::sample::{RunSampling as SamplingArgs, sample_to_file as sample_to};
use apunet::train::{self, RunConfig, TrainConfig, TrainRequest, read_metrics};
use burn::prelude::*;
use ndarray::{Array3, Array4, ShapeBuilder};

/// The same logical arrays, stored column-major.
fn fortran3<T: Copy + Default>(a: &Array3<T>) -> Array3<T> {
    let mut f = Array3::<T>::default(a.raw_dim().f());
    f.assign(a);
    f
}

fn fortran4<T: Copy + Default>(a: &Array4<T>) -> Array4<T> {
    let mut f = Array4::<T>::default(a.raw_dim().f());
    f.assign(a);
    f
}

/// Writes `ds` as numpy would write `np.asfortranarray` arrays, and checks the file says so.
fn save_fortran(ds: &Dataset, path: &Path) {
    let images = fortran3(&ds.images.index_axis(ndarray::Axis(1), 0).to_owned()).into_dyn();
    let masks = fortran4(&ds.masks).into_dyn();
    npz::write_npz(path, &[("images", NpzEntry::F32(&images)), ("masks", NpzEntry::U8(&masks)), ("series_uid", NpzEntry::Str(&ds.series))])
        .unwrap();
    let file = std::fs::File::open(path).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut zip.by_name("images.npy").unwrap(), &mut bytes).unwrap();
    assert!(parse_header(&bytes).unwrap().fortran_order, "the test file must really be Fortran-order");
}

fn data_pair(dir: &Path, count: usize) -> (PathBuf, PathBuf) {
    let ds = generate(&SynthConfig { count, size: 16, annotators: 3, seed: 5, per_series: 1, ..Default::default() }).unwrap();
    let (c, f) = (dir.join("c.npz"), dir.join("f.npz"));
    ds.save(&c).unwrap();
    save_fortran(&ds, &f);
    (c, f)
}

fn tiny_run(epochs: usize) -> RunConfig {
    RunConfig {
        model: common::tiny_config(),
        train: TrainConfig {
            epochs,
            batch_size: 4,
            val_fraction: 0.25,
            val_samples: 4,
            figure_images: 2,
            figure_samples: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn train_on(data: &Path, out: &Path) -> Vec<(f64, f64)> {
    train::train(TrainRequest {
        data: data.into(),
        out: out.into(),
        config: tiny_run(1),
        device: Device::flex(),
        resume: false,
        quiet: true,
    })
    .unwrap();
    read_metrics(&out.join("metrics.csv")).unwrap().iter().map(|m| (m.loss, m.val_ged)).collect()
}

#[test]
fn fortran_order_datasets_load_as_the_same_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let (c, f) = data_pair(dir.path(), 5);
    let (a, b) = (Dataset::load(&c).unwrap(), Dataset::load(&f).unwrap());
    assert_eq!(a.images, b.images);
    assert_eq!(a.masks, b.masks);
    assert!(b.images.is_standard_layout() && b.masks.is_standard_layout());
    // Raw arrays too (what `metrics` reads).
    match &npz::read_npz(&f).unwrap()["images"] {
        NpyArray::F32(x) => assert!(x.is_standard_layout() && x.iter().eq(a.images.iter())),
        other => panic!("kind {}", other.kind()),
    }
}

#[test]
fn sampling_training_and_metrics_agree_on_c_and_fortran_order() {
    // Training and building models draw from the process-wide device RNG.
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    // 6 images: one sampling chunk covers them all (the case that once scrambled pixels).
    let (c, f) = data_pair(dir.path(), 6);
    let (rc, rf) = (dir.path().join("rc"), dir.path().join("rf"));
    assert_eq!(train_on(&c, &rc), train_on(&f, &rf), "training losses must not depend on the file's order");

    let (sc, sf) = (dir.path().join("sc.npz"), dir.path().join("sf.npz"));
    let args = SamplingArgs { n: 6, batch_size: 8, ..SamplingArgs::for_run(&rc) };
    sample_to(&args, &c, &sc, 2).unwrap();
    sample_to(&args, &f, &sf, 2).unwrap();
    let (a, b) = (npz::read_npz(&sc).unwrap(), npz::read_npz(&sf).unwrap());
    for key in ["samples", "prior_mean"] {
        match (&a[key], &b[key]) {
            (NpyArray::U8(x), NpyArray::U8(y)) => assert_eq!(x, y, "{key}"),
            _ => panic!("{key} is not uint8"),
        }
    }

    // In memory: a Fortran-layout array straight into the sampler.
    let (_, cfg, model) = args.load().unwrap();
    let ds = Dataset::load(&c).unwrap();
    let sampling = Sampling { n: 3, ..args.sampling(&cfg).unwrap() };
    let dev = Device::flex();
    let from_c = sample_images(&model, &ds.images, &sampling, &dev, |_| {}).unwrap();
    let from_f = sample_images(&model, &fortran4(&ds.images), &sampling, &dev, |_| {}).unwrap();
    assert_eq!(from_c.masks, from_f.masks);
    assert_eq!(from_c.mean, from_f.mean);

    // metrics: Fortran-order samples and labels score exactly as C-order ones.
    let samples = match &a["samples"] {
        NpyArray::U8(x) => x.clone().into_dimensionality::<ndarray::Ix4>().unwrap(),
        _ => unreachable!(),
    };
    let sf_only = dir.path().join("samples_f.npz");
    let fs = fortran4(&samples).into_dyn();
    npz::write_npz(&sf_only, &[("samples", NpzEntry::U8(&fs))]).unwrap();
    let (mc, mf) = (dir.path().join("mc"), dir.path().join("mf"));
    let run = |s: &Path, l: &Path, out: &Path| {
        score_files(s, l, Some(out)).unwrap();
        std::fs::read_to_string(out.join("per_image.csv")).unwrap()
    };
    assert_eq!(run(&sc, &c, &mc), run(&sf_only, &f, &mf));
}
