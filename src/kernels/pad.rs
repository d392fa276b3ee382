//! Reflection padding (the CycleGAN's, before its 3x3 and 7x7 convolutions) in one pass each
//! way: burn builds it from slices, flips and slice-assigns into a new tensor, each a graph
//! node with its own backward pass.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::layout::par_init;

/// Where padded index `i` of a reflection padding `p` reads from, in an axis of `n` (p < n):
/// -k reads k, n - 1 + k reads n - 1 - k (the edge is not repeated).
fn reflect_index(i: usize, p: usize, n: usize) -> usize {
    let j = i as isize - p as isize;
    let n = n as isize;
    (if j < 0 {
        -j
    } else if j >= n {
        2 * (n - 1) - j
    } else {
        j
    }) as usize
}

/// Reflection padding by `p` on every side of each `[h, w]` plane of `x`, in one pass: each row
/// copied from the row it reflects, then its border columns mirrored.
pub fn reflect_pad(x: &[f32], planes: usize, (h, w): (usize, usize), p: usize) -> Vec<f32> {
    assert!(p < h && p < w && x.len() == planes * h * w);
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let fill = |plane: usize, dst: &mut [MaybeUninit<f32>]| {
        let src = &x[plane * h * w..][..h * w];
        for (y, row) in dst.chunks_exact_mut(wp).enumerate() {
            let s = &src[reflect_index(y, p, h) * w..][..w];
            for (d, v) in row[p..p + w].iter_mut().zip(s) {
                d.write(*v);
            }
            for k in 1..=p {
                row[p - k].write(s[k]);
                row[p + w - 1 + k].write(s[w - 1 - k]);
            }
        }
    };
    // SAFETY: each plane's rows are written whole: the copied middle and both mirrored borders.
    unsafe { par_init(planes * hp * wp, hp * wp, fill) }
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
