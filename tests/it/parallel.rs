//! Data-parallel training in one process (`--devices`), and what the MPI tests share: one
//! process with the same global batch is the reference every parallel run must reproduce.

use std::path::Path;
use std::process::{Command, Output};

use apunet::model::to_host;
use apunet::train::{self, read_metrics};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

pub const TINY: [&str; 12] = [
    "--filters",
    "4,8",
    "--transformer-levels",
    "none",
    "--latent-dim",
    "2",
    "--val-fraction",
    "0",
    "--seed",
    "3",
    "--figure-every",
    "1000",
];

pub fn apunet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_apunet"))
}

/// A new run's flags: `data`, `out`, `epochs` of global batches of 8, and the model `tiny`.
pub fn train_args<'a>(data: &'a str, out: &'a Path, epochs: &'a str, tiny: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--data", data, "--out", out.to_str().unwrap(), "--epochs", epochs, "--batch-size", "8"];
    v.extend(tiny);
    v
}

pub fn single(args: &[&str]) -> Command {
    let mut c = apunet();
    c.env("RAYON_NUM_THREADS", "1").arg("train").args(args).arg("--quiet");
    c
}

pub fn run_ok(mut c: Command, what: &str) -> Output {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: cannot start ({e}); for mpirun, is OpenMPI installed?"));
    assert!(out.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

pub fn synth(dir: &Path, count: usize) -> String {
    let data = dir.join(format!("d{count}.npz"));
    let n = count.to_string();
    run_ok(
        {
            let mut c = apunet();
            c.args(["synth", "--out", data.to_str().unwrap(), "--count", &n, "--size", "16", "--seed", "4"]);
            c
        },
        "synth",
    );
    data.to_str().unwrap().to_string()
}

struct AllParams(Vec<f32>);
impl ModuleVisitor for AllParams {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        self.0.extend(to_host(p.val()).unwrap());
    }
}

pub fn weights(run: &Path) -> Vec<f32> {
    let (_, model) = train::load_run(run, train::Which::Last, &Device::flex()).unwrap();
    let mut all = AllParams(Vec::new());
    model.visit(&mut all);
    all.0
}

pub fn losses(run: &Path) -> Vec<f64> {
    read_metrics(&run.join("metrics.csv")).unwrap().iter().map(|m| m.loss).collect()
}

fn assert_close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1.0), "{what}[{i}]: {x} vs {y}");
    }
}

pub fn assert_same_run(a: &Path, b: &Path) {
    assert_close(&losses(a), &losses(b), "loss per step");
    let (wa, wb) = (weights(a), weights(b));
    let wa: Vec<f64> = wa.iter().map(|&v| v as f64).collect();
    let wb: Vec<f64> = wb.iter().map(|&v| v as f64).collect();
    assert_close(&wa, &wb, "final weights");
}

#[test]
fn two_devices_in_one_process_reproduce_one_device() {
    let dir = tempfile::tempdir().unwrap();
    // 11 crops, batches of 8 and 3: the second splits 2 + 1 across the two threads.
    let data = synth(dir.path(), 11);
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    run_ok(single(&train_args(&data, &one, "3", &TINY)), "one device");
    let mut devices = train_args(&data, &two, "3", &TINY);
    devices.extend(["--devices", "cpu,cpu"]);
    run_ok(single(&devices), "--devices cpu,cpu");
    assert_eq!(losses(&two).len(), 3);
    assert_same_run(&one, &two);
    // One device is not a group; an unknown one is named.
    let out = single(&["--data", &data, "--out", dir.path().join("x").to_str().unwrap(), "--devices", "cpu"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("two or more devices"));
    let out = single(&["--data", &data, "--out", dir.path().join("y").to_str().unwrap(), "--devices", "cpu,tpu"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("tpu"));
}

#[test]
fn bench_times_training_with_several_ranks() {
    for ranks in ["1", "2"] {
        let out = apunet()
            .args(["bench", "--filters", "4,8", "--size", "16", "--steps", "1", "--warmup", "0", "--samples", "2", "--ranks", ranks])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
        assert_eq!(report["train_ranks"].to_string(), ranks);
        assert!(report["train_images_per_s"].as_f64().unwrap() > 0.0);
        assert!(report["sampled_masks_per_s"].as_f64().unwrap() > 0.0);
    }
}
