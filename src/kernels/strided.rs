//! The input gradient of a strided convolution (the CycleGAN's downsampling layers, the
//! PatchGAN's 4x4 stride-2 layers) and with it the transposed convolution's forward, on the
//! direct kernels, split by phase. Along an axis with stride s, input pixel i = s*m + phi takes
//! gradient only through the taps k with k = i + pad (mod s), so each phase is a stride-1
//! convolution of the gradient with that sub-kernel, flipped. One padded NHWC copy of the
//! gradient serves every phase; each phase's result is then interleaved into dx. Neither an
//! im2col matrix nor zeros inserted between the gradient's pixels (s^2 times the work).

use rayon::prelude::*;

use super::conv::ConvGeom;
use super::direct::{Fwd, Nhwc, convolve_at, pack_weight, round_up};

/// The input pixels phi, phi + s, ... of one axis: `count` of them, reached through the taps
/// `first_tap`, `first_tap + s`, ... (`taps` of them); the phase's stride-1 convolution reads
/// the gradient from `off` on (negative: in the padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Phase {
    first_tap: usize,
    taps: usize,
    off: isize,
    count: usize,
}

/// The `s` phases of an axis of `n` input pixels, kernel `k`, leading pad `p`.
fn phases(k: usize, s: usize, p: usize, n: usize) -> Vec<Phase> {
    (0..s)
        .map(|phi| {
            let r = (phi + p) % s;
            let taps = if r < k { (k - r).div_ceil(s) } else { 0 };
            // Output o = m + q - t reaches input s*m + phi through tap r + s*t.
            let q = ((phi + p - r) / s) as isize;
            Phase { first_tap: r, taps, off: q - taps as isize + 1, count: n.saturating_sub(phi).div_ceil(s) }
        })
        .collect()
}

/// The gradient's zero border (before, after) along an axis of `n_out` gradient pixels, so that
/// every phase's window stays inside the padded copy.
fn border(phases: &[Phase], n_out: usize) -> (usize, usize) {
    let live = || phases.iter().filter(|p| p.taps > 0 && p.count > 0);
    let before = live().map(|p| (-p.off).max(0) as usize).max().unwrap_or(0);
    let last = |p: &Phase| p.count as isize - 1 + p.off + p.taps as isize - 1;
    let after = live().map(|p| (last(p) - (n_out as isize - 1)).max(0) as usize).max().unwrap_or(0);
    (before, after)
}

/// Whether [`backward_x`] takes this geometry: a stride above 1 on some axis (stride 1 has its
/// own path in `direct.rs`).
pub fn applies(g: &ConvGeom) -> bool {
    g.stride != [1, 1] && g.out_hw().is_some()
}

/// The taps `(first, first + s, ...)` of each axis of `weight [c_out, c_in, kh, kw]`.
fn sub_kernel(weight: &[f32], g: &ConvGeom, (fy, ty): (usize, usize), (fx, tx): (usize, usize)) -> Vec<f32> {
    let [sh, sw] = g.stride;
    let mut sub = Vec::with_capacity(g.c_out * g.c_in * ty * tx);
    for oi in 0..g.c_out * g.c_in {
        let k = &weight[oi * g.kh * g.kw..][..g.kh * g.kw];
        for a in 0..ty {
            sub.extend((0..tx).map(|b| k[(fy + sh * a) * g.kw + fx + sw * b]));
        }
    }
    sub
}

/// The input gradient `[batch, c_in, h, w]` of a convolution where [`applies`].
pub fn backward_x(g: &ConvGeom, weight: &[f32], grad: &[f32]) -> Vec<f32> {
    let (ho, wo) = g.out_hw().expect("geometry checked by the caller");
    let [sh, sw] = g.stride;
    let (py, px) = (phases(g.kh, sh, g.pad[0], g.h), phases(g.kw, sw, g.pad[1], g.w));
    let ((top, bottom), (left, right)) = (border(&py, ho), border(&px, wo));
    let padded = Nhwc::from_nchw(grad, g.batch, (g.c_out, ho, wo), [top, left, bottom, right], g.c_out);
    // Phases without taps (a kernel narrower than the stride) get no gradient: zeros.
    let mut dx = vec![0f32; g.batch * g.c_in * g.h * g.w];
    for (a, fy) in py.iter().enumerate().filter(|(_, p)| p.taps > 0 && p.count > 0) {
        for (b, fx) in px.iter().enumerate().filter(|(_, p)| p.taps > 0 && p.count > 0) {
            let sub = sub_kernel(weight, g, (fy.first_tap, fy.taps), (fx.first_tap, fx.taps));
            let packed = pack_weight(&sub, (g.c_out, g.c_in, fy.taps, fx.taps), true, round_up(g.c_in));
            let f = Fwd { kh: fy.taps, kw: fx.taps, stride: [1, 1], ho: fy.count, wo: fx.count };
            let origin = [(fy.off + top as isize) as usize, (fx.off + left as isize) as usize];
            let part = convolve_at(padded.view(), origin, g.batch, &packed, g.c_in, f, None);
            interleave(&mut dx, &part, (g.h, g.w), (fy.count, fx.count), (a, b), (sh, sw));
        }
    }
    dx
}

/// `dx[plane][s*m + a][s*j + b] = part[plane][m][j]`, plane by plane in parallel.
fn interleave(
    dx: &mut [f32],
    part: &[f32],
    (h, w): (usize, usize),
    (cy, cx): (usize, usize),
    (a, b): (usize, usize),
    (sh, sw): (usize, usize),
) {
    dx.par_chunks_mut(h * w).zip(part.par_chunks(cy * cx)).for_each(|(plane, src)| {
        for (m, row) in src.chunks_exact(cx).enumerate() {
            let dst = &mut plane[(sh * m + a) * w..][..w];
            for (j, v) in row.iter().enumerate() {
                dst[sw * j + b] = *v;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (input pixel, tap) pair the definition i = s*o + k - p links, found by brute force,
    /// is covered by exactly one phase's window, and no phase reads outside its border.
    #[test]
    fn phases_cover_the_taps() {
        for (k, s, p, n) in [(3, 2, 1, 8), (3, 2, 1, 7), (4, 2, 1, 9), (1, 2, 0, 5), (7, 3, 2, 11), (2, 2, 0, 6)] {
            let n_out = (n + 2 * p - k) / s + 1;
            let ph = phases(k, s, p, n);
            let (before, after) = border(&ph, n_out);
            for i in 0..n {
                let f = ph[i % s];
                let m = (i / s) as isize;
                let mut from_phase: Vec<(isize, usize)> =
                    (0..f.taps).map(|u| (m + f.off + u as isize, f.first_tap + s * (f.taps - 1 - u))).collect();
                from_phase.retain(|&(o, _)| o >= 0 && (o as usize) < n_out);
                for u in 0..f.taps {
                    let o = m + f.off + u as isize;
                    assert!(o + before as isize >= 0 && o < (n_out + after) as isize, "k{k} s{s} p{p} n{n}: read outside the border");
                }
                let mut brute: Vec<(isize, usize)> = (0..n_out)
                    .flat_map(|o| (0..k).map(move |t| (o, t)))
                    .filter(|&(o, t)| o * s + t == i + p)
                    .map(|(o, t)| (o as isize, t))
                    .collect();
                from_phase.sort();
                brute.sort();
                assert_eq!(from_phase, brute, "k{k} s{s} p{p} n{n} i{i}");
            }
        }
    }
}
