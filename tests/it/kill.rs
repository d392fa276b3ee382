//! `apunet train` killed (SIGKILL) at random moments, 20 times: every resume continues from a
//! readable checkpoint, and the run ends with every epoch recorded once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use apunet::train::{self, RunConfig, read_metrics};

const EPOCHS: usize = 12;

fn train_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_apunet"));
    c.arg("train").args(args).args(["--quiet"]).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// What a killed run left must load: config, state, metrics up to the state's epoch, weights.
fn check_run_dir(run: &std::path::Path) -> usize {
    let cfg = RunConfig::load(&run.join("config.toml")).expect("config.toml readable");
    let state = train::checkpoint::load_state(&run.join("checkpoints/state.json")).expect("state.json readable");
    let rows = read_metrics(&run.join("metrics.csv")).unwrap_or_default();
    assert!(rows.len() >= state.epoch, "metrics.csv has {} rows for epoch {}", rows.len(), state.epoch);
    if state.epoch > 0 {
        let dev = burn::prelude::Device::flex();
        // A staged epoch finishes on the next start; what is in place must load now.
        if !run.join("checkpoints/staged/state.json").exists() {
            train::load_run(run, train::Which::Last, &dev).expect("last checkpoint readable");
            train::load_run(run, train::Which::Best, &dev).expect("best checkpoint readable");
        }
    }
    assert_eq!(cfg.train.epochs, EPOCHS);
    state.epoch
}

#[test]
fn train_survives_20_kills_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.npz");
    let ok = Command::new(env!("CARGO_BIN_EXE_apunet"))
        .args(["synth", "--out", data.to_str().unwrap(), "--count", "24", "--size", "16", "--seed", "4"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let run = dir.path().join("run");
    let epochs = EPOCHS.to_string();
    let fresh = [
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        &epochs,
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
    ];
    let resume = ["--resume", run.to_str().unwrap()];
    // How long one uninterrupted epoch takes here, to spread the kills over the run.
    let started = Instant::now();
    let mut first = train_cmd(&fresh).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    first.kill().unwrap();
    first.wait().unwrap();
    let span = started.elapsed().max(Duration::from_millis(500));
    let spawn = |resume_it: bool| train_cmd(if resume_it { &resume } else { &fresh }).spawn().unwrap();
    let done = crate::common::kill_repeatedly(&run, (19, EPOCHS, 20), span, spawn, || check_run_dir(&run));
    let (kills, mid_run) = (done.kills + 1, done.mid_run);
    let out = train_cmd(if run.join("checkpoints/state.json").exists() { &resume } else { &fresh }).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(check_run_dir(&run), EPOCHS);
    let epochs: Vec<usize> = read_metrics(&run.join("metrics.csv")).unwrap().iter().map(|m| m.epoch).collect();
    assert_eq!(epochs, (1..=EPOCHS).collect::<Vec<_>>());
    let litter: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| apunet::fsio::is_temp_name(&n.to_string_lossy()))
        .collect();
    assert!(litter.is_empty(), "temp files left behind: {litter:?}");
    assert!(mid_run >= 5, "only {mid_run} kills landed mid-run");
    println!("killed train {kills} times ({mid_run} after epochs were saved); the run finished all {EPOCHS} epochs");
}
