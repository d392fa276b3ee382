//! No silent wrong output: units of NIfTI scans, preprocessing records compared wherever data
//! meet a run, a resume that keeps its data and directory, and messages that blame what the
//! user gave.

use std::path::{Path, PathBuf};

use apunet::cli::parse_from;
use apunet::data::dicom::read_dicom;
use apunet::data::intensity::{Window, apply_window};
use apunet::data::preprocess::{Preprocess, Units};
use apunet::data::scan::{self, Geometry, nifti_units, read_scan, read_scan_as};
use apunet::data::synth::{SynthConfig, generate};
use apunet::inference::Sampling;
use apunet::jobs::predict::{PredictRequest, predict_files};
use apunet::jobs::sample::RunSampling as SamplingArgs;
use apunet::predict::predict_image;
use apunet::train::{self, RunConfig, TrainConfig, TrainRequest};
use burn::prelude::Device;

use crate::common;

fn lung() -> Option<Preprocess> {
    Some(Preprocess { window: Some(Window::Lung), ..Default::default() })
}

/// Synthetic crops saved with the given preprocessing record.
fn data_with(dir: &Path, name: &str, record: Option<Preprocess>, seed: u64) -> PathBuf {
    let mut ds = generate(&SynthConfig { count: 8, size: 16, seed, ..Default::default() }).unwrap();
    ds.preprocess = record;
    let path = dir.join(name);
    ds.save(&path).unwrap();
    path
}

fn tiny_train(data: &Path, out: &Path) {
    let config = RunConfig {
        model: common::tiny_config(),
        train: TrainConfig { epochs: 1, batch_size: 4, val_fraction: 0.0, figure_images: 1, figure_samples: 1, ..Default::default() },
        ..Default::default()
    };
    train::train(TrainRequest { data: data.into(), out: out.into(), config, device: Device::flex(), resume: false, quiet: true }).unwrap();
}

/// A 48x48 piece of 693_UNCR.dcm with no air in it (every value above -200 HU), as int16 NIfTI.
fn ct_piece_without_air(dir: &Path) -> (PathBuf, Vec<f32>) {
    let s = read_dicom(&common::shared_data().join("ct/693_UNCR.dcm")).unwrap();
    let (h, w, side) = (s.rows, s.columns, 48);
    let piece = |y0: usize, x0: usize| -> Vec<f32> { (0..side * side).map(|p| s.hu[(y0 + p / side) * w + x0 + p % side]).collect() };
    let (y0, x0) = (0..h - side)
        .step_by(8)
        .flat_map(|y| (0..w - side).step_by(8).map(move |x| (y, x)))
        .find(|&(y, x)| piece(y, x).iter().all(|&v| v > -200.0) && piece(y, x).iter().any(|&v| v > 300.0))
        .expect("693_UNCR.dcm has soft tissue and bone without air");
    let hu = piece(y0, x0);
    let path = dir.join("piece.nii.gz");
    let values: Vec<i16> = hu.iter().map(|&v| v.round() as i16).collect();
    let header = scan::output_header(&Geometry::Plain, side, side, 1, 1);
    scan::write_nifti(&path, &header, &[vec![values]], side, side).unwrap();
    (path, hu.iter().map(|v| v.round()).collect())
}

fn predict(run: &Path, input: &Path, out: &Path, window: Option<Window>, allow: bool) -> anyhow::Result<()> {
    let sampling =
        SamplingArgs { n: 2, checkpoint: train::Which::Last, batch_size: 8, allow_mismatch: allow, ..SamplingArgs::for_run(run) };
    predict_files(&PredictRequest { window, review: false, ..PredictRequest::new(sampling, input.into(), out.into()) }, |_| {}).map(|_| ())
}

fn mean_of(dir: &Path) -> Vec<f32> {
    let mut npz = apunet::data::npz::read_npz(&dir.join("samples.npz")).unwrap();
    let Some(apunet::data::npz::NpyArray::F32(m)) = npz.remove("mean") else { panic!("no mean") };
    m.iter().copied().collect()
}

#[test]
fn a_nifti_ct_without_air_is_windowed_as_the_run_was_trained() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let (nii, hu) = ct_piece_without_air(dir.path());
    let s = read_scan(&nii).unwrap();
    assert_eq!(s.slices[0].units, Units::Hu, "int16 CT without air is still HU");
    assert!(hu.iter().all(|&v| v > -200.0));

    let run = dir.path().join("run");
    tiny_train(&data_with(dir.path(), "lung.npz", lung(), 1), &run);
    assert_eq!(RunConfig::load(&run.join("config.toml")).unwrap().data.preprocess, lung());
    let out = dir.path().join("pred");
    predict(&run, &nii, &out, None, false).unwrap();
    let got = mean_of(&out.join("piece"));
    // The reference: the lung window by hand, then the model on it.
    let (cfg, model) = train::load_run(&run, train::Which::Last, &Device::flex()).unwrap();
    let x = apply_window(&hu, 1500.0, -600.0);
    let sampling = Sampling { n: 2, seed: 0, batch: 8, mean_scales: vec![] };
    let want = predict_image(&model, &x, 48, 48, (cfg.data.height, cfg.data.width), &sampling, 0.5, &Device::flex(), |_| {}).unwrap();
    assert_eq!(got, want.mean, "predict must apply the run's lung window to HU");
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("piece/review.json")).unwrap()).unwrap();
    assert!(record["units"].get("hounsfield").is_some(), "the page shows HU: {record}");
    // Another window changes the input, so the output.
    let other = dir.path().join("pred_med");
    predict(&run, &nii, &other, Some(Window::Mediastinum), false).unwrap();
    assert_ne!(mean_of(&other.join("piece")), got, "--window mediastinum must change what the model sees");

    // A PNG holds intensities: refused for a run trained on HU, unless accepted knowingly.
    let png = dir.path().join("x.png");
    image::GrayImage::from_fn(20, 20, |x, y| image::Luma([(x * 10 + y) as u8])).save(&png).unwrap();
    let e = format!("{:#}", predict(&run, &png, &dir.path().join("p2"), None, false).unwrap_err());
    assert!(e.contains("x.png holds intensities") && e.contains("HU window lung"), "{e}");
    predict(&run, &png, &dir.path().join("p2"), None, true).unwrap();

    // A run whose data carry no record gets no invented window for HU scans.
    let unknown = dir.path().join("unknown");
    tiny_train(&data_with(dir.path(), "plain.npz", None, 2), &unknown);
    assert_eq!(RunConfig::load(&unknown.join("config.toml")).unwrap().data.preprocess, None);
    let e = format!("{:#}", predict(&unknown, &nii, &dir.path().join("p3"), None, false).unwrap_err());
    assert!(e.contains("no preprocessing record") && e.contains("--window"), "{e}");
    predict(&unknown, &nii, &dir.path().join("p3"), Some(Window::Lung), false).unwrap();
    predict(&unknown, &png, &dir.path().join("p4"), None, false).unwrap();
}

#[test]
fn nifti_units_come_from_header_type_and_range_together() {
    let header = |datatype: i16, slope: f32, inter: f32, descrip: &str| {
        let mut h = nifti::NiftiHeader { datatype, scl_slope: slope, scl_inter: inter, ..Default::default() };
        h.descrip = descrip.as_bytes().to_vec();
        h
    };
    // int16 CT of soft tissue: no value below 0 and still HU.
    assert_eq!(nifti_units(&header(4, 1.0, 0.0, ""), -94.0, 1385.0).unwrap(), Units::Hu);
    assert_eq!(nifti_units(&header(4, 1.0, 0.0, ""), 20.0, 80.0).unwrap(), Units::Hu);
    // Unsigned data with a rescale intercept: CT as scanners store it.
    assert_eq!(nifti_units(&header(512, 1.0, -1024.0, ""), -1024.0, 3000.0).unwrap(), Units::Hu);
    // Intensities.
    assert_eq!(nifti_units(&header(16, 1.0, 0.0, ""), 0.0, 1.0).unwrap(), Units::Unit);
    assert_eq!(nifti_units(&header(2, 1.0, 0.0, ""), 0.0, 255.0).unwrap(), Units::Unit);
    // The description says so.
    assert_eq!(nifti_units(&header(16, 1.0, 0.0, "CT in HU"), 0.0, 0.5).unwrap(), Units::Hu);
    // Ambiguous: asked, never guessed.
    for (h, lo, hi) in [(header(512, 0.0, 0.0, ""), 0.0, 4095.0), (header(16, 1.0, 0.0, ""), -2.5, 4.0)] {
        let e = nifti_units(&h, lo, hi).unwrap_err().to_string();
        assert!(e.contains("--units hu or --units unit"), "{e}");
    }
    // --units overrides; a statement a file cannot hold is refused.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.nii");
    let h = scan::output_header(&Geometry::Plain, 3, 2, 1, 1);
    scan::write_nifti(&path, &h, &[vec![vec![0.0f32, 0.2, 0.4, 0.6, 0.8, 1.0]]], 2, 3).unwrap();
    assert_eq!(read_scan(&path).unwrap().slices[0].units, Units::Unit);
    assert_eq!(read_scan_as(&path, Some(Units::Hu)).unwrap().slices[0].units, Units::Hu);
    let hu = dir.path().join("hu.nii");
    scan::write_nifti(&hu, &h, &[vec![vec![-500.0f32, 0.0, 40.0, 80.0, 300.0, 900.0]]], 2, 3).unwrap();
    let e = format!("{:#}", read_scan_as(&hu, Some(Units::Unit)).unwrap_err());
    assert!(e.contains("not [0, 1]"), "{e}");
    let png = dir.path().join("a.png");
    image::GrayImage::new(2, 2).save(&png).unwrap();
    let e = format!("{:#}", read_scan_as(&png, Some(Units::Hu)).unwrap_err());
    assert!(e.contains("--units hu") && e.contains("intensities"), "{e}");
}

#[test]
fn data_preprocessed_otherwise_is_refused_naming_both() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let lung_data = data_with(dir.path(), "lung.npz", lung(), 1);
    let med = Some(Preprocess { window: Some(Window::Mediastinum), ..Default::default() });
    let med_data = data_with(dir.path(), "med.npz", med, 2);
    // --extra windowed otherwise.
    let mut config = RunConfig {
        model: common::tiny_config(),
        train: TrainConfig { epochs: 1, batch_size: 4, val_fraction: 0.0, figure_images: 1, figure_samples: 1, ..Default::default() },
        ..Default::default()
    };
    config.train.extra = Some(med_data.display().to_string());
    let req = |config: RunConfig, out: &str| TrainRequest {
        data: lung_data.clone(),
        out: dir.path().join(out),
        config,
        device: Device::flex(),
        resume: false,
        quiet: true,
    };
    let e = format!("{:#}", train::train(req(config.clone(), "x")).unwrap_err());
    assert!(e.contains("lung.npz was made with HU window lung") && e.contains("med.npz with HU window mediastinum"), "{e}");
    config.train.allow_mismatch = true;
    train::train(req(config, "x")).unwrap();

    // eval and sample of a lung run on mediastinum data, and on data with no record.
    let run = dir.path().join("run");
    tiny_train(&lung_data, &run);
    let plain = data_with(dir.path(), "plain.npz", None, 3);
    for (data, what) in [(&med_data, "HU window mediastinum"), (&plain, "unknown")] {
        for cmd in ["sample", "eval"] {
            let out = dir.path().join(format!("{cmd}_out"));
            let out_arg = if cmd == "sample" { out.with_extension("npz") } else { out };
            let args = [
                "apunet",
                cmd,
                "--run",
                run.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--out",
                out_arg.to_str().unwrap(),
                "--n",
                "4",
                "--no-review",
            ];
            let args: Vec<&str> = args.into_iter().filter(|a| cmd == "eval" || *a != "--no-review").collect();
            let e = format!("{:#}", apunet::cli::run(parse_from(&args).unwrap()).unwrap_err());
            assert!(e.contains("was made with HU window lung") && e.contains(what), "{cmd}: {e}");
            let mut ok = args.clone();
            ok.push("--allow-mismatch");
            apunet::cli::run(parse_from(&ok).unwrap()).unwrap();
        }
    }
}

#[test]
fn a_resumed_run_keeps_its_data_and_directory() {
    let _guard = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let data = data_with(dir.path(), "d.npz", None, 1);
    let run = dir.path().join("run");
    tiny_train(&data, &run);
    let other = dir.path().join("other.npz");
    generate(&SynthConfig { count: 8, size: 32, seed: 5, ..Default::default() }).unwrap().save(&other).unwrap();
    let cli = |args: &[&str]| {
        let mut all = vec!["apunet", "train", "--resume", run.to_str().unwrap(), "--quiet"];
        all.extend_from_slice(args);
        apunet::cli::run(parse_from(all).unwrap())
    };
    let e = format!("{:#}", cli(&["--epochs", "2", "--data", other.to_str().unwrap()]).unwrap_err());
    assert!(e.contains("other.npz is another file") && e.contains("keeps its data"), "{e}");
    let e = format!("{:#}", cli(&["--epochs", "2", "--out", dir.path().join("elsewhere").to_str().unwrap()]).unwrap_err());
    assert!(e.contains("--out") && e.contains("elsewhere"), "{e}");
    let cfg = RunConfig::load(&run.join("config.toml")).unwrap();
    assert_eq!((cfg.data.height, cfg.data.width, cfg.train.epochs), (16, 16, 1), "a refused resume changes nothing");
    // The same file by another spelling is the same data.
    let same = dir.path().join(".").join("d.npz");
    cli(&["--epochs", "2", "--data", same.to_str().unwrap()]).unwrap();
    // A fixed setting named in the refusal; the list of what may change is the flags that exist.
    let e = format!("{:#}", cli(&["--batch-size", "2", "--epochs", "3"]).unwrap_err());
    assert!(e.contains("--epochs, --lr, --figure-every, --grad-clip-norm, --weight-decay") && !e.contains("train.max_bad_steps,"), "{e}");
}

#[test]
fn messages_blame_what_the_user_gave() {
    use apunet::model::ModelConfig;
    use apunet::model::config::HPUNET_FILTERS;
    // HPU-Net patches: the depth fits the patch as well as the crop.
    for patch in [32, 48, 64, 80, 96, 128] {
        let depth = ModelConfig::hpunet_depth(128, 128, patch);
        let m = ModelConfig { filters: HPUNET_FILTERS[..depth].to_vec(), ..ModelConfig::hpunet(128, false) };
        m.check_size(patch, patch).unwrap_or_else(|e| panic!("--patch {patch}: depth {depth}: {e:#}"));
        m.check_size(128, 128).unwrap();
    }
    // --filters on the attention HPU-Net moves its default transformer level and scales along.
    let args = [
        "apunet",
        "train",
        "--data",
        "d.npz",
        "--out",
        "o",
        "--model",
        "hpunet",
        "--attention",
        "--filters",
        "8,16,32",
        "--latent-scales",
        "2",
    ];
    let apunet::cli::Command::Train(a) = parse_from(args).unwrap().command else { panic!() };
    let mut cfg = RunConfig::default();
    apunet::cli::apply_overrides(&mut cfg, &a);
    cfg.validate().unwrap();
    assert_eq!(cfg.model.transformer_levels, apunet::model::TransformerLevels::Levels(vec![0]));

    // Each flag's help is there once, and says its default once.
    for sub in apunet::cli::command().get_subcommands() {
        let mut all: Vec<clap::Command> = vec![sub.clone()];
        all.extend(sub.get_subcommands().cloned());
        for c in &all {
            for arg in c.get_arguments().filter(|a| !a.is_positional() && a.get_id() != "help" && a.get_id() != "version") {
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    !help.trim().is_empty() || !arg.get_action().takes_values() && arg.get_long().is_none(),
                    "{} --{} has no description",
                    c.get_name(),
                    arg.get_id()
                );
                assert!(help.matches("[default:").count() <= 1, "{} --{}: {help}", c.get_name(), arg.get_id());
            }
        }
    }
    let mut cmd = apunet::cli::command();
    let gan_train = cmd.find_subcommand_mut("gan").unwrap().find_subcommand_mut("train").unwrap().render_help().to_string();
    assert_eq!(gan_train.matches("[default: 20]").count(), 1, "{gan_train}");
    assert!(!gan_train.contains("[default: 42]"), "train's seed default is not the GAN's: {gan_train}");
}

#[test]
fn a_mis_shaped_mean_map_is_named_not_the_samples() {
    let dir = tempfile::tempdir().unwrap();
    let images = ndarray::Array3::<f32>::zeros((2, 4, 4));
    let experts = ndarray::Array4::<u8>::zeros((2, 0, 4, 4));
    let samples = ndarray::Array4::<u8>::zeros((2, 3, 4, 4));
    let mean = ndarray::Array3::<f32>::zeros((2, 4, 5));
    let input = apunet::eval::review::ReviewInput {
        title: "t".into(),
        images: images.view(),
        experts: experts.view(),
        samples: samples.view(),
        mean: mean.view(),
        report: None,
        units: apunet::eval::review::Units::Intensity,
        volume: false,
        run: None,
    };
    let e = apunet::eval::review::write_page(&input, &dir.path().join("r.html")).unwrap_err().to_string();
    assert!(e.contains("mean map [2, 4, 5]") && !e.contains("samples"), "{e}");
}

/// The settings a resume may change live in one list (`train::config::RESUMABLE`): `--resume`'s
/// help and the README name each of its flags.
#[test]
fn the_resumable_list_is_the_one_help_and_readme_give() {
    let mut cmd = apunet::cli::command();
    let train = cmd.find_subcommand_mut("train").unwrap();
    let help = train.get_arguments().find(|a| a.get_id() == "resume").and_then(|a| a.get_help()).map(|h| h.to_string()).unwrap();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let resuming = readme.split("**Resuming.**").nth(1).expect("README has a Resuming paragraph");
    let resuming = resuming.split("\n\n").next().unwrap().replace('\n', " ");
    for (key, flag) in apunet::train::config::RESUMABLE {
        match flag {
            Some(f) => {
                assert!(help.contains(f), "--resume's help lacks {f}: {help}");
                assert!(resuming.contains(&format!("`{f}`")), "README's Resuming lacks {f}");
            }
            None => assert!(!help.contains(key), "{key} has no flag"),
        }
    }
}
