//! The 2x2 average pooling between encoder levels (`model::downsample`) and its gradient.
//! flex's forward is a general 3-D pooling: per output it works out the window's valid range,
//! then sums with a bounds check and a scalar division each, 4.9% of `predict`'s CPU time. Here
//! a window is two pairs of adjacent floats. burn's generic backward visits every output's window
//! twice (to count its cells, then to add to them) and starts from zeros; with a 2x2 stride-2
//! window each input cell gets exactly one share, g / 4, so one pass writes it.

use rayon::prelude::*;

/// `[planes, h / 2, w / 2]` from `x [planes, h, w]`, the last row and column of an odd size
/// left out: the same bits as flex, which sums a window from 0 row by row, then divides by 4.
pub fn avg_pool2x2(x: &[f32], planes: usize, (h, w): (usize, usize)) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    assert_eq!(x.len(), planes * h * w);
    let mut out = vec![0f32; planes * ho * wo];
    if ho == 0 || wo == 0 {
        return out;
    }
    out.par_chunks_mut(ho * wo).zip(x.par_chunks(h * w)).for_each(|(o, plane)| {
        for (i, o_row) in o.chunks_exact_mut(wo).enumerate() {
            let (top, bottom) = (&plane[2 * i * w..][..2 * wo], &plane[(2 * i + 1) * w..][..2 * wo]);
            for ((v, t), b) in o_row.iter_mut().zip(top.chunks_exact(2)).zip(bottom.chunks_exact(2)) {
                // From 0 as flex starts: 0 + -0 is +0.
                *v = (0.0 + t[0] + t[1] + b[0] + b[1]) / 4.0;
            }
        }
    });
    out
}

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
