//! Input channels (issue 30): HU windows stacked in the order given and neighbouring slices with
//! mirrored ends, checked against windows computed by hand; a run on them predicts a volume
//! through exactly that record, and refuses what cannot be fed that way.

use std::path::{Path, PathBuf};

use apunet::data::Dataset;
use apunet::data::dicom::read_dicom;
use apunet::data::import::{ImportSettings, import_folder};
use apunet::data::intensity::{Window, WindowList};
use apunet::data::preprocess::Units;
use apunet::data::scan::{self, Geometry};
use apunet::gan::train::Domain;
use apunet::inference::Sampling;
use apunet::jobs::predict::{PredictRequest, predict_files};
use apunet::jobs::sample::{RunSampling, sample_to_file};
use apunet::predict::predict_image;
use apunet::train::{self, RunConfig, TrainConfig, TrainRequest};
use burn::prelude::Device;

use crate::common;

/// The linear window by hand: level - width/2 to 0, level + width/2 to 1.
fn by_hand(hu: f32, width: f32, level: f32) -> f32 {
    ((hu - (level - width / 2.0)) / width).clamp(0.0, 1.0)
}

fn settings(input: &Path, out: &Path, windows: &str, context_slices: usize, crop: usize) -> ImportSettings {
    ImportSettings {
        input: input.into(),
        out: out.into(),
        crop,
        background_share: 0.0,
        windows: windows.parse::<WindowList>().unwrap().0,
        context_slices,
        clahe: false,
        units: Some(Units::Hu),
        spacing: None,
        seed: 0,
    }
}

#[test]
fn stacked_windows_follow_the_order_given_on_a_real_dicom() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("raw");
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("labels")).unwrap();
    let src = common::shared_data().join("ct/693_UNCR.dcm");
    std::fs::copy(&src, root.join("images/head.dcm")).unwrap();
    let ct = read_dicom(&src).unwrap();
    let (h, w) = (ct.rows, ct.columns);
    let label = image::GrayImage::from_fn(w as u32, h as u32, |x, y| {
        image::Luma([u8::from((200..216).contains(&y) && (240..256).contains(&x)) * 255])
    });
    label.save(root.join("labels/head_A1.png")).unwrap();
    let out = dir.path().join("ds.npz");
    let mut s = settings(&root, &out, "brain,subdural,bone", 0, 64);
    s.units = None;
    import_folder(&s).unwrap();

    let ds = Dataset::load(&out).unwrap();
    assert_eq!((ds.len(), ds.channels(), ds.display_channel()), (1, 3, 0));
    assert_eq!(ds.preprocess.as_ref().unwrap().windows(), vec![Window::Brain, Window::Subdural, Window::Bone]);
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.with_extension("manifest.json")).unwrap()).unwrap();
    let (y0, x0) = (manifest["crops"][0]["y0"].as_u64().unwrap() as usize, manifest["crops"][0]["x0"].as_u64().unwrap() as usize);
    for (c, (width, level)) in [(80.0, 40.0), (200.0, 80.0), (2800.0, 600.0)].into_iter().enumerate() {
        let mut worst = 0f32;
        for y in 0..64 {
            for x in 0..64 {
                let want = by_hand(ct.hu[(y0 + y) * w + x0 + x], width, level);
                worst = worst.max((ds.images[[0, c, y, x]] - want).abs());
            }
        }
        assert!(worst < 1e-6, "channel {c} ({width}/{level}) differs from the window by hand by {worst}");
    }
    // The review and figures show the first window.
    assert_eq!(ds.display_images().index_axis(ndarray::Axis(0), 0), ds.images.slice(ndarray::s![0, 0, .., ..]));
}

/// HU of slice `z` of the test volume: a constant per slice and a gentle ramp across columns.
fn hu_at(z: usize, x: usize) -> f32 {
    [-500.0, 0.0, 500.0][z] + 10.0 * x as f32
}

/// A folder with a three-slice NIfTI volume in HU (32 px, a square marked on every slice by one
/// expert) and a single-slice case beside it.
fn volume_folder(root: &Path) -> PathBuf {
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("labels")).unwrap();
    let side = 32;
    let slices: Vec<Vec<i16>> = (0..3).map(|z| (0..side * side).map(|p| hu_at(z, p % side) as i16).collect()).collect();
    let mask: Vec<u8> = (0..side * side).map(|p| u8::from((12..20).contains(&(p / side)) && (12..20).contains(&(p % side)))).collect();
    let header = |depth| scan::output_header(&Geometry::Plain, side, side, depth, 1);
    let vol = root.join("images/vol.nii.gz");
    scan::write_nifti(&vol, &header(3), std::slice::from_ref(&slices), side, side).unwrap();
    scan::write_nifti(&root.join("labels/vol_A1.nii.gz"), &header(3), &[vec![mask.clone(); 3]], side, side).unwrap();
    scan::write_nifti(&root.join("images/flat.nii.gz"), &header(1), &[vec![slices[1].clone()]], side, side).unwrap();
    scan::write_nifti(&root.join("labels/flat_A1.nii.gz"), &header(1), &[vec![mask]], side, side).unwrap();
    vol
}

/// Channel `c` of slice `z` by hand: windows 2000/0 then bone, each of slices z-1, z, z+1
/// with the volume's ends mirrored.
fn expected_input(z: usize) -> Vec<f32> {
    let neighbours = [[1, 0, 1], [0, 1, 2], [1, 2, 1]][z];
    let mut out = Vec::new();
    for (width, level) in [(2000.0, 0.0), (2800.0, 600.0)] {
        for zz in neighbours {
            out.extend((0..32 * 32).map(|p| by_hand(hu_at(zz, p % 32), width, level)));
        }
    }
    out
}

#[test]
fn neighbouring_slices_are_stacked_window_by_window_with_mirrored_ends() {
    let dir = tempfile::tempdir().unwrap();
    volume_folder(&dir.path().join("raw"));
    let out = dir.path().join("ds.npz");
    let done = import_folder(&settings(&dir.path().join("raw"), &out, "2000,0,bone", 1, 32)).unwrap();
    assert_eq!(done.skipped.len(), 1, "the single-slice case has no neighbours");
    assert!(done.skipped[0].case == "flat" && done.skipped[0].reason.contains("--context-slices"), "{:?}", done.skipped);
    let ds = Dataset::load(&out).unwrap();
    assert_eq!((ds.len(), ds.channels(), ds.display_channel()), (3, 6, 1));
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.with_extension("manifest.json")).unwrap()).unwrap();
    for i in 0..3 {
        let z = manifest["crops"][i]["slice"].as_u64().unwrap() as usize;
        let got: Vec<f32> = ds.images.index_axis(ndarray::Axis(0), i).iter().copied().collect();
        let want = expected_input(z);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-6, "slice {z}: channels differ from the stack by hand by {worst}");
    }
}

#[test]
fn a_run_on_stacked_channels_predicts_a_volume_through_its_record_and_refuses_the_rest() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let vol = volume_folder(&dir.path().join("raw"));
    let data = dir.path().join("ds.npz");
    import_folder(&settings(&dir.path().join("raw"), &data, "2000,0,bone", 1, 32)).unwrap();
    let run = dir.path().join("run");
    let config = RunConfig {
        model: common::tiny_config(),
        train: TrainConfig { epochs: 1, batch_size: 3, val_fraction: 0.0, figure_images: 1, figure_samples: 1, ..Default::default() },
        ..Default::default()
    };
    train::train(TrainRequest { data: data.clone(), out: run.clone(), config, device: Device::flex(), resume: false, quiet: true })
        .unwrap();
    let cfg = RunConfig::load(&run.join("config.toml")).unwrap();
    assert_eq!(cfg.model.in_channels, 6, "the model takes the data's channels");

    let sampling = |allow: bool| RunSampling {
        n: 2,
        checkpoint: train::Which::Last,
        batch_size: 8,
        allow_mismatch: allow,
        ..RunSampling::for_run(&run)
    };
    let predict = |input: &Path, out: &str, window: Option<Window>, allow: bool| {
        let req = PredictRequest { window, review: false, ..PredictRequest::new(sampling(allow), input.into(), dir.path().join(out)) };
        predict_files(&req, |_| {})
    };
    let reports = predict(&vol, "pred", None, false).unwrap();
    assert_eq!(reports[0].applied, *cfg.data.preprocess.as_ref().unwrap(), "predict applies the run's record");
    let mut npz = apunet::data::npz::read_npz(&dir.path().join("pred/vol/samples.npz")).unwrap();
    let Some(apunet::data::npz::NpyArray::F32(mean)) = npz.remove("mean") else { panic!("no mean") };
    let (_, model) = train::load_run(&run, train::Which::Last, &Device::flex()).unwrap();
    let s = Sampling { n: 2, seed: 0, batch: 8, mean_scales: vec![] };
    for z in 0..3 {
        let want = predict_image(&model, &expected_input(z), 32, 32, (32, 32), &s, 0.5, &Device::flex(), |_| {}).unwrap();
        let got: Vec<f32> = mean.slice(ndarray::s![z, .., ..]).iter().copied().collect();
        assert_eq!(got, want.mean, "slice {z}: predict must feed the windows and neighbours the run trained on");
    }

    // A single slice has no neighbours: refused, or knowingly standing in for them.
    let flat = dir.path().join("raw/images/flat.nii.gz");
    let e = format!("{:#}", predict(&flat, "p1", None, false).unwrap_err());
    assert!(e.contains("single slice") && e.contains("neighbouring slice") && e.contains("--allow-mismatch"), "{e}");
    predict(&flat, "p1", None, true).unwrap();
    // One --window cannot stand for a stack of them.
    let e = format!("{:#}", predict(&vol, "p2", Some(Window::Brain), false).unwrap_err());
    assert!(e.contains("replaces one window") && e.contains("stacked as channels"), "{e}");
    // Data of other channels never reach the model.
    let one = dir.path().join("one.npz");
    import_folder(&settings(&dir.path().join("raw"), &one, "2000,0", 0, 32)).unwrap();
    let e = format!("{:#}", sample_to_file(&sampling(true), &one, &dir.path().join("s.npz"), 1).unwrap_err());
    assert!(e.contains("1-channel") && e.contains("takes 6"), "{e}");
    // The CycleGAN translates one channel.
    let e = Domain::from_images(&Dataset::load(&data).unwrap(), &data).unwrap_err().to_string();
    assert!(e.contains("6 channels"), "{e}");
}

#[test]
fn channels_without_a_record_are_not_rebuilt_from_a_scan() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    // Two channels from somewhere else: no record of the windows that made them.
    let one =
        apunet::data::synth::generate(&apunet::data::synth::SynthConfig { count: 6, size: 16, seed: 1, ..Default::default() }).unwrap();
    let two = ndarray::concatenate(ndarray::Axis(1), &[one.images.view(), one.images.view()]).unwrap();
    let ds = Dataset::new(two, one.masks.clone(), None, "two").unwrap();
    let data = dir.path().join("two.npz");
    ds.save(&data).unwrap();
    assert_eq!(Dataset::load(&data).unwrap().channels(), 2, "[N,C,H,W] survives the npz");
    let run = dir.path().join("run");
    let config = RunConfig {
        model: common::tiny_config(),
        train: TrainConfig { epochs: 1, batch_size: 3, val_fraction: 0.0, figure_images: 1, figure_samples: 1, ..Default::default() },
        ..Default::default()
    };
    train::train(TrainRequest { data, out: run.clone(), config, device: Device::flex(), resume: false, quiet: true }).unwrap();
    let png = dir.path().join("x.png");
    image::GrayImage::from_fn(20, 20, |x, y| image::Luma([(x * 10 + y) as u8])).save(&png).unwrap();
    let s = RunSampling { n: 2, checkpoint: train::Which::Last, ..RunSampling::for_run(&run) };
    let e = format!("{:#}", predict_files(&PredictRequest::new(s, png, dir.path().join("p")), |_| {}).unwrap_err());
    assert!(e.contains("takes 2 input channel(s)") && e.contains("cannot be rebuilt"), "{e}");
}
