//! The MPI [`Collective`]: one process per device, launched by `mpirun` or SLURM's `srun`.
//!
//! Every exchange is non-blocking and polled against a deadline, so a rank that died or hangs
//! ends the whole job with a message (MPI_Abort) instead of leaving the others waiting forever.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::request::{Request, Scope, scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::distributed::Collective;

pub struct Mpi {
    // Finalises MPI when dropped, after every exchange.
    _universe: Universe,
    world: SimpleCommunicator,
    local_rank: usize,
    timeout: Duration,
}

impl Mpi {
    /// Joins the job `mpirun`/`srun` started. `timeout` bounds every wait for the other ranks,
    /// rank 0's validation and checkpoint writing between epochs included.
    pub fn init(timeout: Duration) -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| anyhow!("MPI was already initialised in this process"))?;
        let world = universe.world();
        let local_rank = world.split_shared(world.rank()).rank() as usize;
        Ok(Self { _universe: universe, world, local_rank, timeout })
    }

    /// Polls `req` until it completes; past the deadline, ends the job. MPI progresses a
    /// non-blocking collective only inside MPI_Test, so the first stretch polls without
    /// sleeping (a sleep per round would dominate a multi-megabyte all-reduce); a long wait,
    /// such as rank 0's validation, then polls every millisecond.
    fn finish<'a, D: ?Sized, S: Scope<'a>>(&self, mut req: Request<'a, D, S>, what: &str) {
        let start = Instant::now();
        loop {
            match req.test() {
                Ok(_) => return,
                Err(pending) => req = pending,
            }
            let waited = start.elapsed();
            if waited > self.timeout {
                self.abort(&format!(
                    "rank {} waited {} s in {what} without hearing from every rank: a rank has died or \
                     hangs. Ending the job (raise --dist-timeout if validation or a checkpoint \
                     legitimately takes longer)",
                    self.rank(),
                    self.timeout.as_secs()
                ));
            }
            if waited < Duration::from_millis(200) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn sum_f32(&self, buf: &mut [f32], what: &str) -> Result<()> {
        let send = buf.to_vec();
        scope(|s| self.finish(self.world.immediate_all_reduce_into(s, &send[..], buf, SystemOperation::sum()), what));
        Ok(())
    }

    fn sum_f64(&self, buf: &mut [f64], what: &str) -> Result<()> {
        let send = buf.to_vec();
        scope(|s| self.finish(self.world.immediate_all_reduce_into(s, &send[..], buf, SystemOperation::sum()), what));
        Ok(())
    }

    fn broadcast(&self, bytes: &mut Vec<u8>, what: &str) -> Result<()> {
        let root = self.world.process_at_rank(0);
        let mut len = [bytes.len() as u64];
        scope(|s| self.finish(root.immediate_broadcast_into(s, &mut len[..]), what));
        bytes.resize(len[0] as usize, 0);
        if len[0] > 0 {
            scope(|s| self.finish(root.immediate_broadcast_into(s, &mut bytes[..]), what));
        }
        Ok(())
    }

    fn abort(&self, message: &str) -> ! {
        eprintln!("error: {message}");
        self.world.abort(1)
    }
}
