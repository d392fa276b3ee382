//! One pixel spacing (issue 30): `import --spacing` resamples scans (bilinear) and masks (by
//! area) to one in-plane spacing and records it; `predict` resamples its input the same way and
//! its outputs back onto the input's grid; a scan that states no spacing is refused for such a
//! run unless --allow-mismatch.

use std::path::{Path, PathBuf};

use apunet::data::Dataset;
use apunet::data::import::{ImportSettings, import_folder};
use apunet::data::intensity::Window;
use apunet::data::resample;
use apunet::data::scan::{self, Geometry};
use apunet::jobs::predict::{PredictRequest, ScanReport, predict_files};
use apunet::jobs::sample::RunSampling as SamplingArgs;
use apunet::train::{self, RunConfig, TrainConfig, TrainRequest};
use burn::prelude::Device;
use image::GrayImage;

use crate::common;

const SIDE: usize = 96;
const RADIUS: f32 = 8.0;

fn disc() -> Vec<bool> {
    (0..SIDE * SIDE).map(|j| ((j / SIDE) as f32 - 40.0).hypot((j % SIDE) as f32 - 50.0) <= RADIUS).collect()
}

/// A head-CT-like slice in HU (brain 30, a 65-HU lesion) as NIfTI with the given pixel size.
fn nifti<T: nifti::DataElement + Copy + Default + bytemuck::Pod>(path: &Path, values: Vec<T>, side: usize, mm: f32) {
    let mut h = scan::output_header(&Geometry::Plain, side, side, 1, 1);
    h.pixdim[1] = mm;
    h.pixdim[2] = mm;
    h.descrip = b"CT in HU".to_vec();
    scan::write_nifti(path, &h, &[vec![values]], side, side).unwrap();
}

fn case_folder(root: &Path) {
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("labels")).unwrap();
    let hu: Vec<i16> = disc().iter().map(|&d| if d { 65 } else { 30 }).collect();
    nifti(&root.join("images/case.nii.gz"), hu, SIDE, 0.7);
    for k in 1..=2 {
        let m: Vec<u8> = disc().iter().map(|&d| u8::from(d)).collect();
        nifti(&root.join(format!("labels/case_A{k}.nii.gz")), m, SIDE, 0.7);
    }
}

fn settings(input: &Path, out: &Path, spacing: Option<f64>) -> ImportSettings {
    ImportSettings {
        input: input.into(),
        out: out.into(),
        crop: 48,
        background_share: 0.0,
        windows: vec![Window::Brain],
        context_slices: 0,
        clahe: false,
        units: None,
        spacing,
        seed: 0,
    }
}

#[test]
fn import_resamples_to_one_spacing_and_keeps_the_lesions_area() {
    let dir = tempfile::tempdir().unwrap();
    case_folder(&dir.path().join("raw"));
    let out = dir.path().join("d.npz");
    import_folder(&settings(&dir.path().join("raw"), &out, Some(0.5))).unwrap();
    let ds = Dataset::load(&out).unwrap();
    assert_eq!(ds.preprocess.as_ref().and_then(|p| p.spacing), Some(0.5));
    // The lesion in mm²: 0.7 mm pixels before, 0.5 mm after; every crop holds it whole.
    let before = disc().iter().filter(|&&d| d).count() as f64 * 0.49;
    for i in 0..ds.len() {
        for k in 0..2 {
            let after =
                ds.masks.index_axis(ndarray::Axis(0), i).index_axis(ndarray::Axis(0), k).iter().map(|&v| v as f64).sum::<f64>() * 0.25;
            assert!((after / before - 1.0).abs() < 0.02, "crop {i}, expert {k}: {before} mm² became {after}");
        }
        // Under the mask, the lesion's 65 HU through the brain window (80/40): 0.8125.
        let img = ds.images.index_axis(ndarray::Axis(0), i);
        let m = ds.masks.index_axis(ndarray::Axis(0), i);
        let deepest = (0..48 * 48).find(|&j| {
            let (y, x) = (j / 48, j % 48);
            y > 2 && x > 2 && y < 45 && x < 45 && (0..25).all(|d| m[[0, y + d / 5 - 2, x + d % 5 - 2]] == 1)
        });
        let j = deepest.expect("a lesion pixel with marked neighbours");
        assert!((img[[0, j / 48, j % 48]] - 0.8125).abs() < 1e-4);
    }
    // Without --spacing, the scan's own grid: the same lesion in more, smaller pixels above.
    let plain = dir.path().join("plain.npz");
    import_folder(&settings(&dir.path().join("raw"), &plain, None)).unwrap();
    assert_eq!(Dataset::load(&plain).unwrap().preprocess.and_then(|p| p.spacing), None);
    // PNGs state no spacing.
    let png = dir.path().join("png");
    std::fs::create_dir_all(png.join("images")).unwrap();
    std::fs::create_dir_all(png.join("labels")).unwrap();
    GrayImage::from_fn(64, 64, |x, _| image::Luma([x as u8])).save(png.join("images/a.png")).unwrap();
    GrayImage::from_fn(64, 64, |x, y| image::Luma([if x + y < 20 { 255 } else { 0 }])).save(png.join("labels/a_A1.png")).unwrap();
    let e = format!("{:#}", import_folder(&settings(&png, &dir.path().join("p.npz"), Some(0.5))).unwrap_err());
    assert!(e.contains("states no pixel spacing"), "{e}");
}

fn predict(run: &Path, input: &Path, out: &Path, allow: bool) -> anyhow::Result<Vec<ScanReport>> {
    let sampling =
        SamplingArgs { n: 2, checkpoint: train::Which::Last, batch_size: 8, allow_mismatch: allow, ..SamplingArgs::for_run(run) };
    predict_files(&PredictRequest { review: false, ..PredictRequest::new(sampling, input.into(), out.into()) }, |_| {})
}

fn mean_of(dir: &Path) -> (Vec<usize>, Vec<f32>) {
    let mut npz = apunet::data::npz::read_npz(&dir.join("samples.npz")).unwrap();
    let Some(apunet::data::npz::NpyArray::F32(m)) = npz.remove("mean") else { panic!("no mean") };
    (m.shape().to_vec(), m.iter().copied().collect())
}

#[test]
fn predict_resamples_to_the_runs_spacing_and_back() {
    let dir = tempfile::tempdir().unwrap();
    case_folder(&dir.path().join("raw"));
    let data = dir.path().join("d.npz");
    import_folder(&settings(&dir.path().join("raw"), &data, Some(0.5))).unwrap();
    let run = dir.path().join("run");
    let config = RunConfig {
        model: common::tiny_config(),
        train: TrainConfig { epochs: 1, batch_size: 2, val_fraction: 0.0, figure_images: 1, figure_samples: 1, ..Default::default() },
        ..Default::default()
    };
    {
        let _g = common::rng_lock();
        train::train(TrainRequest { data: data.clone(), out: run.clone(), config, device: Device::flex(), resume: false, quiet: true })
            .unwrap();
    }
    // The 0.7-mm scan, and the same slice already on the run's 0.5-mm grid.
    let scan07 = dir.path().join("raw/images/case.nii.gz");
    let n05 = resample::resampled_len(SIDE, 0.7, 0.5);
    let hu: Vec<f32> = disc().iter().map(|&d| if d { 65.0 } else { 30.0 }).collect();
    let scan05: PathBuf = dir.path().join("case05.nii.gz");
    nifti(&scan05, resample::linear(&hu, (SIDE, SIDE), (n05, n05)), n05, 0.5);
    let reports = predict(&run, &scan07, &dir.path().join("p07"), false).unwrap();
    assert_eq!(reports[0].applied.spacing, Some(0.5));
    assert!(apunet::data::preprocess::describe(Some(&reports[0].applied)).contains("resampled to 0.5 mm pixels"));
    predict(&run, &scan05, &dir.path().join("p05"), false).unwrap();
    let (shape07, mean07) = mean_of(&dir.path().join("p07/case"));
    let (shape05, mean05) = mean_of(&dir.path().join("p05/case05"));
    // Outputs on each input's own grid; the 0.7-mm one is the 0.5-mm prediction brought back.
    assert_eq!((&shape07[1..], &shape05[1..]), (&[SIDE, SIDE][..], &[n05, n05][..]));
    let back = resample::linear(&mean05, (n05, n05), (SIDE, SIDE));
    let worst = back.iter().zip(&mean07).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-5, "the 0.7-mm prediction differs from the 0.5-mm one resampled back by {worst}");
    // A real CT slice whose Pixel Spacing was taken out: refused, or predicted on its own grid
    // knowingly.
    let mut obj = dicom_object::open_file(common::shared_data().join("ct/CT_small.dcm")).unwrap();
    obj.remove_element(dicom_dictionary_std::tags::PIXEL_SPACING);
    let bare = dir.path().join("bare.dcm");
    obj.write_to_file(&bare).unwrap();
    let e = format!("{:#}", predict(&run, &bare, &dir.path().join("q"), false).unwrap_err());
    assert!(e.contains("states no pixel spacing") && e.contains("0.5 mm"), "{e}");
    let reports = predict(&run, &bare, &dir.path().join("q"), true).unwrap();
    assert_eq!(reports[0].applied.spacing, None, "reported as resampled, though it kept its grid");
    assert_eq!(mean_of(&dir.path().join("q/bare")).0[1..], [128, 128]);
    // And a PNG is refused as well (it holds intensities, the run HU).
    let png = dir.path().join("slice.png");
    GrayImage::from_fn(64, 64, |x, _| image::Luma([x as u8])).save(&png).unwrap();
    assert!(predict(&run, &png, &dir.path().join("r"), false).is_err());
}
