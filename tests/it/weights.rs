//! Weights to and from PyTorch (`apunet export`, `apunet import-weights`): PyTorch's names and
//! layouts in the file, a round trip that samples the same bits, and refusals. (That PyTorch
//! itself computes the same masks from the file is tests/python/test_torch.py, where torch is.)

use std::collections::BTreeMap;
use std::path::Path;

use crate::common;

use apunet::inference::{Sampling, sample_images};
use apunet::jobs::weights::{CONFIG_KEY, export, import_weights, metadata};
use apunet::model::{ModelConfig, NormKind, Segmenter, TransformerLevels};
use apunet::train::checkpoint::{RunPaths, save_segmenter};
use apunet::train::{RunConfig, Which, load_run};
use burn::prelude::*;
use ndarray::Array4;

/// A run directory holding a freshly initialised model of `model`'s settings.
fn make_run(dir: &Path, model: ModelConfig) -> RunConfig {
    let _guard = common::rng_lock();
    let mut cfg = RunConfig { model, ..Default::default() };
    (cfg.data.height, cfg.data.width) = (32, 32);
    let paths = RunPaths::new(dir);
    save_segmenter(&Segmenter::new(&cfg.model, &Device::flex()), &paths.last_model()).unwrap();
    cfg.save(&paths.config()).unwrap();
    cfg
}

/// Tensor names and shapes in a safetensors file's header.
fn header(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let json: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let entries = json.as_object().unwrap().iter().filter(|(k, _)| *k != "__metadata__");
    entries.map(|(k, v)| (k.clone(), serde_json::from_value(v["shape"].clone()).unwrap())).collect()
}

fn samples_of(run: &Path) -> Vec<u8> {
    let device = Device::flex();
    let (_, model) = load_run(run, Which::Best, &device).unwrap();
    let images = Array4::from_shape_fn((2, 1, 32, 32), |(i, _, y, x)| ((i * 7 + y * 3 + x) % 11) as f32 / 10.0);
    let s = sample_images(&model, &images, &Sampling { n: 3, seed: 4, batch: 2, mean_scales: vec![] }, &device, |_| {}).unwrap();
    s.masks.iter().copied().chain(s.mean.iter().flat_map(|v| v.to_le_bytes())).collect()
}

#[test]
fn export_writes_pytorch_names_and_import_gives_back_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, file, back) = (tmp.path().join("run"), tmp.path().join("m.safetensors"), tmp.path().join("back"));
    let model = ModelConfig { transformer_levels: TransformerLevels::All, filters: vec![8, 16, 16], ..common::tiny_config() };
    let cfg = make_run(&run, model);
    let done = export(&run, Which::Best, &file).unwrap();
    let names = header(&file);
    assert_eq!(done.tensors, names.len());
    // A norm's scale under PyTorch's name, without the Option's field; linear weights [out, in].
    assert_eq!(names["unet.encoder.blocks.0.norms.1.weight"], vec![8]);
    assert_eq!(names["unet.decoder.0.transformer.fc1.weight"], vec![32, 16]);
    assert_eq!(names["unet.decoder.0.gate.w_x.weight"], vec![8, 16, 2, 2]);
    assert!(!names.keys().any(|k| k.contains("gamma") || k.contains(".group.") || k.contains("PUNet")), "{names:?}");
    let meta = metadata(&file).unwrap();
    assert_eq!(toml::from_str::<RunConfig>(&meta[CONFIG_KEY]).unwrap(), cfg);

    let imported = import_weights(&file, None, &back).unwrap();
    assert_eq!(imported, cfg);
    assert_eq!(samples_of(&back), samples_of(&run));
    // Exported again, the same tensors.
    let again = tmp.path().join("again.safetensors");
    export(&back, Which::Last, &again).unwrap();
    assert_eq!(header(&again), names);
}

#[test]
fn batch_norm_and_the_hpu_net_round_trip_too() {
    let tmp = tempfile::tempdir().unwrap();
    let hpu = ModelConfig { filters: vec![4, 8, 8, 8], latent_scales: 2, res_blocks: 1, ..ModelConfig::hpunet(16, false) };
    let batch = ModelConfig { norm: NormKind::Batch, ..common::tiny_config() };
    for (name, model) in [("batch", batch), ("hpu", hpu)] {
        let (run, file, back) =
            (tmp.path().join(name), tmp.path().join(format!("{name}.safetensors")), tmp.path().join(format!("{name}-back")));
        make_run(&run, model);
        export(&run, Which::Best, &file).unwrap();
        if name == "batch" {
            assert!(header(&file).contains_key("prior.encoder.blocks.1.norms.0.running_var"));
        }
        import_weights(&file, None, &back).unwrap();
        assert_eq!(samples_of(&back), samples_of(&run), "{name}");
    }
}

#[test]
fn import_weights_refuses_what_it_cannot_use() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    make_run(&run, common::tiny_config());
    let file = tmp.path().join("m.safetensors");
    export(&run, Which::Best, &file).unwrap();
    let err = |r: anyhow::Result<RunConfig>| format!("{:#}", r.unwrap_err());

    // Into a directory that holds a run already.
    assert!(err(import_weights(&file, None, &run)).contains("already holds a run"));
    // Not a safetensors file.
    let npz = tmp.path().join("x.npz");
    std::fs::write(&npz, b"PK\x03\x04 not safetensors").unwrap();
    assert!(err(import_weights(&npz, None, &tmp.path().join("a"))).contains("is not a safetensors file"));
    // A config for another network: every misfit named, no run left behind.
    let other = tmp.path().join("other.toml");
    let mut cfg = RunConfig { model: ModelConfig { filters: vec![8, 32], ..common::tiny_config() }, ..Default::default() };
    (cfg.data.height, cfg.data.width) = (32, 32);
    cfg.save(&other).unwrap();
    let e = err(import_weights(&file, Some(&other), &tmp.path().join("b")));
    assert!(e.contains("does not fit") && e.contains("wrong shape"), "{e}");
    assert!(!tmp.path().join("b/config.toml").exists());
    // A config without the crop size predict tiles by.
    let sizeless = tmp.path().join("sizeless.toml");
    RunConfig { model: common::tiny_config(), ..Default::default() }.save(&sizeless).unwrap();
    assert!(err(import_weights(&file, Some(&sizeless), &tmp.path().join("c"))).contains("[data] height and width"));
}

/// `train --resume` on a run that import-weights made starts from the imported weights: had it
/// drawn fresh ones, its epoch would repeat, bit for bit, the first epoch of the run the weights
/// came from (same seed, data and settings).
#[test]
fn training_an_imported_run_starts_from_its_weights() {
    use apunet::data::synth::{SynthConfig, generate_to};
    use apunet::train::Unwatched;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d.npz");
    generate_to(&SynthConfig { count: 8, size: 32, annotators: 2, seed: 1, ..Default::default() }, &data).unwrap();
    let (source, file, imported) = (tmp.path().join("src"), tmp.path().join("w.safetensors"), tmp.path().join("imp"));
    let train = |args: &[&str]| {
        let _guard = common::rng_lock();
        let base = ["apunet", "train", "--data", data.to_str().unwrap(), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0"];
        let cli = apunet::cli::parse_from(base.iter().chain(&["--filters", "8,16", "--latent-dim", "3", "--quiet"]).chain(args)).unwrap();
        let apunet::cli::Command::Train(a) = cli.command else { unreachable!() };
        apunet::cli::train::train_in_process(&a, &Unwatched).unwrap();
    };
    train(&["--out", source.to_str().unwrap(), "--seed", "9"]);
    export(&source, Which::Last, &file).unwrap();
    import_weights(&file, None, &imported).unwrap();
    let one_epoch = samples_of(&source);
    assert_eq!(samples_of(&imported), one_epoch);
    train(&["--resume", imported.to_str().unwrap()]);
    assert_ne!(samples_of(&imported), one_epoch, "the imported run trained from fresh weights, not its own");
}
