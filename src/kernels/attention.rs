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

/// A pair's queries times 1/sqrt(d), transposed to `[d, T]`: every loop of the kernel runs
/// along the queries.
fn scaled_t(g: &AttnGeom, q: &[f32], seq: usize, head: usize) -> Vec<f32> {
    let mut qt = transpose(&gather(g, q, seq, head), g.tokens, g.head_dim);
    qt.iter_mut().for_each(|x| *x *= g.scale());
    qt
}

/// `[rows, cols]` to `[cols, rows]`.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = x[i * cols + j];
        }
    }
    out
}

/// The label row of a sequence, if any.
fn label_row<'a>(g: &AttnGeom, labels: &'a [f32], seq: usize) -> Option<&'a [f32]> {
    (g.label_rows > 0).then(|| &labels[(seq % g.label_rows) * g.tokens..][..g.tokens])
}

/// e^x for x <= 0 (scores minus their row's maximum), branch-free so that it vectorises:
/// e^x = 2^n e^r with n = round(x / ln 2), |r| <= ln 2 / 2, e^r by its degree-7 Taylor series
/// (within 2 ulp of libm's). Below -87, e^x is taken as e^-87 (1.6e-38, where f32 stays normal).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    f32::from_bits(((n as i32 + 127) << 23) as u32) * p
}

/// Scores transposed, key by query, of a block: `st[j][i]` for keys j0..j0+cols and queries
/// i0..i0+rows, from `k [T, d]` and the scaled queries `qt [d, T]`, masked by `labels`. Rows of
/// `st` are BLOCK long; every loop runs along the queries, contiguous in `qt` and `st`.
#[inline(always)]
fn scores_t(
    st: &mut [f32],
    (k, qt): (&[f32], &[f32]),
    (t, d): (usize, usize),
    (i0, rows): (usize, usize),
    (j0, cols): (usize, usize),
    labels: Option<&[f32]>,
) {
    for j in 0..cols {
        let row = &mut st[j * BLOCK..j * BLOCK + rows];
        row.fill(0.0);
        for (dd, &kv) in k[(j0 + j) * d..(j0 + j + 1) * d].iter().enumerate() {
            row.iter_mut().zip(&qt[dd * t + i0..dd * t + i0 + rows]).for_each(|(r, &q)| *r += kv * q);
        }
        if let Some(l) = labels {
            let own = l[j0 + j];
            row.iter_mut().zip(&l[i0..i0 + rows]).for_each(|(r, &li)| *r = if li == own { *r } else { MASKED });
        }
    }
}

/// `a . b`, in 16 lanes (a fixed order, so that the compiler may vectorise it).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        acc.iter_mut().zip(x.iter().zip(y)).for_each(|(s, (p, q))| *s += p * q);
    }
    acc.iter().sum::<f32>() + tail
}

/// The forward pass of one (sequence, head) pair: the output transposed `[d, T]` and the
/// log-sum-exp `[T]`. `qt` holds the scaled queries `[d, T]`, `k` and `v` are `[T, d]`.
#[inline(always)]
fn forward_pair(g: &AttnGeom, (qt, k, v): (&[f32], &[f32], &[f32]), labels: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let (t, d) = (g.tokens, g.head_dim);
    let mut ot = vec![0.0f32; d * t];
    let mut lse = vec![0.0f32; t];
    let mut st = vec![0.0f32; BLOCK * BLOCK];
    for i0 in (0..t).step_by(BLOCK) {
        let rows = BLOCK.min(t - i0);
        let (mut m, mut l) = ([f32::NEG_INFINITY; BLOCK], [0.0f32; BLOCK]);
        let (m, l) = (&mut m[..rows], &mut l[..rows]);
        for j0 in (0..t).step_by(BLOCK) {
            let cols = BLOCK.min(t - j0);
            scores_t(&mut st, (k, qt), (t, d), (i0, rows), (j0, cols), labels);
            let mut m_new = [0.0f32; BLOCK];
            let m_new = &mut m_new[..rows];
            m_new.copy_from_slice(m);
            for j in 0..cols {
                m_new.iter_mut().zip(&st[j * BLOCK..j * BLOCK + rows]).for_each(|(a, &b)| *a = a.max(b));
            }
            let mut keep = [0.0f32; BLOCK];
            let keep = &mut keep[..rows];
            keep.iter_mut().zip(m.iter().zip(m_new.iter())).for_each(|(kp, (&old, &new))| *kp = exp(old - new));
            l.iter_mut().zip(keep.iter()).for_each(|(a, &kp)| *a *= kp);
            for j in 0..cols {
                let p = &mut st[j * BLOCK..j * BLOCK + rows];
                p.iter_mut().zip(m_new.iter()).for_each(|(x, &mx)| *x = exp(*x - mx));
                l.iter_mut().zip(p.iter()).for_each(|(a, &x)| *a += x);
            }
            m.copy_from_slice(m_new);
            for dd in 0..d {
                let o = &mut ot[dd * t + i0..dd * t + i0 + rows];
                o.iter_mut().zip(keep.iter()).for_each(|(x, &kp)| *x *= kp);
                for j in 0..cols {
                    let w = v[(j0 + j) * d + dd];
                    o.iter_mut().zip(&st[j * BLOCK..j * BLOCK + rows]).for_each(|(x, &p)| *x += w * p);
                }
            }
        }
        for dd in 0..d {
            ot[dd * t + i0..dd * t + i0 + rows].iter_mut().zip(l.iter()).for_each(|(x, &s)| *x /= s);
        }
        lse[i0..i0 + rows].iter_mut().zip(m.iter().zip(l.iter())).for_each(|(e, (&mx, &s))| *e = mx + s.ln());
    }
    (ot, lse)
}

/// The gradients of one pair: `(dq, dk, dv)`, each `[T, d]`. The scaled queries `qt` and the
/// output's gradient `dot_t` are transposed, `[d, T]`; `k`, `v`, `o` and `dout` are `[T, d]`.
#[inline(always)]
fn backward_pair(
    g: &AttnGeom,
    (qt, k, v): (&[f32], &[f32], &[f32]),
    (o, dout, dot_t, lse): (&[f32], &[f32], &[f32], &[f32]),
    labels: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (t, d, scale) = (g.tokens, g.head_dim, g.scale());
    // D_i = dO_i . O_i, the softmax backward's row term.
    let delta: Vec<f32> = (0..t).map(|i| dot(&o[i * d..(i + 1) * d], &dout[i * d..(i + 1) * d])).collect();
    let (mut dqt, mut dk, mut dv) = (vec![0.0f32; d * t], vec![0.0f32; t * d], vec![0.0f32; t * d]);
    let (mut pt, mut dpt) = (vec![0.0f32; BLOCK * BLOCK], vec![0.0f32; BLOCK * BLOCK]);
    for i0 in (0..t).step_by(BLOCK) {
        let rows = BLOCK.min(t - i0);
        for j0 in (0..t).step_by(BLOCK) {
            let cols = BLOCK.min(t - j0);
            scores_t(&mut pt, (k, qt), (t, d), (i0, rows), (j0, cols), labels);
            // dP^T = V dO^T, as scores of V against dO.
            scores_t(&mut dpt, (v, dot_t), (t, d), (i0, rows), (j0, cols), None);
            for j in 0..cols {
                let gj = j0 + j;
                let p = &mut pt[j * BLOCK..j * BLOCK + rows];
                p.iter_mut().zip(&lse[i0..i0 + rows]).for_each(|(x, &e)| *x = exp(*x - e));
                let dp = &mut dpt[j * BLOCK..j * BLOCK + rows];
                // dS = P (dP - D), into dp.
                dp.iter_mut().zip(p.iter().zip(&delta[i0..i0 + rows])).for_each(|(x, (&pv, &dl))| *x = pv * (*x - dl));
                for dd in 0..d {
                    dv[gj * d + dd] += dot(p, &dot_t[dd * t + i0..dd * t + i0 + rows]);
                    // S = (scale Q) K^T: dK takes the scaled queries, dQ the scale once.
                    dk[gj * d + dd] += dot(dp, &qt[dd * t + i0..dd * t + i0 + rows]);
                    let w = k[gj * d + dd] * scale;
                    dqt[dd * t + i0..dd * t + i0 + rows].iter_mut().zip(dp.iter()).for_each(|(x, &s)| *x += w * s);
                }
            }
        }
    }
    (transpose(&dqt, d, t), dk, dv)
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
widest!(backward_one, (g: &AttnGeom, qkv: (&[f32], &[f32], &[f32]), od: (&[f32], &[f32], &[f32], &[f32]), labels: Option<&[f32]>) -> (Vec<f32>, Vec<f32>, Vec<f32>), backward_pair(g, qkv, od, labels));

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
            let qt = scaled_t(g, q, seq, head);
            let (ks, vs) = (gather(g, k, seq, head), gather(g, v, seq, head));
            let (ot, lse) = forward_one(g, (&qt, &ks, &vs), label_row(g, labels, seq));
            (transpose(&ot, g.head_dim, g.tokens), lse)
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
            let (ks, vs, os, dos) = (take(k), take(v), take(o), take(dout));
            let (qt, dot_t) = (scaled_t(g, q, seq, head), transpose(&dos, g.tokens, g.head_dim));
            let lse = &lse[pair * g.tokens..(pair + 1) * g.tokens];
            backward_one(g, (&qt, &ks, &vs), (&os, &dos, &dot_t, lse), label_row(g, labels, seq))
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
    fn the_vectorisable_exp_is_within_two_ulp_of_libm() {
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= 2.5e-7 * want, "exp({x}) = {got}, libm {want}");
        }
        assert!(exp(-1.0e4) < 2e-38 && exp(-1.0e4) >= 0.0);
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
