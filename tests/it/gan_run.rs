//! `apunet gan train`'s run directory: a resume keeps the run's settings and data (refusing
//! changes by name), says when there is nothing to train, and continues bit for bit after
//! SIGKILLs at any moment.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use apunet::gan::train::GanState;

const EPOCHS: usize = 10;

fn bin(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_apunet"));
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn run(args: &[&str]) -> Output {
    bin(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn synth(dir: &Path, name: &str, (count, size): (usize, usize), seed: u64) -> PathBuf {
    let p = dir.join(name);
    ok(&["synth", "--out", p.to_str().unwrap(), "--count", &count.to_string(), "--size", &size.to_string(), "--seed", &seed.to_string()]);
    p
}

fn state(run: &Path) -> GanState {
    serde_json::from_str(&std::fs::read_to_string(run.join("checkpoints/state.json")).unwrap()).unwrap()
}

#[test]
fn gan_resume_refuses_changed_settings_and_says_when_nothing_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let d24 = synth(dir.path(), "d24.npz", (3, 24), 1);
    let d32 = synth(dir.path(), "d32.npz", (3, 32), 2);
    let g = dir.path().join("g");
    let g = g.to_str().unwrap();
    let tiny = ["--base", "4", "--blocks", "1", "--quiet"];
    let with = |head: &[&str]| -> Vec<String> { head.iter().chain(&tiny).map(|s| s.to_string()).collect() };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let first = with(&["gan", "train", "--data", d24.to_str().unwrap(), "--out", g, "--epochs", "3"]);
    ok(&args(&first));
    let toml_before = std::fs::read_to_string(Path::new(g).join("gan.toml")).unwrap();

    let e = err(&["gan", "train", "--resume", "--out", g, "--base", "16", "--blocks", "3", "--seed", "7"]);
    assert!(e.contains("net.base 4 -> 16") && e.contains("net.residual_blocks 1 -> 3") && e.contains("seed 0 -> 7"), "{e}");
    let e = err(&["gan", "train", "--resume", "--out", g, "--data", d32.to_str().unwrap(), "--epochs", "4"]);
    assert!(e.contains("d32.npz") && e.contains("keeps its data"), "{e}");
    let e =
        err(&["gan", "train", "--resume", "--out", g, "--mode", "unpaired", "--a", d24.to_str().unwrap(), "--b", d24.to_str().unwrap()]);
    assert!(e.contains("mode \"mask2ct\" -> \"unpaired\""), "{e}");
    let e = err(&["gan", "train", "--resume", "--out", g, "--epochs", "2"]);
    assert!(e.contains("--epochs 2 is below the 3 epochs"), "{e}");
    // No --epochs: the run's own 3, already reached.
    let out = run(&["gan", "train", "--resume", "--out", g]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to train"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("XDG_RUNTIME_DIR"),
        "a CPU resume starts no GPU: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state(Path::new(g)).epoch, 3);
    assert_eq!(std::fs::read_to_string(Path::new(g).join("gan.toml")).unwrap(), toml_before, "refusals change nothing");
    // A new run over an existing one is refused; --epochs extends a resumed one.
    let e = err(&args(&first));
    assert!(e.contains("already holds a GAN run"), "{e}");
    let said = ok(&["gan", "train", "--resume", "--out", g, "--epochs", "4", "--quiet"]);
    assert!(said.contains("trained 1 epoch(s), now at epoch 4"), "{said}");

    // Killed before its first state.json: a clear word, not "No such file".
    let early = dir.path().join("early");
    std::fs::create_dir_all(&early).unwrap();
    std::fs::copy(Path::new(g).join("gan.toml"), early.join("gan.toml")).unwrap();
    let e = err(&["gan", "train", "--resume", "--out", early.to_str().unwrap()]);
    assert!(e.contains("stopped before it started") && e.contains("without --resume"), "{e}");
    let e = err(&["gan", "train", "--resume", "--out", dir.path().join("none").to_str().unwrap()]);
    assert!(e.contains("holds no GAN run"), "{e}");

    // gan generate: data windowed otherwise than the GAN's are refused; its output carries the
    // GAN's record (unknown here), not the input's.
    let mut lung = apunet::data::Dataset::load(&d24).unwrap();
    lung.preprocess =
        Some(apunet::data::preprocess::Preprocess { window: Some(apunet::data::intensity::Window::Lung), ..Default::default() });
    let lung_path = dir.path().join("lung.npz");
    lung.save(&lung_path).unwrap();
    let gen_out = dir.path().join("gen.npz");
    let generate_args =
        ["gan", "generate", "--gan", g, "--data", lung_path.to_str().unwrap(), "--count", "2", "--out", gen_out.to_str().unwrap()];
    let e = err(&generate_args);
    assert!(e.contains("unknown") && e.contains("HU window lung") && e.contains("--allow-mismatch"), "{e}");
    let mut knowingly = generate_args.to_vec();
    knowingly.push("--allow-mismatch");
    ok(&knowingly);
    assert_eq!(apunet::data::Dataset::load(&gen_out).unwrap().preprocess, None);
}

/// SIGKILLs at random moments, 20 of them: each resume continues from a whole checkpoint set,
/// and every epoch's losses, then the final networks, equal an uninterrupted run's exactly.
#[test]
fn gan_train_survives_20_kills_and_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    // Pools of 4 fakes, full after 2 epochs of 3 crops: from then on the discriminators see old
    // fakes half the time, so a resume that lost the pools would differ.
    let data = synth(dir.path(), "d.npz", (3, 24), 3);
    let epochs = EPOCHS.to_string();
    let new = |out: &Path| -> Vec<String> {
        [
            "gan",
            "train",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            &epochs,
            "--base",
            "4",
            "--blocks",
            "1",
            "--pool-size",
            "4",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let reference = dir.path().join("reference");
    let started = Instant::now();
    ok(&new(&reference).iter().map(String::as_str).collect::<Vec<_>>());
    let whole = state(&reference);
    let killed = dir.path().join("killed");
    let resume: Vec<String> =
        ["gan", "train", "--resume", "--out", killed.to_str().unwrap(), "--quiet"].iter().map(|s| s.to_string()).collect();
    let span = started.elapsed().max(Duration::from_millis(300));
    let check = |run: &Path| -> usize {
        let s = state(run);
        assert_eq!(s.cycle[..], whole.cycle[..s.epoch], "cycle losses up to epoch {}", s.epoch);
        assert_eq!(s.generator[..], whole.generator[..s.epoch]);
        assert_eq!(s.discriminator[..], whole.discriminator[..s.epoch]);
        s.epoch
    };
    let spawn = |resume_it: bool| {
        let args = if resume_it { resume.clone() } else { new(&killed) };
        bin(&args.iter().map(String::as_str).collect::<Vec<_>>()).stdout(Stdio::null()).spawn().unwrap()
    };
    let done = crate::common::kill_repeatedly(&killed, (20, EPOCHS, 28), span, spawn, || check(&killed));
    let (kills, mid_run) = (done.kills, done.mid_run);
    let args = if killed.join("checkpoints/state.json").exists() { resume.clone() } else { new(&killed) };
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(check(&killed), EPOCHS);
    // The networks themselves: both generators give the same bits on the same input.
    let dev = burn::prelude::Device::flex();
    let (_, a) = apunet::gan::train::load_generator(&reference, &dev).unwrap();
    let (_, b) = apunet::gan::train::load_generator(&killed, &dev).unwrap();
    let x: Vec<f32> = (0..24 * 24).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    let t = |v: &[f32]| burn::prelude::Tensor::<4>::from_data(burn::prelude::TensorData::new(v.to_vec(), [1, 1, 24, 24]), &dev);
    let (ya, yb) = (apunet::model::to_host(a.forward(t(&x))).unwrap(), apunet::model::to_host(b.forward(t(&x))).unwrap());
    assert_eq!(ya, yb, "the resumed generator differs from the uninterrupted one");
    let litter: Vec<_> = std::fs::read_dir(killed.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| apunet::fsio::is_temp_name(n) || n == "staged")
        .collect();
    assert!(litter.is_empty(), "left behind: {litter:?}");
    assert!(mid_run >= 5, "only {mid_run} kills landed mid-run");
    println!("killed gan train {kills} times ({mid_run} after epochs were saved); every epoch matched the uninterrupted run");
}
