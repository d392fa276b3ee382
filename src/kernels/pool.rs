//! The gradient of the 2x2 average pooling between encoder levels (`model::downsample`).
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
