//! Scaled dot-product attention that never stores the T x T score matrix: FlashAttention-2's
//! forward and backward (Dao 2023) on the CPU. Each (sequence, head) pair is one task: its keys
//! and values are packed once, then blocks of queries sweep blocks of keys with an online
//! softmax; the backward recomputes each block's probabilities from the saved log-sum-exp.
//!
//! Layout: q, k, v and the output are `[N, T, H * d]`, as the projections give them (head h
//! holds channels h*d..(h+1)*d); the log-sum-exp is `[N, H, T]`. Scores are scaled by
//! 1/sqrt(d). `labels` (Swin's shifted windows): sequence n uses label row n mod W of `[W, T]`,
//! and a token attends only to tokens of its own label; the others get burn's fill of -1e4.

use rayon::prelude::*;

/// Queries and keys per block: a block's scores are 16 KiB, in L1 with their operands.
const BLOCK: usize = 64;
/// burn's `MultiHeadAttention` score for a masked pair (its `min_float` default).
pub const MASKED: f32 = -1.0e4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnGeom {
    /// Sequences (batch x windows).
    pub seqs: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Rows of the label table (0: no labels).
    pub label_rows: usize,
}

impl AttnGeom {
    fn channels(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Values in each of q, k, v and the output.
    pub fn elements(&self) -> usize {
        self.seqs * self.tokens * self.channels()
    }
    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}

/// One (sequence, head) pair's rows, copied out of the `[N, T, H*d]` layout into `[T, d]`.
fn gather(g: &AttnGeom, x: &[f32], seq: usize, head: usize) -> Vec<f32> {
    let (c, d) = (g.channels(), g.head_dim);
    let mut out = Vec::with_capacity(g.tokens * d);
    for t in 0..g.tokens {
        let at = (seq * g.tokens + t) * c + head * d;
        out.extend_from_slice(&x[at..at + d]);
    }
    out
}

/// `[T, d]` to `[d, T]`, so that a query's scores are axpys along the keys.
fn transpose(x: &[f32], t: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for i in 0..t {
        for j in 0..d {
            out[j * t + i] = x[i * d + j];
        }
    }
    out
}

/// The label row of a sequence, if any.
fn label_row<'a>(g: &AttnGeom, labels: &'a [f32], seq: usize) -> Option<&'a [f32]> {
    (g.label_rows > 0).then(|| &labels[(seq % g.label_rows) * g.tokens..][..g.tokens])
}

/// Scores of queries `q [rows, d]` (rows from `i0`) against keys `j0..j0+cols` of `kt [d, T]`,
/// scaled and masked, into `s [rows, BLOCK]`.
#[inline(always)]
fn scores(
    s: &mut [f32],
    (q, kt): (&[f32], &[f32]),
    (t, d): (usize, usize),
    (i0, rows): (usize, usize),
    (j0, cols): (usize, usize),
    scale: f32,
    labels: Option<&[f32]>,
) {
    for i in 0..rows {
        let row = &mut s[i * BLOCK..i * BLOCK + cols];
        row.fill(0.0);
        let qi = &q[(i0 + i) * d..(i0 + i + 1) * d];
        for (dd, &qv) in qi.iter().enumerate() {
            let k = &kt[dd * t + j0..dd * t + j0 + cols];
            row.iter_mut().zip(k).for_each(|(r, &kv)| *r += qv * kv);
        }
        row.iter_mut().for_each(|r| *r *= scale);
        if let Some(l) = labels {
            let own = l[i0 + i];
            row.iter_mut().zip(&l[j0..j0 + cols]).for_each(|(r, &lj)| {
                if lj != own {
                    *r = MASKED
                }
            });
        }
    }
}

/// `out[..d] += w * x[..d]`.
#[inline(always)]
fn axpy(out: &mut [f32], w: f32, x: &[f32]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o += w * v);
}

/// The forward pass of one (sequence, head) pair: output `[T, d]` and log-sum-exp `[T]`.
#[inline(always)]
fn forward_pair(g: &AttnGeom, (q, kt, v): (&[f32], &[f32], &[f32]), labels: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let (t, d, scale) = (g.tokens, g.head_dim, g.scale());
    let mut out = vec![0.0f32; t * d];
    let mut lse = vec![0.0f32; t];
    let mut s = vec![0.0f32; BLOCK * BLOCK];
    for i0 in (0..t).step_by(BLOCK) {
        let rows = BLOCK.min(t - i0);
        let mut m = [f32::NEG_INFINITY; BLOCK];
        let mut l = [0.0f32; BLOCK];
        for j0 in (0..t).step_by(BLOCK) {
            let cols = BLOCK.min(t - j0);
            scores(&mut s, (q, kt), (t, d), (i0, rows), (j0, cols), scale, labels);
            for i in 0..rows {
                let row = &mut s[i * BLOCK..i * BLOCK + cols];
                let m_new = row.iter().copied().fold(m[i], f32::max);
                let keep = (m[i] - m_new).exp();
                let mut sum = 0.0;
                row.iter_mut().for_each(|p| {
                    *p = (*p - m_new).exp();
                    sum += *p;
                });
                l[i] = l[i] * keep + sum;
                m[i] = m_new;
                let o = &mut out[(i0 + i) * d..(i0 + i + 1) * d];
                o.iter_mut().for_each(|x| *x *= keep);
                for (j, &p) in row.iter().enumerate() {
                    axpy(o, p, &v[(j0 + j) * d..(j0 + j + 1) * d]);
                }
            }
        }
        for i in 0..rows {
            let inv = 1.0 / l[i];
            out[(i0 + i) * d..(i0 + i + 1) * d].iter_mut().for_each(|x| *x *= inv);
            lse[i0 + i] = m[i] + l[i].ln();
        }
    }
    (out, lse)
}

/// The gradients of one pair: `(dq, dk, dv)`, each `[T, d]`.
#[inline(always)]
fn backward_pair(
    g: &AttnGeom,
    (q, k, v): (&[f32], &[f32], &[f32]),
    (o, dout, lse): (&[f32], &[f32], &[f32]),
    labels: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (t, d, scale) = (g.tokens, g.head_dim, g.scale());
    let (kt, vt) = (transpose(k, t, d), transpose(v, t, d));
    // D_i = dO_i . O_i, the softmax backward's row term.
    let delta: Vec<f32> = (0..t).map(|i| o[i * d..(i + 1) * d].iter().zip(&dout[i * d..(i + 1) * d]).map(|(a, b)| a * b).sum()).collect();
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; t * d], vec![0.0f32; t * d], vec![0.0f32; t * d]);
    let (mut p, mut dp) = (vec![0.0f32; BLOCK * BLOCK], vec![0.0f32; BLOCK * BLOCK]);
    for i0 in (0..t).step_by(BLOCK) {
        let rows = BLOCK.min(t - i0);
        for j0 in (0..t).step_by(BLOCK) {
            let cols = BLOCK.min(t - j0);
            scores(&mut p, (q, &kt), (t, d), (i0, rows), (j0, cols), scale, labels);
            // dP = dO V^T, as scores of dO against V.
            scores(&mut dp, (dout, &vt), (t, d), (i0, rows), (j0, cols), 1.0, None);
            for i in 0..rows {
                let gi = i0 + i;
                let prow = &mut p[i * BLOCK..i * BLOCK + cols];
                prow.iter_mut().for_each(|x| *x = (*x - lse[gi]).exp());
                let dprow = &dp[i * BLOCK..i * BLOCK + cols];
                let (qi, doi) = (&q[gi * d..(gi + 1) * d], &dout[gi * d..(gi + 1) * d]);
                let dqi = &mut dq[gi * d..(gi + 1) * d];
                for (j, (&pij, &dpij)) in prow.iter().zip(dprow).enumerate() {
                    let gj = j0 + j;
                    axpy(&mut dv[gj * d..(gj + 1) * d], pij, doi);
                    // dS = P (dP - D); S was scaled, so each side takes the scale once.
                    let ds = pij * (dpij - delta[gi]) * scale;
                    axpy(dqi, ds, &k[gj * d..(gj + 1) * d]);
                    axpy(&mut dk[gj * d..(gj + 1) * d], ds, qi);
                }
            }
        }
    }
    (dq, dk, dv)
}

/// Compiles `$body` (generic code whose helpers are `#[inline(always)]`) for AVX-512, for
/// AVX2 + FMA and for the baseline, and runs the widest the CPU has: the loops above are
/// written to vectorise along the keys and the head dimension.
macro_rules! widest {
    ($name:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $body:expr) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { $body }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { $body }
                if super::direct::avx512() {
                    // SAFETY: the CPU has AVX-512F (checked at run time).
                    return unsafe { avx512($($arg),*) };
                }
                if super::direct::available() {
                    // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body
        }
    };
}

widest!(forward_one, (g: &AttnGeom, qkv: (&[f32], &[f32], &[f32]), labels: Option<&[f32]>) -> (Vec<f32>, Vec<f32>), forward_pair(g, qkv, labels));
widest!(backward_one, (g: &AttnGeom, qkv: (&[f32], &[f32], &[f32]), od: (&[f32], &[f32], &[f32]), labels: Option<&[f32]>) -> (Vec<f32>, Vec<f32>, Vec<f32>), backward_pair(g, qkv, od, labels));

/// Writes each pair's `[T, d]` rows back into `[N, T, H*d]`.
fn scatter(g: &AttnGeom, parts: Vec<Vec<f32>>) -> Vec<f32> {
    let (c, d) = (g.channels(), g.head_dim);
    let mut out = vec![0.0f32; g.elements()];
    for (pair, part) in parts.into_iter().enumerate() {
        let (seq, head) = (pair / g.heads, pair % g.heads);
        for t in 0..g.tokens {
            let at = (seq * g.tokens + t) * c + head * d;
            out[at..at + d].copy_from_slice(&part[t * d..(t + 1) * d]);
        }
    }
    out
}

/// `(out [N, T, H*d], lse [N, H, T])`.
pub fn forward(g: &AttnGeom, q: &[f32], k: &[f32], v: &[f32], labels: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert!(q.len() == g.elements() && k.len() == g.elements() && v.len() == g.elements());
    assert!(labels.len() == g.label_rows * g.tokens);
    let results: Vec<(Vec<f32>, Vec<f32>)> = (0..g.seqs * g.heads)
        .into_par_iter()
        .map(|pair| {
            let (seq, head) = (pair / g.heads, pair % g.heads);
            let qs = gather(g, q, seq, head);
            let kt = transpose(&gather(g, k, seq, head), g.tokens, g.head_dim);
            let vs = gather(g, v, seq, head);
            forward_one(g, (&qs, &kt, &vs), label_row(g, labels, seq))
        })
        .collect();
    let (outs, lses): (Vec<_>, Vec<_>) = results.into_iter().unzip();
    (scatter(g, outs), lses.concat())
}

/// `(dq, dk, dv)`, each `[N, T, H*d]`, from the forward's inputs, output and log-sum-exp and
/// the output's gradient.
pub fn backward(
    g: &AttnGeom,
    (q, k, v): (&[f32], &[f32], &[f32]),
    (o, lse, dout): (&[f32], &[f32], &[f32]),
    labels: &[f32],
) -> [Vec<f32>; 3] {
    assert!(o.len() == g.elements() && dout.len() == g.elements() && lse.len() == g.seqs * g.heads * g.tokens);
    let results: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..g.seqs * g.heads)
        .into_par_iter()
        .map(|pair| {
            let (seq, head) = (pair / g.heads, pair % g.heads);
            let take = |x: &[f32]| gather(g, x, seq, head);
            let (qs, ks, vs, os, dos) = (take(q), take(k), take(v), take(o), take(dout));
            let lse = &lse[pair * g.tokens..(pair + 1) * g.tokens];
            backward_one(g, (&qs, &ks, &vs), (&os, &dos, lse), label_row(g, labels, seq))
        })
        .collect();
    let mut parts: [Vec<Vec<f32>>; 3] = Default::default();
    for (dq, dk, dv) in results {
        parts[0].push(dq);
        parts[1].push(dk);
        parts[2].push(dv);
    }
    parts.map(|p| scatter(g, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention written out: every score stored, softmax by rows.
    fn plain(g: &AttnGeom, q: &[f32], k: &[f32], v: &[f32], labels: &[f32]) -> Vec<f32> {
        let (t, d, c) = (g.tokens, g.head_dim, g.channels());
        let mut out = vec![0.0; g.elements()];
        for n in 0..g.seqs {
            for h in 0..g.heads {
                let at = |tok: usize| (n * t + tok) * c + h * d;
                for i in 0..t {
                    let mut s: Vec<f32> = (0..t).map(|j| (0..d).map(|x| q[at(i) + x] * k[at(j) + x]).sum::<f32>() * g.scale()).collect();
                    if let Some(l) = label_row(g, labels, n) {
                        (0..t).filter(|&j| l[j] != l[i]).for_each(|j| s[j] = MASKED);
                    }
                    let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    for x in 0..d {
                        out[at(i) + x] = (0..t).map(|j| e[j] / sum * v[at(j) + x]).sum();
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1 << 24) as f32 * 2.0 - 1.0).collect()
    }

    #[test]
    fn the_blocked_forward_matches_plain_attention() {
        // Token counts across block edges (1, 63, 64, 65, 130) and odd head sizes.
        for (seqs, tokens, heads, head_dim, label_rows) in
            [(2, 1, 1, 3, 0), (1, 63, 2, 5, 0), (3, 65, 3, 7, 0), (2, 130, 1, 16, 0), (4, 64, 2, 4, 2)]
        {
            let g = AttnGeom { seqs, tokens, heads, head_dim, label_rows };
            let (q, k, v) = (values(g.elements(), 1), values(g.elements(), 2), values(g.elements(), 3));
            let labels: Vec<f32> = (0..label_rows * tokens).map(|i| ((i * 7) % 3) as f32).collect();
            let (out, _) = forward(&g, &q, &k, &v, &labels);
            let want = plain(&g, &q, &k, &v, &labels);
            let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 1e-5, "{g:?}: {err}");
        }
    }
}
