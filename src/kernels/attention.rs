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

use super::vmath::exp;

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

/// The label row of a sequence, if any.
fn label_row<'a>(g: &AttnGeom, labels: &'a [f32], seq: usize) -> Option<&'a [f32]> {
    (g.label_rows > 0).then(|| &labels[(seq % g.label_rows) * g.tokens..][..g.tokens])
}

/// A block's values for each of its BLOCK queries: fixed-size, so that a loop over a row keeps
/// it in vector registers.
type Row = [f32; BLOCK];

/// Scores transposed, key by query, of one query block: `st[j][i]` for keys j0..j0+cols, from
/// `k [T, d]` and the block's scaled queries `qt [d]` (rows of BLOCK), masked where the key's
/// label differs from the query's (`labels`: the queries' and all keys').
#[inline(always)]
fn scores_t<const K: usize>(st: &mut [Row], k: &[f32], qt: &[Row], (j0, cols): (usize, usize), labels: Option<(&Row, &[f32])>) {
    let mut j = 0;
    while j < cols {
        // K keys at a time where K more remain, then one by one.
        j += if j + K <= cols { scores_keys::<K>(st, k, qt, (j0, j), labels) } else { scores_keys::<1>(st, k, qt, (j0, j), labels) };
    }
}

/// Scores of the N keys from `j0 + j` into `st[j..j + N]`: each query row loaded once feeds N
/// accumulators (with one key per loaded row, the loads and not the FMAs set the pace on
/// AVX-512). Returns N.
#[inline(always)]
fn scores_keys<const N: usize>(st: &mut [Row], k: &[f32], qt: &[Row], (j0, j): (usize, usize), labels: Option<(&Row, &[f32])>) -> usize {
    let d = qt.len();
    let mut acc = [[0.0f32; BLOCK]; N];
    for (dd, q) in qt.iter().enumerate() {
        let kv: [f32; N] = std::array::from_fn(|u| k[(j0 + j + u) * d + dd]);
        for (a, &kv) in acc.iter_mut().zip(&kv) {
            a.iter_mut().zip(q).for_each(|(a, &q)| *a = kv.mul_add(q, *a));
        }
    }
    for (u, a) in acc.iter_mut().enumerate() {
        mask(a, labels, j0 + j + u);
    }
    st[j..j + N].copy_from_slice(&acc);
    N
}

/// Keys (and head dimensions) the blocked loops take together: 4 rows of 64 lanes are 16 of
/// AVX-512's 32 registers; AVX2's 16 registers hold one row of 8 ymm, and 2 or 4 spilled and ran
/// 1.15x-1.45x slower than 1.
fn keys_at_once() -> usize {
    if super::direct::avx512() { 4 } else { 1 }
}

/// Masks the scores of key `key` for the queries whose label differs from the key's.
#[inline(always)]
fn mask(acc: &mut Row, labels: Option<(&Row, &[f32])>, key: usize) {
    if let Some((own, keys)) = labels {
        let key = keys[key];
        acc.iter_mut().zip(own).for_each(|(a, &l)| *a = if l == key { *a } else { MASKED });
    }
}

/// The forward pass of one (sequence, head) pair: the output transposed, `[blocks * d]` rows,
/// and the log-sum-exp `[blocks]` rows. `qt`: the scaled queries, transposed and padded to
/// whole blocks (`[blocks * d]` rows); `k` and `v` are `[T, d]`; `labels` those of the queries
/// (padded) and of the keys.
#[inline(always)]
fn forward_pair<const K: usize>(d: usize, (qt, k, v): (&[Row], &[f32], &[f32]), labels: Option<(&[Row], &[f32])>) -> (Vec<Row>, Vec<Row>) {
    let (t, blocks) = (k.len() / d, qt.len() / d);
    let mut ot = vec![[0.0f32; BLOCK]; blocks * d];
    let mut lse = vec![[0.0f32; BLOCK]; blocks];
    let mut st = vec![[0.0f32; BLOCK]; BLOCK];
    for b in 0..blocks {
        let (qtb, o) = (&qt[b * d..(b + 1) * d], &mut ot[b * d..(b + 1) * d]);
        let (mut m, mut l) = ([f32::NEG_INFINITY; BLOCK], [0.0f32; BLOCK]);
        for j0 in (0..t).step_by(BLOCK) {
            let cols = BLOCK.min(t - j0);
            scores_t::<K>(&mut st, k, qtb, (j0, cols), labels.map(|(q, keys)| (&q[b], keys)));
            let mut m_new = m;
            for row in &st[..cols] {
                m_new.iter_mut().zip(row).for_each(|(a, &x)| *a = if x > *a { x } else { *a });
            }
            let mut keep = [0.0f32; BLOCK];
            keep.iter_mut().zip(m.iter().zip(&m_new)).for_each(|(kp, (&old, &new))| *kp = exp(old - new));
            l.iter_mut().zip(&keep).for_each(|(a, &kp)| *a *= kp);
            for row in &mut st[..cols] {
                row.iter_mut().zip(&m_new).for_each(|(x, &mx)| *x = exp(*x - mx));
                l.iter_mut().zip(row.iter()).for_each(|(a, &x)| *a += x);
            }
            m = m_new;
            accumulate_pv::<K>(o, &st[..cols], &v[j0 * d..(j0 + cols) * d], &keep);
        }
        for od in o.iter_mut() {
            od.iter_mut().zip(&l).for_each(|(x, &s)| *x /= s);
        }
        lse[b].iter_mut().zip(m.iter().zip(&l)).for_each(|(e, (&mx, &s))| *e = mx + s.ln());
    }
    (ot, lse)
}

/// `o[dd] = o[dd] * keep + sum_j v[j][dd] p[j]` for each head dimension dd, K at a time so
/// that each probability row loaded feeds K accumulators. `v`: the block's keys' `[cols, d]`.
#[inline(always)]
fn accumulate_pv<const K: usize>(o: &mut [Row], p: &[Row], v: &[f32], keep: &Row) {
    let mut dd = 0;
    while dd < o.len() {
        dd += if dd + K <= o.len() { pv_dims::<K>(o, dd, p, v, keep) } else { pv_dims::<1>(o, dd, p, v, keep) };
    }
}

/// [`accumulate_pv`] for the N head dimensions from `dd`. Returns N.
#[inline(always)]
fn pv_dims<const N: usize>(o: &mut [Row], dd: usize, p: &[Row], v: &[f32], keep: &Row) -> usize {
    let d = o.len();
    let mut acc: [Row; N] = std::array::from_fn(|u| o[dd + u]);
    for a in acc.iter_mut() {
        a.iter_mut().zip(keep).for_each(|(x, &kp)| *x *= kp);
    }
    for (j, p) in p.iter().enumerate() {
        let w: [f32; N] = std::array::from_fn(|u| v[j * d + dd + u]);
        for (a, &w) in acc.iter_mut().zip(&w) {
            a.iter_mut().zip(p).for_each(|(x, &p)| *x = w.mul_add(p, *x));
        }
    }
    o[dd..dd + N].copy_from_slice(&acc);
    N
}

/// The gradients of one pair: `dq` transposed (`[blocks * d]` rows, as `qt`), `dk` and `dv`
/// `[T, d]`. `dot_t`: the output's gradient, transposed and padded as `qt` (zero beyond T, so
/// that padded queries add nothing); `lse` and `delta` (dO . O) per query, in rows.
#[inline(always)]
fn backward_pair<const K: usize>(
    d: usize,
    (qt, k, v): (&[Row], &[f32], &[f32]),
    (dot_t, lse, delta): (&[Row], &[Row], &[Row]),
    scale: f32,
    labels: Option<(&[Row], &[f32])>,
) -> (Vec<Row>, Vec<f32>, Vec<f32>) {
    let (t, blocks) = (k.len() / d, qt.len() / d);
    let key_blocks = t.div_ceil(BLOCK);
    // dK and dV along key lanes, a key block's d rows after another: summed over the queries
    // with each block's P and dS turned query by key, as the forward sums its output, instead
    // of a 16-lane dot product and its horizontal sum per key and dimension.
    let (mut dqt, mut dkt, mut dvt) =
        (vec![[0.0f32; BLOCK]; blocks * d], vec![[0.0f32; BLOCK]; key_blocks * d], vec![[0.0f32; BLOCK]; key_blocks * d]);
    let (mut pt, mut dst) = (vec![[0.0f32; BLOCK]; BLOCK], vec![[0.0f32; BLOCK]; BLOCK]);
    let (mut pq, mut dsq) = (vec![[0.0f32; BLOCK]; BLOCK], vec![[0.0f32; BLOCK]; BLOCK]);
    const ONES: Row = [1.0; BLOCK];
    for b in 0..blocks {
        let (qtb, dotb) = (&qt[b * d..(b + 1) * d], &dot_t[b * d..(b + 1) * d]);
        // The block's scaled queries and output gradient query by query, [BLOCK, d] (zero for
        // padded queries, so that they add nothing).
        let (qsb, dosb) = (from_rows(qtb, d, BLOCK), from_rows(dotb, d, BLOCK));
        for j0 in (0..t).step_by(BLOCK) {
            let cols = BLOCK.min(t - j0);
            scores_t::<K>(&mut pt, k, qtb, (j0, cols), labels.map(|(q, keys)| (&q[b], keys)));
            // dP^T = V dO^T, as scores of V against dO.
            scores_t::<K>(&mut dst, v, dotb, (j0, cols), None);
            for (p, ds) in pt[..cols].iter_mut().zip(&mut dst[..cols]) {
                p.iter_mut().zip(&lse[b]).for_each(|(x, &e)| *x = exp(*x - e));
                // dS = P (dP - D).
                ds.iter_mut().zip(p.iter().zip(&delta[b])).for_each(|(x, (&pv, &dl))| *x = pv * (*x - dl));
            }
            // Key lanes beyond `cols` keep an earlier block's values: they land in lanes of keys
            // beyond T, which are never read.
            super::layout::transpose_into(pt[..cols].as_flattened(), BLOCK, pq.as_flattened_mut(), BLOCK, cols, BLOCK);
            super::layout::transpose_into(dst[..cols].as_flattened(), BLOCK, dsq.as_flattened_mut(), BLOCK, cols, BLOCK);
            let kb = j0 / BLOCK;
            accumulate_pv::<K>(&mut dvt[kb * d..(kb + 1) * d], &pq, &dosb, &ONES);
            // S = (scale Q) K^T: dK takes the scaled queries, dQ the scale once.
            accumulate_pv::<K>(&mut dkt[kb * d..(kb + 1) * d], &dsq, &qsb, &ONES);
            // dQ = scale dS K, the scale once at the end.
            accumulate_pv::<K>(&mut dqt[b * d..(b + 1) * d], &dst[..cols], &k[j0 * d..(j0 + cols) * d], &ONES);
        }
    }
    dqt.iter_mut().flatten().for_each(|x| *x *= scale);
    (dqt, from_rows(&dkt, d, t), from_rows(&dvt, d, t))
}

widest!(forward_one, (d: usize, qkv: (&[Row], &[f32], &[f32]), labels: Option<(&[Row], &[f32])>) -> (Vec<Row>, Vec<Row>), if keys_at_once() == 4 { forward_pair::<4>(d, qkv, labels) } else { forward_pair::<1>(d, qkv, labels) });
widest!(backward_one, (d: usize, qkv: (&[Row], &[f32], &[f32]), grads: (&[Row], &[Row], &[Row]), scale: f32, labels: Option<(&[Row], &[f32])>) -> (Vec<Row>, Vec<f32>, Vec<f32>), if keys_at_once() == 4 { backward_pair::<4>(d, qkv, grads, scale, labels) } else { backward_pair::<1>(d, qkv, grads, scale, labels) });

/// `[T, d]` values to rows of queries, `[blocks * d]` (block b's row dd holds dimension dd of
/// its BLOCK queries), times `scale`, zero beyond T.
fn to_rows(x: &[f32], d: usize, scale: f32) -> Vec<Row> {
    let t = x.len() / d;
    let blocks = t.div_ceil(BLOCK);
    let mut rows = vec![[0.0f32; BLOCK]; blocks * d];
    for (i, v) in x.chunks_exact(d).enumerate() {
        for (dd, &x) in v.iter().enumerate() {
            rows[(i / BLOCK) * d + dd][i % BLOCK] = x * scale;
        }
    }
    rows
}

/// The inverse of [`to_rows`] (without a scale): `[T, d]`.
fn from_rows(rows: &[Row], d: usize, t: usize) -> Vec<f32> {
    (0..t * d).map(|at| rows[(at / d / BLOCK) * d + at % d][(at / d) % BLOCK]).collect()
}

/// Per-query values `[T]` in rows of BLOCK, padded with `pad`.
fn per_query(x: &[f32], pad: f32) -> Vec<Row> {
    let mut rows = vec![[pad; BLOCK]; x.len().div_ceil(BLOCK)];
    x.iter().enumerate().for_each(|(i, &v)| rows[i / BLOCK][i % BLOCK] = v);
    rows
}

/// A sequence's labels: the queries' in rows (padded queries get a label of their own) and
/// the keys'.
fn labels_of<'a>(g: &AttnGeom, labels: &'a [f32], seq: usize) -> Option<(Vec<Row>, &'a [f32])> {
    let row = label_row(g, labels, seq)?;
    Some((per_query(row, f32::NAN), row))
}

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
    let (t, d) = (g.tokens, g.head_dim);
    let results: Vec<(Vec<f32>, Vec<f32>)> = (0..g.seqs * g.heads)
        .into_par_iter()
        .map(|pair| {
            let (seq, head) = (pair / g.heads, pair % g.heads);
            let qt = to_rows(&gather(g, q, seq, head), d, g.scale());
            let (ks, vs) = (gather(g, k, seq, head), gather(g, v, seq, head));
            let labels = labels_of(g, labels, seq);
            let (ot, lse) = forward_one(d, (&qt, &ks, &vs), labels.as_ref().map(|(q, k)| (q.as_slice(), *k)));
            (from_rows(&ot, d, t), lse.concat()[..t].to_vec())
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
    let (t, d) = (g.tokens, g.head_dim);
    let results: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..g.seqs * g.heads)
        .into_par_iter()
        .map(|pair| {
            let (seq, head) = (pair / g.heads, pair % g.heads);
            let take = |x: &[f32]| gather(g, x, seq, head);
            let (ks, vs, dos) = (take(k), take(v), take(dout));
            // D_i = dO_i . O_i, the softmax backward's row term.
            let delta: Vec<f32> =
                take(o).chunks_exact(d).zip(dos.chunks_exact(d)).map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum()).collect();
            let (qt, dot_t) = (to_rows(&take(q), d, g.scale()), to_rows(&dos, d, 1.0));
            let (lse, delta) = (per_query(&lse[pair * t..(pair + 1) * t], 0.0), per_query(&delta, 0.0));
            let labels = labels_of(g, labels, seq);
            let labels = labels.as_ref().map(|(q, k)| (q.as_slice(), *k));
            let (dqt, dk, dv) = backward_one(d, (&qt, &ks, &vs), (&dot_t, &lse, &delta), g.scale(), labels);
            (from_rows(&dqt, d, t), dk, dv)
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
