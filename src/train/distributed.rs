//! Data-parallel training: the ranks of a run and what passes between them.
//!
//! A training step is written once, against [`Collective`]: every rank draws the whole global
//! batch's random choices (so a run does not depend on how many ranks share it), trains on its
//! own rows, and the ranks then sum their batch-weighted losses and gradients. One process
//! alone is the collective of one, where every exchange is a no-op; MPI
//! (`--distributed mpi`, cargo feature `mpi`) is the engine across processes and machines.

use std::ops::Range;

use anyhow::{Result, anyhow, bail};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::to_host;

/// How the ranks of a run talk to each other.
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// The rank among those on this machine: which of its devices this rank takes.
    fn local_rank(&self) -> usize;
    /// Element-wise sum over every rank, in place. `what` names the exchange in errors.
    fn sum_f32(&self, buf: &mut [f32], what: &str) -> Result<()>;
    fn sum_f64(&self, buf: &mut [f64], what: &str) -> Result<()>;
    /// Rank 0's bytes, on every rank.
    fn broadcast(&self, bytes: &mut Vec<u8>, what: &str) -> Result<()>;
    /// Ends every rank of the job at once after `message` (a rank that returned with an error
    /// would otherwise leave the others waiting).
    fn abort(&self, message: &str) -> !;
}

/// A run of one process.
pub struct Alone;

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn sum_f32(&self, _: &mut [f32], _: &str) -> Result<()> {
        Ok(())
    }
    fn sum_f64(&self, _: &mut [f64], _: &str) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut Vec<u8>, _: &str) -> Result<()> {
        Ok(())
    }
    fn abort(&self, message: &str) -> ! {
        eprintln!("error: {message}");
        std::process::exit(1)
    }
}

/// The rows of a global batch of `n` this rank trains on: contiguous, sizes differing by at most one.
pub fn shard(c: &dyn Collective, n: usize) -> Range<usize> {
    rows_of(c.rank(), c.size(), n)
}

fn rows_of(r: usize, w: usize, n: usize) -> Range<usize> {
    let (base, rem) = (n / w, n % w);
    let start = r * base + r.min(rem);
    start..start + base + usize::from(r < rem)
}

/// Rank 0's value of `value`, on every rank.
pub fn broadcast_json<T: Serialize + DeserializeOwned>(c: &dyn Collective, value: Option<&T>, what: &str) -> Result<T> {
    let mut bytes = match value {
        Some(v) if c.rank() == 0 => serde_json::to_vec(v)?,
        _ => Vec::new(),
    };
    c.broadcast(&mut bytes, what)?;
    serde_json::from_slice(&bytes).map_err(|e| anyhow!("{what}: rank {} received an unreadable value: {e}", c.rank()))
}

/// Sums of `values` weighted by this rank's row count over all ranks, divided by the global
/// row count: what one process would have computed for the whole batch.
pub fn batch_mean(c: &dyn Collective, values: &[f64], rows: usize, what: &str) -> Result<Vec<f64>> {
    let mut buf: Vec<f64> = values.iter().map(|v| v * rows as f64).chain([rows as f64]).collect();
    c.sum_f64(&mut buf, what)?;
    let total = buf.pop().unwrap_or(0.0).max(1.0);
    Ok(buf.into_iter().map(|v| v / total).collect())
}

/// The gradient of the global batch's mean loss: each rank's gradient of its rows' mean,
/// weighted by `weight` (its share of the global batch), summed over ranks in one flattened
/// buffer. A rank without rows passes `None` and contributes zeros.
pub fn average_gradients<M: Module>(c: &dyn Collective, grads: Option<GradientsParams>, model: &M, weight: f32) -> Result<GradientsParams> {
    let mut grads = grads.unwrap_or_default();
    if c.size() == 1 {
        return Ok(grads);
    }
    let mut flat = Flatten { grads: Some(&mut grads), buf: Vec::new(), scale: weight, had: Vec::new(), ids: Vec::new(), err: None };
    model.visit(&mut flat);
    let Flatten { mut buf, had, err, .. } = flat;
    if let Some(e) = err {
        return Err(e);
    }
    c.sum_f32(&mut buf, "the gradient all-reduce")?;
    let mut out = GradientsParams::new();
    model.visit(&mut Unflatten { grads: &mut out, buf: &buf, offset: 0, had: &had, i: 0 });
    Ok(out)
}

/// Rank 0's weights and parameter ids, on every rank. The ids matter: the optimizer's state
/// is keyed by them, so a resumed run's state from rank 0 must find the same ids everywhere.
pub fn broadcast_module<M: Module>(c: &dyn Collective, model: M) -> Result<M> {
    if c.size() == 1 {
        return Ok(model);
    }
    let mut flat = Flatten { grads: None, buf: Vec::new(), scale: 1.0, had: Vec::new(), ids: Vec::new(), err: None };
    model.visit(&mut flat);
    if let Some(e) = flat.err {
        return Err(e);
    }
    let ids: Vec<u64> = broadcast_json(c, Some(&flat.ids), "the parameter ids")?;
    let mut bytes = if c.rank() == 0 { bytemuck::cast_slice(&flat.buf).to_vec() } else { Vec::new() };
    c.broadcast(&mut bytes, "the initial weights")?;
    if bytes.len() != flat.buf.len() * 4 || ids.len() != flat.ids.len() {
        bail!(
            "rank {}: rank 0's model has {} tensors and {} values, this one {} and {}: the ranks built different models",
            c.rank(),
            ids.len(),
            bytes.len() / 4,
            flat.ids.len(),
            flat.buf.len()
        );
    }
    let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(model.map(&mut SetParams { buf: &values, ids: &ids, offset: 0, i: 0 }))
}

/// Rank 0's optimizer state (Adam's moments on a resume; empty on a new run), on every rank.
pub fn broadcast_optimizer(c: &dyn Collective, optim: ModuleOptimizer) -> Result<ModuleOptimizer> {
    if c.size() == 1 {
        return Ok(optim);
    }
    let mut bytes = if c.rank() == 0 { optim.into_bytes().map_err(|e| anyhow!("{e:?}"))?.to_vec() } else { Vec::new() };
    c.broadcast(&mut bytes, "the optimizer state")?;
    if c.rank() == 0 {
        return Ok(optim);
    }
    optim.from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|e| anyhow!("rank {}: reading rank 0's optimizer state: {e:?}", c.rank()))
}

/// Draws every parameter's initial value now: burn initialises parameters lazily, on first
/// use, and ranks that share a device must not interleave their draws.
pub fn initialize<M: Module>(model: &M) {
    struct Touch;
    impl ModuleVisitor for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let _ = param.val();
        }
    }
    model.visit(&mut Touch);
}

/// Every float parameter's gradient (or, without gradients, its value) into one buffer, in
/// the module's visiting order, which is the same on every rank.
struct Flatten<'a> {
    grads: Option<&'a mut GradientsParams>,
    buf: Vec<f32>,
    scale: f32,
    had: Vec<bool>,
    ids: Vec<u64>,
    err: Option<anyhow::Error>,
}

impl ModuleVisitor for Flatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let n = value.shape().num_elements();
        let source = match self.grads.as_deref_mut() {
            Some(g) => g.remove::<D>(param.id),
            None => Some(value),
        };
        self.had.push(source.is_some());
        self.ids.push(param.id.val());
        match source.map(to_host) {
            Some(Ok(v)) => self.buf.extend(v.into_iter().map(|x| x * self.scale)),
            Some(Err(e)) => {
                self.err.get_or_insert(e);
                self.buf.extend(std::iter::repeat_n(0.0, n));
            }
            None => self.buf.extend(std::iter::repeat_n(0.0, n)),
        }
    }
}

/// The summed buffer back into gradients, for the parameters that had one.
struct Unflatten<'a> {
    grads: &'a mut GradientsParams,
    buf: &'a [f32],
    offset: usize,
    had: &'a [bool],
    i: usize,
}

impl ModuleVisitor for Unflatten<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let shape = value.shape();
        let n = shape.num_elements();
        if self.had[self.i] {
            let data = TensorData::new(self.buf[self.offset..self.offset + n].to_vec(), shape);
            // Gradients live on the inner (non-autodiff) device.
            let device = value.device().inner();
            self.grads.register::<D>(param.id, Tensor::from_data(data, &device));
        }
        self.offset += n;
        self.i += 1;
    }
}

struct SetParams<'a> {
    buf: &'a [f32],
    ids: &'a [u64],
    offset: usize,
    i: usize,
}

impl ModuleMapper for SetParams<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (_, t, mapper) = param.consume();
        let n = t.shape().num_elements();
        let require = t.is_require_grad();
        let data = TensorData::new(self.buf[self.offset..self.offset + n].to_vec(), t.shape());
        let value = Tensor::from_data(data, &t.device()).set_require_grad(require);
        let id = ParamId::from(self.ids[self.i]);
        self.offset += n;
        self.i += 1;
        Param::from_mapped_value(id, value, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_once_in_order() {
        for n in 0..20 {
            for w in 1..6 {
                let parts: Vec<Range<usize>> = (0..w).map(|r| rows_of(r, w, n)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[w - 1].end, n);
                for p in parts.windows(2) {
                    assert_eq!(p[0].end, p[1].start);
                    assert!(p[0].len() >= p[1].len() && p[0].len() <= p[1].len() + 1, "{n} over {w}: {parts:?}");
                }
            }
        }
    }

    #[test]
    fn one_rank_keeps_the_batch_mean() {
        let m = batch_mean(&Alone, &[2.0, 4.0], 3, "t").unwrap();
        assert_eq!(m, vec![2.0, 4.0]);
    }
}
