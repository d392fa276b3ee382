//! GroupNorm (and InstanceNorm, one group per channel) on f32 NCHW slices, forward and backward,
//! each in one pass per (image, group) block, blocks in parallel. burn composes GroupNorm from
//! about ten tensor ops, each a pass over memory, and differentiates every one of them.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::layout::{assume_init, par_init, uninit};

/// `x` is `[batch, channels, hw]` with channels split into `groups` equal groups.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormGeom {
    pub batch: usize,
    pub channels: usize,
    pub groups: usize,
    pub hw: usize,
    pub eps: f64,
    /// A ReLU after the norm, fused: the forward writes relu(y) and the backward masks the
    /// gradient by y's sign, recomputed from x (two passes over memory fewer each way).
    pub relu: bool,
}

/// ReLU as burn's flex computes it (a NaN passes, as in PyTorch).
#[inline(always)]
fn relu_live(y: f32) -> bool {
    y.is_nan() || y > 0.0
}

impl NormGeom {
    fn per_group(&self) -> usize {
        self.channels / self.groups
    }

    fn block(&self) -> usize {
        self.per_group() * self.hw
    }
}

/// Lanes of a sum: four independent AVX vectors' worth. With the eight of one vector every add
/// waited on the one before (3-4 cycles each), and the norms were 9.5% of a LIDC step.
const LANES: usize = 32;

/// Sum of `f(a[i], b[i])`: [`LANES`] f32 partial sums over chunks of 1024 elements (so the loop
/// vectorises and its adds overlap), the chunks' sums added in f64 (so long blocks keep their
/// precision).
#[inline(always)]
fn sum_by(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    sums_by(a, b, |x, y| [f(x, y)])[0]
}

/// [`sum_by`] of `N` functions at once, in one pass over `a` and `b`: each sum takes its terms in
/// the same order as alone, so the same bits.
#[inline(always)]
fn sums_by<const N: usize>(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f32; N]) -> [f64; N] {
    let mut total = [0f64; N];
    for (ca, cb) in a.chunks(1024).zip(b.chunks(1024)) {
        let mut lanes = [[0f32; LANES]; N];
        let (ea, eb) = (ca.chunks_exact(LANES), cb.chunks_exact(LANES));
        let (ra, rb) = (ea.remainder(), eb.remainder());
        for (xa, xb) in ea.zip(eb) {
            for l in 0..LANES {
                let v = f(xa[l], xb[l]);
                for k in 0..N {
                    lanes[k][l] += v[k];
                }
            }
        }
        let mut s: [f32; N] = std::array::from_fn(|k| lanes[k].iter().sum());
        for (&x, &y) in ra.iter().zip(rb) {
            let v = f(x, y);
            for k in 0..N {
                s[k] += v[k];
            }
        }
        for k in 0..N {
            total[k] += s[k] as f64;
        }
    }
    total
}

/// Mean and 1 / sqrt(biased variance + eps) of one block.
#[inline(always)]
fn stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mean = (sum_by(x, x, |v, _| v) / n) as f32;
    let var = sum_by(x, x, |v, _| (v - mean) * (v - mean)) / n;
    (mean, (1.0 / (var + eps).sqrt()) as f32)
}

/// `f(args)` compiled for AVX2 where the CPU has it (the crate's baseline is SSE2), so that its
/// loops, inlined into the `avx2` twin, run 8 floats wide. No FMA contraction: the same bits
/// either way.
macro_rules! on_avx2 {
    ($f:ident, $avx2:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        if super::direct::available() {
            // SAFETY: `available()` checked AVX2 and FMA.
            return unsafe { $avx2($($arg),*) };
        }
        $f($($arg),*)
    }};
}

/// `(x - mean) * rstd * gamma + beta`, per channel.
pub fn forward(g: &NormGeom, x: &[f32], gamma: &[f32], beta: &[f32]) -> Vec<f32> {
    let block = g.block();
    if block == 0 {
        return vec![0f32; x.len()];
    }
    let fill = |i: usize, yb: &mut [MaybeUninit<f32>]| {
        on_avx2!(forward_block, forward_block_avx2(g, i, &x[i * block..][..block], yb, gamma, beta))
    };
    // SAFETY: `fill` writes every value of its block (no zeroing pass first).
    unsafe { par_init(x.len(), block, fill) }
}

/// [`forward_block`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA (`on_avx2!` checks before it calls this).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_block_avx2(g: &NormGeom, i: usize, xb: &[f32], yb: &mut [MaybeUninit<f32>], gamma: &[f32], beta: &[f32]) {
    forward_block(g, i, xb, yb, gamma, beta)
}

/// Block `i` (one image's group) of [`forward`].
#[inline(always)]
fn forward_block(g: &NormGeom, i: usize, xb: &[f32], yb: &mut [MaybeUninit<f32>], gamma: &[f32], beta: &[f32]) {
    let (mean, rstd) = stats(xb, g.eps);
    let c0 = (i % g.groups) * g.per_group();
    for (j, (yc, xc)) in yb.chunks_mut(g.hw).zip(xb.chunks(g.hw)).enumerate() {
        let scale = rstd * gamma[c0 + j];
        let shift = beta[c0 + j] - mean * scale;
        for (o, &v) in yc.iter_mut().zip(xc) {
            let y = v * scale + shift;
            *o = MaybeUninit::new(if !g.relu || relu_live(y) { y } else { 0.0 });
        }
    }
}

/// Gradients of x, gamma and beta (`[channels]` each, summed over the batch); `beta` is read
/// only for the fused ReLU's mask.
pub fn backward(g: &NormGeom, x: &[f32], gamma: &[f32], beta: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (block, cg) = (g.block(), g.per_group());
    // Per block: sum(dy * xhat) and sum(dy) of each of its channels.
    let mut parts = vec![0f32; 2 * g.batch * g.channels];
    if block == 0 {
        return (vec![0f32; x.len()], vec![0.0; g.channels], vec![0.0; g.channels]);
    }
    let mut dx = uninit(x.len());
    dx.par_chunks_mut(block).zip(parts.par_chunks_mut(2 * cg)).enumerate().for_each(|(i, (dxb, part))| {
        let (xb, gb) = (&x[i * block..(i + 1) * block], &grad[i * block..(i + 1) * block]);
        on_avx2!(backward_block, backward_block_avx2(g, i, (xb, gb), (dxb, part), gamma, beta))
    });
    // SAFETY: each block's call above wrote all of its dx.
    let dx = unsafe { assume_init(dx) };
    let (mut dgamma, mut dbeta) = (vec![0f32; g.channels], vec![0f32; g.channels]);
    for (i, part) in parts.chunks(2 * cg).enumerate() {
        let c0 = (i % g.groups) * cg;
        for j in 0..cg {
            dgamma[c0 + j] += part[2 * j];
            dbeta[c0 + j] += part[2 * j + 1];
        }
    }
    (dx, dgamma, dbeta)
}

type BlockIn<'a> = (&'a [f32], &'a [f32]);
type BlockOut<'a> = (&'a mut [MaybeUninit<f32>], &'a mut [f32]);

/// [`backward_block`] compiled for AVX2 and FMA.
///
/// # Safety
/// The CPU must have AVX2 and FMA (`on_avx2!` checks before it calls this).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn backward_block_avx2(g: &NormGeom, i: usize, input: BlockIn, out: BlockOut, gamma: &[f32], beta: &[f32]) {
    backward_block(g, i, input, out, gamma, beta)
}

/// Block `i` of [`backward`]: from its x and incoming gradient, its dx (every value written) and
/// its channels' sum(dy * xhat) and sum(dy) into `part`.
#[inline(always)]
fn backward_block(g: &NormGeom, i: usize, (xb, gb): BlockIn, (dxb, part): BlockOut, gamma: &[f32], beta: &[f32]) {
    let cg = g.per_group();
    let m = xb.len() as f64;
    let (mean, rstd) = stats(xb, g.eps);
    let c0 = (i % g.groups) * cg;
    // sum(dxhat) and sum(dxhat * xhat) over the block, dxhat = dy * gamma.
    let (mut s1, mut s2) = (0f64, 0f64);
    // The incoming gradient, zero where the fused ReLU was off (y from x as the forward
    // computed it).
    let masked = |j: usize| {
        let scale = rstd * gamma[c0 + j];
        let shift = beta[c0 + j] - mean * scale;
        move |v: f32, d: f32| if !g.relu || relu_live(v * scale + shift) { d } else { 0.0 }
    };
    for j in 0..cg {
        let (xc, gc) = (&xb[j * g.hw..(j + 1) * g.hw], &gb[j * g.hw..(j + 1) * g.hw]);
        let dm = masked(j);
        let [dyx, dy] = sums_by(xc, gc, |v, d| {
            let d = dm(v, d);
            [d * (v - mean), d]
        });
        let dyx = dyx * rstd as f64;
        part[2 * j] = dyx as f32;
        part[2 * j + 1] = dy as f32;
        let gm = gamma[c0 + j] as f64;
        s1 += gm * dy;
        s2 += gm * dyx;
    }
    let (a, b) = ((s1 / m) as f32, (s2 / m) as f32);
    for j in 0..cg {
        let (gm, dm) = (gamma[c0 + j], masked(j));
        let range = j * g.hw..(j + 1) * g.hw;
        for ((o, &v), &d) in dxb[range.clone()].iter_mut().zip(&xb[range.clone()]).zip(&gb[range]) {
            let (xhat, d) = ((v - mean) * rstd, dm(v, d));
            *o = MaybeUninit::new(rstd * (d * gm - a - xhat * b));
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX2 twins give the same bits as the baseline build of the same code, so that a CPU
    /// without AVX2 trains the same way.
    #[test]
    fn the_avx2_twins_give_the_baseline_bits() {
        if !super::super::direct::available() {
            return;
        }
        // Full mantissas and an odd length: the lanes, the remainder and the ReLU's mask all count.
        let n = 3 * 1031;
        let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1013) as f32 * 0.737).sin() * 1.3).collect();
        let gb: Vec<f32> = (0..n).map(|i| ((i * 104729 % 997) as f32 * 0.311).cos()).collect();
        let (gamma, beta) = ([0.9f32, 1.7, -0.4], [0.1f32, -0.2, 0.05]);
        let g = NormGeom { batch: 1, channels: 3, groups: 1, hw: 1031, eps: 1e-5, relu: true };
        let bits = |v: &[MaybeUninit<f32>]| {
            // SAFETY: the blocks write every value.
            v.iter().map(|v| unsafe { v.assume_init() }.to_bits()).collect::<Vec<_>>()
        };
        let (mut y0, mut y1) = (uninit(n), uninit(n));
        forward_block(&g, 0, &x, &mut y0, &gamma, &beta);
        // SAFETY: `available()` checked AVX2 and FMA.
        unsafe { forward_block_avx2(&g, 0, &x, &mut y1, &gamma, &beta) };
        assert_eq!(bits(&y0), bits(&y1), "forward");
        let (mut d0, mut d1, mut p0, mut p1) = (uninit(n), uninit(n), [0f32; 6], [0f32; 6]);
        backward_block(&g, 0, (&x, &gb), (&mut d0, &mut p0), &gamma, &beta);
        // SAFETY: as above.
        unsafe { backward_block_avx2(&g, 0, (&x, &gb), (&mut d1, &mut p1), &gamma, &beta) };
        assert_eq!(bits(&d0), bits(&d1), "input gradient");
        assert_eq!(p0.map(f32::to_bits), p1.map(f32::to_bits), "per-channel sums");
    }
}
