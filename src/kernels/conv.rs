//! 2-D convolution on f32 NCHW slices as GEMMs over each image's im2col matrix
//! `[c_in * kh * kw, ho * wo]`: the forward pass, the input gradient (GEMM, then col2im) and the
//! weight gradient (GEMM against the transposed im2col matrix, summed over the batch).
//! burn's generic fallback computes the weight gradient as a convolution whose kernel is the
//! whole output map; this is the one GEMM PyTorch does.

use gemm::Parallelism;
use rayon::prelude::*;

/// Shapes, stride and padding of one convolution (groups 1, dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    /// Top, left, bottom, right.
    pub pad: [usize; 4],
}

impl ConvGeom {
    /// None when the kernel does not fit the padded input or a stride is 0.
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let [sh, sw] = self.stride;
        let (ph, pw) = (self.h + self.pad[0] + self.pad[2], self.w + self.pad[1] + self.pad[3]);
        if sh == 0 || sw == 0 || self.kh == 0 || self.kw == 0 || ph < self.kh || pw < self.kw {
            return None;
        }
        Some(((ph - self.kh) / sh + 1, (pw - self.kw) / sw + 1))
    }

    fn hw_out(&self) -> usize {
        self.out_hw().map(|(h, w)| h * w).expect("geometry checked by the caller")
    }

    /// Rows of the im2col matrix.
    fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// A 1x1 stride-1 unpadded convolution: the image itself is its im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0; 4]
    }

    fn cols_len(&self) -> usize {
        if self.pointwise() { 0 } else { self.k() * self.hw_out() }
    }
}

/// Output columns `ox` whose input column `ox * s + k - p` lies inside `0..w`.
fn valid_range(wo: usize, s: usize, k: usize, p: usize, w: usize) -> (usize, usize) {
    let lo = if k >= p { 0 } else { (p - k).div_ceil(s) };
    let hi = if w + p > k { ((w + p - k - 1) / s + 1).min(wo) } else { 0 };
    (lo.min(hi), hi)
}

/// Calls `f(offset of the row segment in cols, offset of the channel's plane, offset of input row
/// iy in it (None in the padding), valid output columns lo..hi, input column of lo)` for every
/// (channel, ki, kj, oy) in im2col order.
fn walk(g: &ConvGeom, mut f: impl FnMut(usize, usize, Option<usize>, (usize, usize), usize)) {
    let (ho, wo) = g.out_hw().expect("geometry checked by the caller");
    let [sh, sw] = g.stride;
    let (pt, pl) = (g.pad[0], g.pad[1]);
    let mut row = 0;
    for c in 0..g.c_in {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let (lo, hi) = valid_range(wo, sw, kj, pl, g.w);
                let first = if lo < hi { lo * sw + kj - pl } else { 0 };
                for oy in 0..ho {
                    let iy = (oy * sh + ki).checked_sub(pt).filter(|&iy| iy < g.h);
                    f(row * ho * wo + oy * wo, c * g.h * g.w, iy.map(|iy| iy * g.w), (lo, hi), first);
                }
                row += 1;
            }
        }
    }
}

fn im2col(g: &ConvGeom, x: &[f32], cols: &mut [f32]) {
    let (_, wo) = g.out_hw().expect("geometry checked by the caller");
    let sw = g.stride[1];
    walk(g, |dst, plane, iy, (lo, hi), first| {
        let dst = &mut cols[dst..dst + wo];
        let Some(iy) = iy else {
            dst.fill(0.0);
            return;
        };
        let src = &x[plane + iy..plane + iy + g.w];
        dst[..lo].fill(0.0);
        dst[hi..].fill(0.0);
        if sw == 1 {
            dst[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
        } else {
            for (d, s) in dst[lo..hi].iter_mut().zip(src[first..].iter().step_by(sw)) {
                *d = *s;
            }
        }
    });
}

/// Adds each im2col entry back onto the input pixel it was read from.
fn col2im(g: &ConvGeom, cols: &[f32], dx: &mut [f32]) {
    let sw = g.stride[1];
    walk(g, |src, plane, iy, (lo, hi), first| {
        let Some(iy) = iy else { return };
        let dst = &mut dx[plane + iy..plane + iy + g.w];
        for (d, s) in dst[first..].iter_mut().step_by(sw).zip(&cols[src + lo..src + hi]) {
            *d += *s;
        }
    });
}

/// A matrix in a slice: element (r, c) at `r * rs + c * cs`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// `dst (m x n, element (r, c) at r * rs + c * cs) = (accumulate ? dst : 0) + a (m x k) * b (k x n)`.
/// The callers put the pixel dimension in m with column-major operands, the layout in which the
/// gemm crate runs fastest here (measured: 1.4x over pixels in n).
fn matmul(dst: (&mut [f32], usize, usize), accumulate: bool, (m, n, k): (usize, usize, usize), a: Mat, b: Mat, par: Parallelism) {
    let (dst, d_rs, d_cs) = dst;
    let last = |rs: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * rs + (cols - 1) * cs;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    assert!(dst.len() > last(d_rs, d_cs, m, n) && a.data.len() > last(a.rs, a.cs, m, k) && b.data.len() > last(b.rs, b.cs, k, n));
    // SAFETY: the assert above keeps every index gemm reads or writes inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            d_cs as isize,
            d_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Runs `f(image, its chunk of out, a scratch buffer, GEMM parallelism)` for every image:
/// images in parallel when there are enough of them, else one by one with parallel GEMMs.
fn per_image(batch: usize, out: &mut [f32], scratch: usize, f: impl Fn(usize, &mut [f32], &mut [f32], Parallelism) + Sync) {
    if batch == 0 || out.is_empty() {
        return;
    }
    let chunk = out.len() / batch;
    if batch >= rayon::current_num_threads() {
        out.par_chunks_mut(chunk).enumerate().for_each_init(|| vec![0f32; scratch], |buf, (n, o)| f(n, o, buf, Parallelism::None));
    } else {
        let mut buf = vec![0f32; scratch];
        for (n, o) in out.chunks_mut(chunk).enumerate() {
            f(n, o, &mut buf, Parallelism::Rayon(0));
        }
    }
}

/// `[batch, c_out, ho, wo]`. Not on the training path: the forward runs on the direct kernel,
/// or without AVX2 on flex's own conv2d, which measured as fast as this; kept, and tested
/// against burn, as the GEMM baseline.
pub fn forward(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (hw, k, img) = (g.hw_out(), g.k(), g.c_in * g.h * g.w);
    let mut out = vec![0f32; g.batch * g.c_out * hw];
    per_image(g.batch, &mut out, g.cols_len(), |n, o, cols, par| {
        let xi = &x[n * img..(n + 1) * img];
        let cols: &[f32] = if g.pointwise() {
            xi
        } else {
            im2col(g, xi, cols);
            cols
        };
        // out^T (hw x c_out) = cols^T (hw x k) * W^T (k x c_out).
        let (cols_t, w_t) = (Mat { data: cols, rs: 1, cs: hw }, Mat { data: weight, rs: 1, cs: k });
        matmul((&mut *o, 1, hw), false, (hw, g.c_out, k), cols_t, w_t, par);
        if let Some(b) = bias {
            for (row, b) in o.chunks_mut(hw).zip(b) {
                row.iter_mut().for_each(|v| *v += b);
            }
        }
    });
    out
}

/// The gradient with respect to the input, `[batch, c_in, h, w]`.
pub fn backward_x(g: &ConvGeom, weight: &[f32], grad: &[f32]) -> Vec<f32> {
    let (hw, k, img) = (g.hw_out(), g.k(), g.c_in * g.h * g.w);
    let mut dx = vec![0f32; g.batch * img];
    // dcols^T (hw x k) = grad^T (hw x c_out) * W (c_out x k).
    let w = Mat { data: weight, rs: k, cs: 1 };
    per_image(g.batch, &mut dx, g.cols_len(), |n, dxi, dcols, par| {
        let gi_t = Mat { data: &grad[n * g.c_out * hw..(n + 1) * g.c_out * hw], rs: 1, cs: hw };
        if g.pointwise() {
            matmul((dxi, 1, hw), false, (hw, k, g.c_out), gi_t, w, par);
        } else {
            matmul((&mut *dcols, 1, hw), false, (hw, k, g.c_out), gi_t, w, par);
            col2im(g, dcols, dxi);
        }
    });
    dx
}

/// The gradient with respect to the weight, `[c_out, c_in, kh, kw]`, summed over the batch.
pub fn backward_weight(g: &ConvGeom, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let (hw, k, img) = (g.hw_out(), g.k(), g.c_in * g.h * g.w);
    let len = g.c_out * k;
    // Accumulates images `range` into `acc`.
    let accumulate = |range: std::ops::Range<usize>, acc: &mut [f32], cols: &mut [f32], par: Parallelism| {
        for (i, n) in range.enumerate() {
            let xi = &x[n * img..(n + 1) * img];
            let cols: &[f32] = if g.pointwise() {
                xi
            } else {
                im2col(g, xi, cols);
                cols
            };
            // dW^T (k x c_out) += cols (k x hw) * grad^T (hw x c_out).
            let gi_t = Mat { data: &grad[n * g.c_out * hw..(n + 1) * g.c_out * hw], rs: 1, cs: hw };
            matmul((&mut *acc, 1, k), i > 0, (k, g.c_out, hw), Mat { data: cols, rs: hw, cs: 1 }, gi_t, par);
        }
    };
    let threads = rayon::current_num_threads().min(g.batch).max(1);
    if threads == 1 || g.batch < rayon::current_num_threads() {
        let mut acc = vec![0f32; len];
        accumulate(0..g.batch, &mut acc, &mut vec![0f32; g.cols_len()], Parallelism::Rayon(0));
        return acc;
    }
    let per = g.batch.div_ceil(threads);
    let partials: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .map(|t| {
            let mut acc = vec![0f32; len];
            let range = (t * per).min(g.batch)..((t + 1) * per).min(g.batch);
            accumulate(range, &mut acc, &mut vec![0f32; g.cols_len()], Parallelism::None);
            acc
        })
        .collect();
    // Summed in a fixed order, so that a run's gradients are the same bits every time.
    let mut partials = partials.into_iter();
    let mut sum = partials.next().unwrap_or_else(|| vec![0f32; len]);
    for p in partials {
        sum.iter_mut().zip(&p).for_each(|(x, y)| *x += y);
    }
    sum
}
