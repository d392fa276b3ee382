//! The gradient of the 2x2 average pooling between encoder levels (`model::downsample`), and
//! reflection padding (the CycleGAN's) forward and backward.
//! burn's generic backward visits every output's window twice (to count its cells, then to add
//! to them) and starts from zeros; with a 2x2 stride-2 window each input cell gets exactly one
//! share, g / 4, so one pass writes it. The forward stays flex's.

use rayon::prelude::*;

/// `dx [planes, h, w]` from `grad [planes, h / 2, w / 2]`: each output's gradient over 4 to the
/// cells of its window; the last row and column of an odd-sized input, which no window covers,
/// get 0. The same values as burn's backward: its `0 + g / 4` is `g / 4`.
pub fn avg_pool2x2_backward(grad: &[f32], planes: usize, (h, w): (usize, usize)) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    assert_eq!(grad.len(), planes * ho * wo);
    let mut dx = vec![0f32; planes * h * w];
    if ho == 0 || wo == 0 {
        return dx;
    }
    dx.par_chunks_mut(h * w).zip(grad.par_chunks(ho * wo)).for_each(|(plane, g)| {
        for (i, g_row) in g.chunks_exact(wo).enumerate() {
            let (top, bottom) = plane[2 * i * w..(2 * i + 2) * w].split_at_mut(w);
            for (j, &v) in g_row.iter().enumerate() {
                let v = v / 4.0;
                top[2 * j] = v;
                top[2 * j + 1] = v;
                bottom[2 * j] = v;
                bottom[2 * j + 1] = v;
            }
        }
    });
    dx
}

/// Where padded index `i` of a reflection padding `p` reads from, in an axis of `n` (p < n):
/// -k reads k, n - 1 + k reads n - 1 - k (the edge is not repeated).
fn reflect_index(i: usize, p: usize, n: usize) -> usize {
    let j = i as isize - p as isize;
    let n = n as isize;
    (if j < 0 { -j } else if j >= n { 2 * (n - 1) - j } else { j }) as usize
}

/// Reflection padding by `p` on every side of each `[h, w]` plane of `x`: one pass, where burn
/// composes it from slices, flips and concatenations (the CycleGAN's residual blocks).
pub fn reflect_pad(x: &[f32], planes: usize, (h, w): (usize, usize), p: usize) -> Vec<f32> {
    assert!(p < h && p < w && x.len() == planes * h * w);
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let mut out = vec![0f32; planes * hp * wp];
    out.par_chunks_mut(hp * wp).zip(x.par_chunks(h * w)).for_each(|(dst, src)| {
        for (y, row) in dst.chunks_exact_mut(wp).enumerate() {
            let s = &src[reflect_index(y, p, h) * w..][..w];
            row[p..p + w].copy_from_slice(s);
            for k in 1..=p {
                row[p - k] = s[k];
                row[p + w - 1 + k] = s[w - 1 - k];
            }
        }
    });
    out
}

/// The gradient of [`reflect_pad`]: each padded cell's gradient added to the cell it reads.
pub fn reflect_pad_backward(grad: &[f32], planes: usize, (h, w): (usize, usize), p: usize) -> Vec<f32> {
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    assert!(p < h && p < w && grad.len() == planes * hp * wp);
    let mut dx = vec![0f32; planes * h * w];
    dx.par_chunks_mut(h * w).zip(grad.par_chunks(hp * wp)).for_each(|(dst, g)| {
        for (y, row) in g.chunks_exact(wp).enumerate() {
            let d = &mut dst[reflect_index(y, p, h) * w..][..w];
            for (x, v) in row.iter().enumerate() {
                d[reflect_index(x, p, w)] += v;
            }
        }
    });
    dx
}
