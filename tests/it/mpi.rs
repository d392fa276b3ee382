//! `apunet train --distributed mpi` under `mpirun -np 2` on the CPU: the ranks reproduce one
//! process with the same global batch (losses per step and final weights, to 1e-5), resume
//! after a kill, and a rank that dies or hangs ends the job with a message, never a silent hang.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apunet::train::{self, read_metrics};

use super::parallel::{TINY, assert_same_run, losses, run_ok, single, synth, train_args};

/// `mpirun -np 2 apunet train ARGS --distributed mpi`, one thread per rank.
fn mpirun(args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", "2", "--oversubscribe", "--allow-run-as-root"])
        // Containers often forbid the cross-memory attach OpenMPI tries first.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("RAYON_NUM_THREADS", "1")
        .arg(env!("CARGO_BIN_EXE_apunet"))
        .arg("train")
        .args(args)
        .args(["--distributed", "mpi", "--quiet"]);
    c
}

#[test]
fn two_ranks_reproduce_one_process_with_the_same_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    // 8 crops, batch 8: one step per epoch, so metrics.csv holds the loss of each step.
    let data = synth(dir.path(), 8);
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    run_ok(single(&train_args(&data, &one, "5", &TINY)), "one process");
    let out = run_ok(mpirun(&train_args(&data, &two, "5", &TINY)), "mpirun -np 2");
    assert_eq!(losses(&two).len(), 5);
    assert_same_run(&one, &two);
    // --quiet is quiet on every rank.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("all-reduce") && !said.contains("data-parallel over"), "--quiet printed:\n{said}");
    // A bad flag is reported once, not once per rank.
    let out = mpirun(&["--bogus-flag"]).output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(said.matches("unexpected argument").count(), 1, "{said}");
}

#[test]
fn uneven_shards_and_a_resume_under_mpi_match_one_process() {
    let dir = tempfile::tempdir().unwrap();
    // 11 crops in batches of 8 and 3: the second splits 2 + 1 across the ranks.
    let data = synth(dir.path(), 11);
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    // The default transformer level this time: every config must reach rank 1 intact.
    let tiny: Vec<&str> = TINY.iter().copied().filter(|s| !s.starts_with("--transformer") && *s != "none").collect();
    run_ok(single(&train_args(&data, &one, "4", &tiny)), "one process");
    // Two epochs under MPI, then a resume to four: rank 0 hands its checkpoint and Adam's
    // state to rank 1.
    run_ok(mpirun(&train_args(&data, &two, "2", &tiny)), "mpirun, 2 epochs");
    run_ok(mpirun(&["--resume", two.to_str().unwrap(), "--epochs", "4"]), "mpirun --resume");
    assert_same_run(&one, &two);
}

/// The PIDs of the two ranks of the job writing `run`.
fn rank_pids(run: &Path) -> Vec<u32> {
    // Anchored at the binary: mpirun's own command line holds the same words.
    let pattern = format!("^{} train .*--out {}", env!("CARGO_BIN_EXE_apunet"), run.display());
    let out = Command::new("pgrep").args(["-f", &pattern]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Waits (at most `limit`) for the job to end; kills it and fails if it does not.
fn ends_within(mut job: Child, limit: Duration, what: &str) -> (bool, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = job.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            job.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status.success(), err);
        }
        if start.elapsed() > limit {
            let _ = job.kill();
            panic!("{what}: the job still runs after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_long_job(dir: &Path, run: &Path, timeout: &str) -> Child {
    let data = synth(dir, 24);
    let mut args: Vec<&str> =
        vec!["--data", &data, "--out", run.to_str().unwrap(), "--epochs", "400", "--batch-size", "4", "--dist-timeout", timeout];
    args.extend(TINY);
    let job = mpirun(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("mpirun");
    // Until a first epoch is committed and both ranks run.
    let start = Instant::now();
    while !(run.join("checkpoints/last.bpk").exists() && rank_pids(run).len() == 2) {
        assert!(start.elapsed() < Duration::from_secs(120), "the job did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    job
}

/// Sends `signal` to the rank started last; returns its PID.
fn signal_a_rank(run: &Path, signal: &str) -> u32 {
    let pid = *rank_pids(run).iter().max().unwrap();
    Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    pid
}

#[test]
fn a_killed_rank_ends_the_job_with_an_error_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let job = start_long_job(dir.path(), &run, "60");
    // Killed outright.
    signal_a_rank(&run, "-9");
    let (ok, err) = ends_within(job, Duration::from_secs(60), "after a rank was killed");
    assert!(!ok, "a job that lost a rank exited 0:\n{err}");
    assert!(!err.trim().is_empty(), "no message after a rank was killed");
    let done = train::checkpoint::load_state(&run.join("checkpoints/state.json")).unwrap().epoch;
    assert!((1..400).contains(&done), "killed after epoch {done}");
    let target = (done + 2).to_string();
    run_ok(mpirun(&["--resume", run.to_str().unwrap(), "--epochs", &target]), "mpirun --resume after a kill");
    let epochs: Vec<usize> = read_metrics(&run.join("metrics.csv")).unwrap().iter().map(|m| m.epoch).collect();
    assert_eq!(epochs, (1..=done + 2).collect::<Vec<_>>());
}

#[test]
fn a_hung_rank_ends_the_job_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let job = start_long_job(dir.path(), &run, "3");
    // SIGSTOP: the rank neither works nor dies.
    let stopped = signal_a_rank(&run, "-STOP");
    let (ok, err) = ends_within(job, Duration::from_secs(60), "after a rank hung");
    Command::new("kill").args(["-9", &stopped.to_string()]).status().ok();
    assert!(!ok, "a job with a hung rank exited 0:\n{err}");
    assert!(err.contains("a rank has died or hangs"), "stderr:\n{err}");
}
