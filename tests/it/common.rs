#![allow(dead_code)]

use std::path::PathBuf;

use apunet::model::{ModelConfig, NormKind};

/// `../shared/data`, or APUNET_SHARED_DATA.
pub fn shared_data() -> PathBuf {
    std::env::var_os("APUNET_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
}

/// A model small enough for tests: two levels, a transformer at the one decoder level.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        filters: vec![8, 16],
        convs_per_block: 2,
        norm: NormKind::Group,
        transformer_heads: 2,
        latent_dim: 3,
        ..Default::default()
    }
}

/// burn's RNG is per device and process-wide: tests that seed it or build models hold this
/// lock so parallel tests cannot interleave their draws.
pub fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`kill_repeatedly`] did.
pub struct Kills {
    pub kills: usize,
    /// Kills that landed after some epochs were saved: those resumed mid-run.
    pub mid_run: usize,
}

/// Starts `spawn(resume)` again and again (`resume` once `run`'s state.json exists) and
/// SIGKILLs each at a random moment, until `wanted` kills landed. After each, `saved()` reads
/// the epoch the run directory holds (and checks it); a run that reaches `epochs` is removed
/// to keep killing. The waits adapt: shorter after a run that ended before its kill (a
/// release build runs all epochs in under a second), longer after a kill before any epoch was
/// saved (start-up is slow while other tests run), so that kills also land mid-run.
pub fn kill_repeatedly(
    run: &std::path::Path,
    (wanted, epochs, seed): (usize, usize, u64),
    first_span: std::time::Duration,
    mut spawn: impl FnMut(bool) -> std::process::Child,
    mut saved: impl FnMut() -> usize,
) -> Kills {
    use rand::{Rng, SeedableRng};
    use std::time::{Duration, Instant};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut kills, mut mid_run, mut last_epoch, mut span) = (0, 0, 0, first_span);
    while kills < wanted {
        let mut child = spawn(run.join("checkpoints/state.json").exists());
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..span.as_millis() as u64 * 2)));
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            child.kill().unwrap();
            kills += 1;
            mid_run += usize::from(last_epoch > 0);
        }
        let out = child.wait_with_output().unwrap();
        if finished {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let before = last_epoch;
        if run.join("checkpoints/state.json").exists() {
            let epoch = saved();
            assert!(epoch >= last_epoch, "a resume went back from epoch {last_epoch} to {epoch}");
            last_epoch = epoch;
        }
        if finished {
            span = span * 2 / 3;
        } else {
            if last_epoch == before {
                span = span * 3 / 2;
            }
            span = span.max(t0.elapsed() / 2);
        }
        if last_epoch == epochs {
            std::fs::remove_dir_all(run).unwrap();
            last_epoch = 0;
        }
    }
    Kills { kills, mid_run }
}
