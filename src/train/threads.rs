//! The in-process [`Collective`] of `--devices`: one thread per device in one process.
//!
//! Exchanges go through host memory: each rank puts its values in its slot, every rank sums the
//! slots in rank order (so every rank gets the same bits), and a gate with a deadline separates
//! the rounds. A rank that fails poisons the gate so the others stop at once.

use std::any::Any;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::distributed::Collective;

struct Gate {
    state: Mutex<GateState>,
    turn: Condvar,
}

struct GateState {
    arrived: usize,
    generation: u64,
    failed: Option<String>,
}

struct Shared {
    size: usize,
    timeout: Duration,
    gate: Gate,
    slots: Mutex<Vec<Option<Box<dyn Any + Send>>>>,
}

/// One rank of a group of threads.
pub struct ThreadRank {
    rank: usize,
    shared: Arc<Shared>,
}

/// `size` ranks that wait at most `timeout` for each other.
pub fn group(size: usize, timeout: Duration) -> Vec<ThreadRank> {
    let shared = Arc::new(Shared {
        size,
        timeout,
        gate: Gate { state: Mutex::new(GateState { arrived: 0, generation: 0, failed: None }), turn: Condvar::new() },
        slots: Mutex::new((0..size).map(|_| None).collect()),
    });
    (0..size).map(|rank| ThreadRank { rank, shared: shared.clone() }).collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ThreadRank {
    /// Marks the group failed: every rank waiting, or about to wait, returns an error.
    pub fn fail(&self, why: &str) {
        let mut g = lock(&self.shared.gate.state);
        g.failed.get_or_insert_with(|| format!("rank {} failed: {why}", self.rank));
        self.shared.gate.turn.notify_all();
    }

    /// Waits until every rank has arrived.
    fn meet(&self, what: &str) -> Result<()> {
        let sh = &self.shared;
        let mut g = lock(&sh.gate.state);
        if let Some(f) = &g.failed {
            bail!("{f}");
        }
        let generation = g.generation;
        g.arrived += 1;
        if g.arrived == sh.size {
            g.arrived = 0;
            g.generation += 1;
            sh.gate.turn.notify_all();
            return Ok(());
        }
        let start = Instant::now();
        loop {
            let left = sh.timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                let why = format!(
                    "rank {} waited {} s in {what} without hearing from every rank: a device hangs",
                    self.rank,
                    sh.timeout.as_secs()
                );
                g.failed.get_or_insert(why.clone());
                sh.gate.turn.notify_all();
                bail!("{why}");
            }
            g = sh.gate.turn.wait_timeout(g, left).unwrap_or_else(|e| e.into_inner()).0;
            if g.generation != generation {
                return Ok(());
            }
            if let Some(f) = &g.failed {
                bail!("{f}");
            }
        }
    }

    /// Every rank's `mine`, in rank order.
    fn all_gather<T: Clone + Send + 'static>(&self, mine: T, what: &str) -> Result<Vec<T>> {
        self.meet(what)?;
        lock(&self.shared.slots)[self.rank] = Some(Box::new(mine));
        self.meet(what)?;
        let all =
            lock(&self.shared.slots).iter().map(|s| s.as_ref().and_then(|b| b.downcast_ref::<T>()).cloned()).collect::<Option<Vec<T>>>();
        self.meet(what)?;
        all.ok_or_else(|| anyhow::anyhow!("{what}: a rank sent something else"))
    }

    fn sum<T: Copy + Send + Default + std::ops::Add<Output = T> + 'static>(&self, buf: &mut [T], what: &str) -> Result<()> {
        let all = self.all_gather(buf.to_vec(), what)?;
        for (k, v) in buf.iter_mut().enumerate() {
            *v = all.iter().fold(T::default(), |acc, r| acc + r[k]);
        }
        Ok(())
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn local_rank(&self) -> usize {
        self.rank
    }
    fn sum_f32(&self, buf: &mut [f32], what: &str) -> Result<()> {
        self.sum(buf, what)
    }
    fn sum_f64(&self, buf: &mut [f64], what: &str) -> Result<()> {
        self.sum(buf, what)
    }
    fn broadcast(&self, bytes: &mut Vec<u8>, what: &str) -> Result<()> {
        let all = self.all_gather(std::mem::take(bytes), what)?;
        *bytes = all.into_iter().next().unwrap_or_default();
        Ok(())
    }
    fn abort(&self, message: &str) -> ! {
        eprintln!("error: {message}");
        std::process::exit(1)
    }
}

/// Runs `f` as one rank per device, each on its own thread, and returns the first rank's own
/// error (not another rank's report of it), if any rank failed.
pub fn run_ranks<F>(devices: Vec<burn::prelude::Device>, timeout: Duration, f: F) -> anyhow::Result<()>
where
    F: Fn(&ThreadRank, burn::prelude::Device) -> anyhow::Result<()> + Sync,
{
    let ranks = group(devices.len(), timeout);
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranks
            .iter()
            .zip(devices)
            .map(|(rank, device)| {
                let f = &f;
                s.spawn(move || {
                    let res = f(rank, device);
                    if let Err(e) = &res {
                        rank.fail(&format!("{e:#}"));
                    }
                    res
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a device's thread panicked")))).collect()
    });
    let mut errors: Vec<anyhow::Error> = results.into_iter().filter_map(Result::err).collect();
    match errors.iter().position(|e| !format!("{e:#}").contains(" failed: ")) {
        Some(i) => Err(errors.swap_remove(i)),
        None => errors.into_iter().next().map_or(Ok(()), Err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_sum_in_rank_order_and_broadcast_rank_0() {
        let ranks = group(3, Duration::from_secs(10));
        let out: Vec<(Vec<f64>, Vec<u8>)> = std::thread::scope(|s| {
            let handles: Vec<_> = ranks
                .iter()
                .map(|r| {
                    s.spawn(move || {
                        let mut v = vec![r.rank() as f64, 1.0];
                        r.sum_f64(&mut v, "t").unwrap();
                        let mut b = vec![r.rank() as u8; r.rank() + 1];
                        r.broadcast(&mut b, "t").unwrap();
                        (v, b)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (v, b) in out {
            assert_eq!(v, vec![3.0, 3.0]);
            assert_eq!(b, vec![0u8]);
        }
    }

    #[test]
    fn a_rank_that_never_comes_times_out_and_a_failed_rank_stops_the_others() {
        let ranks = group(2, Duration::from_millis(200));
        let err = ranks[0].sum_f64(&mut [1.0], "the test").unwrap_err();
        assert!(format!("{err}").contains("without hearing from every rank"), "{err}");
        let ranks = group(2, Duration::from_secs(30));
        ranks[1].fail("boom");
        let start = Instant::now();
        let err = ranks[0].sum_f64(&mut [1.0], "t").unwrap_err();
        assert!(format!("{err}").contains("boom") && start.elapsed() < Duration::from_secs(5));
    }
}
