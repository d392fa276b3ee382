//! Winograd's F(2x2, 3x3) for the 3x3 stride-1 convolutions: each 2x2 output tile from its 4x4
//! input tile with 16 products per channel pair instead of the direct kernel's 36 (Lavin and
//! Gray, 2016).
//! - input tiles transformed to `V = B^T d B`, weights to `U = G g G^T`, both per channel;
//! - 16 matrix products `M[xi] = V[xi] U[xi]^T` over the tiles, one per point xi of the 4x4
//!   transform, on the direct kernel's micro-kernel ([`Dense`]);
//! - `A^T M A` back to the 2x2 outputs, plus the bias.
//!
//! It runs the forward where no gradient follows (sampling, `predict`, validation), and in the
//! training step the forward and the input gradient where their padded NHWC copies are whole
//! tiles (even sizes), so that the weight gradient still reads the copies the direct kernels
//! share. The weight gradient stays direct. The transforms' coefficients are 0, +-1 and +-1/2,
//! so the result differs from the direct sum only by rounding (about 1e-6 relative). One task
//! per image and band of tile rows, the band's transformed tiles kept in cache; the split does
//! not depend on the thread count, so neither do the bits.

use rayon::prelude::*;

use super::conv::ConvGeom;
use super::direct::{self, Dense, Nhwc, OC, View};
use super::layout::{SharedOut, assume_init, transpose_to, uninit};

/// Points of the 4x4 transform.
const XI: usize = 16;
/// Tiles per task at least, so that the products get full micro-kernel blocks on small maps.
const MIN_TILES: usize = 48;

/// Whether [`forward`] takes this convolution: 3x3, stride 1, whole blocks of 16 input channels
/// (the transforms' vector width) and at least 16 output channels, on a CPU with the direct
/// kernels. The first layer (one channel) and fcomb's 1x1 layers keep the direct kernel.
pub fn applies(g: &ConvGeom) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == [1, 1]
        && g.c_in.is_multiple_of(OC)
        && g.c_in > 0
        && g.c_out >= OC
        && g.out_hw().is_some()
        && direct::available()
}

/// `U[xi]` for each xi as a [`Dense`] layer `[c_out][c_in]`: `G g G^T` of each 3x3 kernel, with
/// `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`.
fn transform_weights(weight: &[f32], co: usize, ci: usize) -> Vec<Dense> {
    let mut u = vec![0f32; XI * co * ci];
    let rows = |g: [f32; 3]| [g[0], (g[0] + g[1] + g[2]) * 0.5, (g[0] - g[1] + g[2]) * 0.5, g[2]];
    for (pair, k) in weight.chunks_exact(9).enumerate() {
        // G g: each of g's columns through G; then (G g) G^T: each of its rows.
        let cols: [[f32; 4]; 3] = std::array::from_fn(|j| rows([k[j], k[3 + j], k[6 + j]]));
        for i in 0..4 {
            for (j, v) in rows([cols[0][i], cols[1][i], cols[2][i]]).into_iter().enumerate() {
                u[(i * 4 + j) * co * ci + pair] = v;
            }
        }
    }
    u.par_chunks_exact(co * ci).map(|m| Dense::new(m, co, ci, ci)).collect()
}

/// `[batch, c_out, ho, wo]` where [`applies`]; the same sums as `direct::forward` up to rounding.
pub fn forward(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert!(applies(g) && x.len() == g.batch * g.c_in * g.h * g.w && weight.len() == g.c_out * g.c_in * 9);
    let (ho, wo) = g.out_hw().expect("checked by `applies`");
    // Padded so that every tile's 4x4 window lies inside: 2 t + 2 rows and columns.
    let [pt, pl, pb, pr] = g.pad;
    let pad = [pt, pl, pb + 2 * ho.div_ceil(2) + 2 - (g.h + pt + pb), pr + 2 * wo.div_ceil(2) + 2 - (g.w + pl + pr)];
    let input = Nhwc::from_nchw(x, g.batch, (g.c_in, g.h, g.w), pad, g.c_in);
    forward_from(input.view(), g.batch, &transform_weights(weight, g.c_out, g.c_in), g.c_out, (ho, wo), bias)
}

/// Whether the padded NHWC copy a 3x3 stride-1 convolution (or its input gradient) makes,
/// `ho + 2` by `wo + 2` pixels, is already whole tiles: even output sizes, as at every level of
/// the U-Nets. Then the training step's forward and input gradient run here too, on the copies
/// the backward pass shares.
fn whole_tiles(g: &ConvGeom) -> bool {
    applies(g) && g.out_hw().is_some_and(|(ho, wo)| ho % 2 == 0 && wo % 2 == 0)
}

/// [`direct::forward_keep`] on Winograd where the kept copy is whole tiles ([`whole_tiles`]):
/// the same NHWC copy, so the weight gradient reads it as before. None elsewhere.
pub fn forward_keep(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Option<(Vec<f32>, Vec<f32>)> {
    if !whole_tiles(g) {
        return None;
    }
    let input = Nhwc::from_nchw(x, g.batch, (g.c_in, g.h, g.w), g.pad, g.c_in);
    let out = forward_from(input.view(), g.batch, &transform_weights(weight, g.c_out, g.c_in), g.c_out, g.out_hw()?, bias);
    Some((out, input.data))
}

/// The input gradient `[batch, c_in, h, w]` from the gradient already padded NHWC
/// (`direct::x_backward_pad`), as `direct::backward_x_from` computes it: the forward of the
/// gradient with the kernel flipped and its channels swapped. None where that convolution is
/// not whole tiles or not Winograd's.
pub(super) fn backward_x_from(g: &ConvGeom, weight: &[f32], grad: View) -> Option<Vec<f32>> {
    let pad = direct::x_backward_pad(g);
    let (ho, wo) = g.out_hw()?;
    let t = ConvGeom { batch: g.batch, c_in: g.c_out, h: ho, w: wo, c_out: g.c_in, kh: g.kh, kw: g.kw, stride: g.stride, pad };
    if !whole_tiles(&t) || grad.c != g.c_out {
        return None;
    }
    // w_t[i][o][ky][kx] = w[o][i][2 - ky][2 - kx].
    let mut flipped = vec![0f32; weight.len()];
    for (pair, k) in weight.chunks_exact(9).enumerate() {
        let (o, i) = (pair / g.c_in, pair % g.c_in);
        flipped[(i * g.c_out + o) * 9..][..9].iter_mut().zip(k.iter().rev()).for_each(|(d, v)| *d = *v);
    }
    Some(forward_from(grad, g.batch, &transform_weights(&flipped, g.c_in, g.c_out), g.c_in, (g.h, g.w), None))
}

/// The convolution of a padded NHWC `input` (at least 2 t + 2 rows and columns for t tiles per
/// axis) with the transformed weights `u`, to NCHW `[batch, co, ho, wo]` plus `bias`.
fn forward_from(input: View, batch: usize, u: &[Dense], co: usize, (ho, wo): (usize, usize), bias: Option<&[f32]>) -> Vec<f32> {
    let (th, tw) = (ho.div_ceil(2), wo.div_ceil(2));
    let (hp, wp, ci) = (input.h, input.w, input.c);
    assert!(hp >= 2 * th + 2 && wp >= 2 * tw + 2 && input.data.len() == batch * hp * wp * ci && u.len() == XI);
    let cop = u[0].cop;
    let zeros = vec![0f32; cop];
    let bias: Vec<f32> = bias.map_or(zeros, |b| b.iter().copied().chain(std::iter::repeat(0.0)).take(cop).collect());
    let band = MIN_TILES.div_ceil(tw).min(th);
    let bands = th.div_ceil(band);
    let plane = ho * wo;
    let mut out = uninit(batch * co * plane);
    let dst = SharedOut(out.as_mut_ptr().cast());
    let wide = direct::avx512();
    (0..batch * bands).into_par_iter().for_each_init(
        || (vec![0f32; XI * (band * tw * ci + OC)], vec![0f32; XI * (band * tw * cop + OC)], vec![0f32; 2 * wo * cop]),
        |(v, m, rows), task| {
            let (n, b) = (task / bands, task % bands);
            let (r0, r1) = (b * band, ((b + 1) * band).min(th));
            let tiles = (r1 - r0) * tw;
            // The 16 planes one cache line more than their tiles apart: planes a multiple of
            // 4 KiB apart fell in one L1 set, and the transforms' 16 streams thrashed it.
            let (pv, pm) = (tiles * ci + OC, tiles * cop + OC);
            let img = &input.data[n * hp * wp * ci..][..hp * wp * ci];
            for (t, r) in (r0..r1).flat_map(|r| (0..tw).map(move |c| (r, c))).enumerate() {
                let origin = (2 * r.0 * wp + 2 * r.1) * ci;
                // SAFETY: the 4x4 window at `origin` lies inside the padded image (2 t + 2 rows
                // and columns), and the tile's slot inside `v`'s 16 planes of `tiles` rows.
                unsafe { input_tile(img, origin, wp * ci, ci, v, pv, t * ci, wide) };
            }
            for (xi, d) in u.iter().enumerate() {
                d.apply(&v[xi * pv..], tiles, &mut m[xi * pm..][..tiles * cop]);
            }
            for r in r0..r1 {
                for c in 0..tw {
                    let t = (r - r0) * tw + c;
                    // SAFETY: the tile's 16 rows of `cop` in `m`; its 2x2 outputs inside `rows`
                    // (the last column and row are dropped when wo or ho is odd).
                    unsafe { output_tile(m, pm, t * cop, cop, &bias, rows, wo, 2 * c, wide) };
                }
                for i in 0..2.min(ho - 2 * r) {
                    let y = 2 * r + i;
                    // SAFETY: row y of image n in each of its c_out planes: inside `out`, and
                    // written by this task alone.
                    unsafe { transpose_to(&rows[i * wo * cop..], cop, dst.add(n * co * plane + y * wo), plane, wo, co) };
                }
            }
        },
    );
    // SAFETY: the tasks wrote every row of every channel of every image.
    unsafe { assume_init(out) }
}

/// `B^T d B` of the 4x4 window at `img[origin..]` (rows `row` floats apart, pixels `ci` apart),
/// channel by channel, into `v[xi * plane + at..][..ci]`, with
/// `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; the window and the 16 destinations must be in bounds.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn input_tile(img: &[f32], origin: usize, row: usize, ci: usize, v: &mut [f32], plane: usize, at: usize, wide: bool) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        assert!(origin + 3 * row + 4 * ci <= img.len() && 15 * plane + at + ci <= v.len());
        // SAFETY: the assert bounds the window and the 16 destinations; the caller checked AVX-512F.
        return unsafe { input_tile_wide(img[origin..].as_ptr(), row, ci, v[at..].as_mut_ptr(), plane) };
    }
    let _ = wide;
    for c0 in (0..ci).step_by(OC) {
        // B^T d: rows combined, per column j (e[i][j]).
        let mut e = [[[0f32; OC]; 4]; 4];
        for j in 0..4 {
            let d = |i: usize| &img[origin + i * row + j * ci + c0..][..OC];
            let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
            for l in 0..OC {
                e[0][j][l] = d0[l] - d2[l];
                e[1][j][l] = d1[l] + d2[l];
                e[2][j][l] = d2[l] - d1[l];
                e[3][j][l] = d1[l] - d3[l];
            }
        }
        // (B^T d) B: columns combined, per row i.
        for (i, e) in e.iter().enumerate() {
            let mut o = [[0f32; OC]; 4];
            for l in 0..OC {
                o[0][l] = e[0][l] - e[2][l];
                o[1][l] = e[1][l] + e[2][l];
                o[2][l] = e[2][l] - e[1][l];
                o[3][l] = e[1][l] - e[3][l];
            }
            for (j, o) in o.iter().enumerate() {
                v[(i * 4 + j) * plane + at + c0..][..OC].copy_from_slice(o);
            }
        }
    }
}

/// `A^T m A + bias` of one tile's 16 products (`m[xi * plane + at..][..cop]`) into output
/// pixels `x0` and `x0 + 1` of both rows of `rows` (two NHWC rows of `wo` pixels), with
/// `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`; a column at `wo` is dropped.
///
/// # Safety
/// The CPU must have AVX2 and FMA; the 16 sources must be in bounds and `rows` hold 2 x `wo` x `cop`.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn output_tile(m: &[f32], plane: usize, at: usize, cop: usize, bias: &[f32], rows: &mut [f32], wo: usize, x0: usize, wide: bool) {
    #[cfg(target_arch = "x86_64")]
    if wide {
        assert!(15 * plane + at + cop <= m.len() && bias.len() == cop && x0 < wo && 2 * wo * cop <= rows.len());
        // SAFETY: the assert bounds the 16 sources and both rows' pixels x0 and (if < wo) x0 + 1.
        return unsafe { output_tile_wide(m[at..].as_ptr(), plane, cop, bias, rows.as_mut_ptr(), wo, x0) };
    }
    let _ = wide;
    for c0 in (0..cop).step_by(OC) {
        // A^T m: rows combined, per column j (s[i][j]).
        let mut s = [[[0f32; OC]; 4]; 2];
        for j in 0..4 {
            let p = |i: usize| &m[(i * 4 + j) * plane + at + c0..][..OC];
            let (m0, m1, m2, m3) = (p(0), p(1), p(2), p(3));
            for l in 0..OC {
                s[0][j][l] = m0[l] + m1[l] + m2[l];
                s[1][j][l] = m1[l] - m2[l] - m3[l];
            }
        }
        let b = &bias[c0..][..OC];
        // (A^T m) A + bias: columns combined, per row i.
        for (i, s) in s.iter().enumerate() {
            let mut y = [[0f32; OC]; 2];
            for l in 0..OC {
                y[0][l] = s[0][l] + s[1][l] + s[2][l] + b[l];
                y[1][l] = s[1][l] - s[2][l] - s[3][l] + b[l];
            }
            for (j, y) in y.iter().enumerate().take(wo - x0) {
                rows[(i * wo + x0 + j) * cop + c0..][..OC].copy_from_slice(y);
            }
        }
    }
}

/// [`input_tile`] in AVX-512 registers: a 16-channel slice of the window is 16 registers.
///
/// # Safety
/// The CPU must have AVX-512F; `img` the window's first value, rows `row` apart, and `v` the
/// first of 16 destinations `plane` apart, each `ci` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn input_tile_wide(img: *const f32, row: usize, ci: usize, v: *mut f32, plane: usize) {
    use std::arch::x86_64::*;
    unsafe {
        for c0 in (0..ci).step_by(OC) {
            let mut e = [[_mm512_setzero_ps(); 4]; 4];
            for (j, e) in e.iter_mut().enumerate() {
                let d: [__m512; 4] = std::array::from_fn(|i| _mm512_loadu_ps(img.add(i * row + j * ci + c0)));
                *e = [_mm512_sub_ps(d[0], d[2]), _mm512_add_ps(d[1], d[2]), _mm512_sub_ps(d[2], d[1]), _mm512_sub_ps(d[1], d[3])];
            }
            // e[j][i] is (B^T d)[i][j]: row i gathers one register from each column.
            #[allow(clippy::needless_range_loop)]
            for i in 0..4 {
                let o = [
                    _mm512_sub_ps(e[0][i], e[2][i]),
                    _mm512_add_ps(e[1][i], e[2][i]),
                    _mm512_sub_ps(e[2][i], e[1][i]),
                    _mm512_sub_ps(e[1][i], e[3][i]),
                ];
                for (j, o) in o.into_iter().enumerate() {
                    _mm512_storeu_ps(v.add((i * 4 + j) * plane + c0), o);
                }
            }
        }
    }
}

/// [`output_tile`] in AVX-512 registers.
///
/// # Safety
/// The CPU must have AVX-512F; `m` the tile's first product, the 16 `plane` apart with `cop`
/// floats each; `rows` two rows of `wo` pixels of `cop`, with pixel `x0` inside.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn output_tile_wide(m: *const f32, plane: usize, cop: usize, bias: &[f32], rows: *mut f32, wo: usize, x0: usize) {
    use std::arch::x86_64::*;
    unsafe {
        for c0 in (0..cop).step_by(OC) {
            let mut s = [[_mm512_setzero_ps(); 2]; 4];
            for (j, s) in s.iter_mut().enumerate() {
                let p: [__m512; 4] = std::array::from_fn(|i| _mm512_loadu_ps(m.add((i * 4 + j) * plane + c0)));
                *s = [_mm512_add_ps(_mm512_add_ps(p[0], p[1]), p[2]), _mm512_sub_ps(_mm512_sub_ps(p[1], p[2]), p[3])];
            }
            // s[j][i] is (A^T m)[i][j].
            let b = _mm512_loadu_ps(bias.as_ptr().add(c0));
            #[allow(clippy::needless_range_loop)] // row i gathers one register from each column
            for i in 0..2 {
                let y0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s[0][i], s[1][i]), s[2][i]), b);
                let y1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s[1][i], s[2][i]), s[3][i]), b);
                _mm512_storeu_ps(rows.add((i * wo + x0) * cop + c0), y0);
                if x0 + 1 < wo {
                    _mm512_storeu_ps(rows.add((i * wo + x0 + 1) * cop + c0), y1);
                }
            }
        }
    }
}
