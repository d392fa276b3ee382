//! Direct convolution on channels-last (NHWC) copies with an AVX2/FMA register-blocked
//! micro-kernel: no im2col matrix. Each step broadcasts one input value per pixel of a block
//! of up to 6 pixels and multiplies it with 16 output channels' weights, holding the 6 x 16
//! sums in twelve registers (oneDNN's scheme). On AVX-512 a block is 12 pixels, one register
//! of 16 sums each, with the same bits. Measured 2-3x faster than im2col + the gemm crate on
//! the U-Net's 3x3 layers (docs/benchmarks.md).
//!
//! - forward: any kernel size, stride and padding;
//! - input gradient: stride 1 with every pad below the kernel size, as the forward of the
//!   gradient (padded by k-1-p) with the kernel flipped and its channels swapped;
//! - weight gradient: any geometry, as a sum over output pixels in fixed-size row chunks, so
//!   that the result is the same bits however many threads run it.
//!
//! Available on x86-64 CPUs with AVX2 and FMA; elsewhere the callers use the GEMM path.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::conv::ConvGeom;
use super::layout::{SharedOut, assume_init, par_init, transpose, transpose_into, transpose_to, uninit, zero};

/// Output channels per micro-kernel call: two AVX vectors, or one AVX-512 vector.
pub(super) const OC: usize = 16;
/// Pixels (forward) or input channels (weight gradient) per AVX2 micro-kernel call.
pub(super) const PX: usize = 6;

/// `$f::<P>(args)` with the const block width `P` = `$n` (1 to [`PX_WIDE`]): the micro-kernels
/// keep their P accumulators in registers, so each width is its own instance.
#[cfg(target_arch = "x86_64")]
macro_rules! with_width {
    ($n:expr, $f:ident($($arg:expr),*)) => {
        match $n {
            12 => $f::<12>($($arg),*),
            11 => $f::<11>($($arg),*),
            10 => $f::<10>($($arg),*),
            9 => $f::<9>($($arg),*),
            8 => $f::<8>($($arg),*),
            7 => $f::<7>($($arg),*),
            6 => $f::<6>($($arg),*),
            5 => $f::<5>($($arg),*),
            4 => $f::<4>($($arg),*),
            3 => $f::<3>($($arg),*),
            2 => $f::<2>($($arg),*),
            _ => $f::<1>($($arg),*),
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use with_width;

/// Whether this CPU runs the direct kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the input gradient can run as a forward convolution of the gradient.
pub fn x_backward_applies(g: &ConvGeom) -> bool {
    g.stride == [1, 1] && g.pad[0] < g.kh && g.pad[2] < g.kh && g.pad[1] < g.kw && g.pad[3] < g.kw
}

/// An image batch as NHWC with a zero border, channels padded to `cp`.
pub(super) struct Nhwc {
    pub data: Vec<f32>,
    h: usize,
    w: usize,
    c: usize,
}

impl Nhwc {
    /// `x` NCHW `[batch, c, h, w]`; `pad` top, left, bottom, right; `cp >= c`.
    pub(super) fn from_nchw(x: &[f32], batch: usize, (c, h, w): (usize, usize, usize), pad: [usize; 4], cp: usize) -> Self {
        let (hp, wp) = (h + pad[0] + pad[2], w + pad[1] + pad[3]);
        let row_len = wp * cp;
        let fill = |r: usize, row: &mut [MaybeUninit<f32>]| {
            let (n, y) = (r / hp, r % hp);
            if y < pad[0] || y >= pad[0] + h {
                return zero(row);
            }
            if cp > c {
                zero(row); // the channel padding of every pixel
            } else {
                zero(&mut row[..pad[1] * cp]);
                zero(&mut row[(pad[1] + w) * cp..]);
            }
            transpose(&x[(n * c * h + y - pad[0]) * w..], h * w, &mut row[pad[1] * cp..], cp, c, w);
        };
        // SAFETY: `fill` writes the whole row: zeros, then the image's pixels.
        let data = unsafe { par_init(batch * hp * row_len, row_len, fill) };
        Self { data, h: hp, w: wp, c: cp }
    }

    pub(super) fn view(&self) -> View<'_> {
        View { data: &self.data, h: self.h, w: self.w, c: self.c }
    }
}

/// A padded NHWC batch, borrowed: `h` x `w` pixels of `c` floats per image.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub data: &'a [f32],
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl<'a> View<'a> {
    pub(super) fn image(&self, n: usize) -> &'a [f32] {
        let len = self.h * self.w * self.c;
        &self.data[n * len..(n + 1) * len]
    }
}

/// `[cop / 16][kh][kw][c_in][16]` from `[c_out][c_in][kh][kw]`, flipped and with the channel
/// roles swapped when `transpose` (the input gradient's kernel); output channels padded with
/// zeros. Block-major, so that one block's weights are contiguous: interleaved with the other
/// blocks they spanned 2-8x more cache. A block per task, its source read in order: the
/// paper-size CycleGAN's 256x256x3x3 kernels made a scattered serial copy 3.5% of an iteration,
/// and a parallel gather 5%.
pub(super) fn pack_weight(w: &[f32], (c_out, c_in, kh, kw): (usize, usize, usize, usize), transpose: bool, cop: usize) -> Vec<f32> {
    let (ci, co) = if transpose { (c_out, c_in) } else { (c_in, c_out) };
    assert!(co <= cop && cop.is_multiple_of(OC) && w.len() == c_out * c_in * kh * kw);
    let (rows, taps) = (kh * kw * ci, kh * kw);
    let mut packed = vec![0f32; rows * cop];
    if packed.is_empty() {
        return packed;
    }
    // One block of 16 output channels per task: its lanes' weights transposed to lane-minor
    // order through 8x8 register tiles, then moved 16 floats at a time to their tap's place.
    packed.par_chunks_mut(rows * OC).enumerate().for_each(|(ob, dst)| {
        let lanes = co.saturating_sub(ob * OC).min(OC);
        let mut tmp = vec![0f32; if transpose { taps * OC } else { rows * OC }];
        if !transpose {
            // tmp[a][k][lane] from w[lane][a][k].
            transpose_into(&w[ob * OC * ci * taps..], ci * taps, &mut tmp, OC, lanes, ci * taps);
            for (k, dst) in dst.chunks_exact_mut(ci * OC).enumerate() {
                for (a, dst) in dst.chunks_exact_mut(OC).enumerate() {
                    dst.copy_from_slice(&tmp[(a * taps + k) * OC..][..OC]);
                }
            }
            return;
        }
        // Lanes are w's input channels: per output channel a, tmp[k][lane] from w[a][lane][k].
        for a in 0..ci {
            transpose_into(&w[(a * c_in + ob * OC) * taps..], taps, &mut tmp, OC, lanes, taps);
            for k in 0..taps {
                dst[(k * ci + a) * OC..][..OC].copy_from_slice(&tmp[(taps - 1 - k) * OC..][..OC]);
            }
        }
    });
    packed
}

pub(super) fn round_up(c: usize) -> usize {
    c.div_ceil(OC) * OC
}

/// Geometry of one direct forward convolution over an NHWC padded input.
#[derive(Clone, Copy)]
pub(super) struct Fwd {
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub ho: usize,
    pub wo: usize,
}

/// Forward convolution to NCHW `[batch, co, ho, wo]` plus bias, of an input already in padded
/// NHWC with exactly its channels, where `packed` holds the weights as [`pack_weight`] lays them
/// out.
pub(super) fn convolve_from(input: View, batch: usize, packed: &[f32], co: usize, f: Fwd, bias: Option<&[f32]>) -> Vec<f32> {
    convolve_at(input, [0, 0], batch, packed, co, f, bias)
}

/// [`convolve_from`] with output pixel (0, 0)'s window at input pixel `origin` (row, column)
/// instead of (0, 0): a strided convolution's input-gradient phases (`strided.rs`) each start
/// at their own offset in one padded copy of the gradient.
pub(super) fn convolve_at(
    input: View,
    origin: [usize; 2],
    batch: usize,
    packed: &[f32],
    co: usize,
    f: Fwd,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let ci = input.c;
    assert!(input.data.len() == batch * input.h * input.w * ci);
    let cop = round_up(co);
    assert!(packed.len() == f.kh * f.kw * ci * cop);
    let [y0, x0] = origin;
    assert!(y0 + (f.ho - 1) * f.stride[0] + f.kh <= input.h && x0 + (f.wo - 1) * f.stride[1] + f.kw <= input.w);
    let start = (y0 * input.w + x0) * ci;
    let plane = f.ho * f.wo;
    let mut out = uninit(batch * co * plane);
    let dst = SharedOut(out.as_mut_ptr().cast());
    // Every output row of every image in parallel, through one NHWC row buffer per thread, then
    // straight into NCHW: one image (the CycleGAN's batch) shares out as well as eight.
    (0..batch * f.ho).into_par_iter().for_each_init(
        || vec![0f32; f.wo * cop],
        |row, r| {
            let (n, oy) = (r / f.ho, r % f.ho);
            // SAFETY: the asserts above bound every read of the image and `packed`.
            unsafe { forward_row(&input.image(n)[start..], input.w, ci, packed, cop, f, oy, row) };
            // The bias goes on while the row is in cache, not in a pass over the output.
            if let Some(b) = bias {
                row.chunks_exact_mut(cop).for_each(|px| px.iter_mut().zip(b).for_each(|(v, b)| *v += b));
            }
            // SAFETY: row oy of image n in each of its co planes: inside `out`, and written by
            // this task alone.
            unsafe { transpose_to(row, cop, dst.add(n * co * plane + oy * f.wo), plane, f.wo, co) };
        },
    );
    // SAFETY: the tasks wrote every row of every channel of every image.
    unsafe { assume_init(out) }
}

/// Pixels (forward) or input channels (weight gradient) per block on AVX-512: one register of
/// 16 sums each, so that each weight load feeds 12 FMAs instead of 6 (the [`fwd_block`] tile's
/// 2 x 6).
pub(super) const PX_WIDE: usize = 12;

/// Whether this CPU has AVX-512F, for the [`PX_WIDE`] blocks. `APUNET_NO_AVX512` turns it off,
/// to compare the two tiles on one machine.
pub(super) fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| is_x86_feature_detected!("avx512f") && std::env::var_os("APUNET_NO_AVX512").is_none())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`fwd_block`] with the 16 channels in one AVX-512 register and the input value broadcast
/// from memory into the FMA. Each sum takes its terms in the same order: the same bits.
///
/// # Safety
/// The CPU must have AVX-512F; every tap of the P pixels from (`oy`, `ox`) must lie inside the
/// padded image and `packed` ([`tap`]'s condition), and `row` must hold `(ox + P) * cop` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fwd_block_wide<const P: usize>((img, wp, ci, packed, cop, f): Ctx, oy: usize, ox: usize, ob: usize, row: &mut [f32]) {
    unsafe {
        use std::arch::x86_64::*;
        let mut acc = [_mm512_setzero_ps(); P];
        let step = f.stride[1] * ci;
        for k in 0..f.kh * f.kw {
            let (src, ws) = tap((img, wp, ci, packed, cop, f), oy, ox, ob, k);
            for c in 0..ci {
                rank1_wide(&mut acc, ws.add(c * OC), src.add(c), step);
            }
        }
        for (p, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(row[(ox + p) * cop + ob * OC..][..OC].as_mut_ptr(), *a);
        }
    }
}

/// One output row, all channels, NHWC: `row[ox * cop + c]`.
///
/// # Safety
/// The CPU must have AVX2 and FMA (and AVX-512F where [`avx512`] says so): [`available`] checks
/// both. `img` must be the padded image and `packed` the packed weights of `f`, and `oy` an output
/// row of `f`, as `convolve_at` asserts before it calls this.
#[allow(clippy::too_many_arguments)]
unsafe fn forward_row(img: &[f32], wp: usize, ci: usize, packed: &[f32], cop: usize, f: Fwd, oy: usize, row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        // One block of output channels at a time keeps its weights in cache along the row.
        // Blocks of even width: 32 pixels as 5+5+5+5+6+6, not 6+6+6+6+6+2, whose last block
        // would hold too few sums to hide the FMA's latency.
        let wide = avx512();
        let blocks = f.wo.div_ceil(if wide { PX_WIDE } else { PX });
        let (base, wider) = (f.wo / blocks.max(1), f.wo % blocks.max(1));
        let ctx = (img, wp, ci, packed, cop, f);
        for ob in 0..cop / OC {
            let mut ox = 0;
            for b in 0..blocks {
                let n = base + usize::from(b < wider);
                if wide {
                    with_width!(n, fwd_block_wide(ctx, oy, ox, ob, row));
                } else {
                    with_width!(n, fwd_block(ctx, oy, ox, ob, row));
                }
                ox += n;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (img, wp, ci, packed, cop, f, oy, row);
        unreachable!("the direct kernels run only where `available()`")
    }
}

pub(super) type Ctx<'a> = (&'a [f32], usize, usize, &'a [f32], usize, Fwd);

/// The micro-kernel's step, shared by the forward and the weight gradient: `acc[p] +=
/// v[p * stride] * w[0..16]` for p < P, the 16 values of `w` in two registers.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `w` must point to 16 readable floats and `v` to P readable
/// floats `stride` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn rank1<const P: usize>(acc: &mut [[std::arch::x86_64::__m256; 2]; P], w: *const f32, v: *const f32, stride: usize) {
    use std::arch::x86_64::*;
    unsafe {
        let (w0, w1) = (_mm256_loadu_ps(w), _mm256_loadu_ps(w.add(8)));
        for (p, a) in acc.iter_mut().enumerate() {
            let x = _mm256_broadcast_ss(&*v.add(p * stride));
            a[0] = _mm256_fmadd_ps(x, w0, a[0]);
            a[1] = _mm256_fmadd_ps(x, w1, a[1]);
        }
    }
}

/// [`rank1`] with the 16 values of `w` in one AVX-512 register, each `v` broadcast inside the
/// FMA: the same products, summed in the same order.
///
/// # Safety
/// As [`rank1`], with AVX-512F instead of AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn rank1_wide<const P: usize>(acc: &mut [std::arch::x86_64::__m512; P], w: *const f32, v: *const f32, stride: usize) {
    use std::arch::x86_64::*;
    unsafe {
        let w = _mm512_loadu_ps(w);
        for (p, a) in acc.iter_mut().enumerate() {
            *a = _mm512_fmadd_ps(_mm512_set1_ps(*v.add(p * stride)), w, *a);
        }
    }
}

/// Where the forward's kernel tap `k` reads for the block of pixels from (`oy`, `ox`): its first
/// pixel's input values and output-channel block `ob`'s weights.
///
/// # Safety
/// The tap must lie inside the image and `packed` (`convolve_at`'s asserts).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tap((img, wp, ci, packed, _, f): Ctx, oy: usize, ox: usize, ob: usize, k: usize) -> (*const f32, *const f32) {
    let (ki, kj) = (k / f.kw, k % f.kw);
    // SAFETY: the caller's.
    unsafe {
        let src = img.as_ptr().add(((oy * f.stride[0] + ki) * wp + ox * f.stride[1] + kj) * ci);
        (src, packed.as_ptr().add((ob * f.kh * f.kw + k) * ci * OC))
    }
}

/// P output pixels from `ox` times 16 output channels of block `ob`.
///
/// # Safety
/// As [`fwd_block_wide`], with AVX2 and FMA instead of AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fwd_block<const P: usize>((img, wp, ci, packed, cop, f): Ctx, oy: usize, ox: usize, ob: usize, row: &mut [f32]) {
    unsafe {
        use std::arch::x86_64::*;
        let mut acc = [[_mm256_setzero_ps(); 2]; P];
        let step = f.stride[1] * ci;
        for k in 0..f.kh * f.kw {
            let (src, ws) = tap((img, wp, ci, packed, cop, f), oy, ox, ob, k);
            for c in 0..ci {
                rank1(&mut acc, ws.add(c * OC), src.add(c), step);
            }
        }
        for (p, a) in acc.iter().enumerate() {
            let dst = row[(ox + p) * cop + ob * OC..][..OC].as_mut_ptr();
            _mm256_storeu_ps(dst, a[0]);
            _mm256_storeu_ps(dst.add(8), a[1]);
        }
    }
}

/// A dense layer `out[p][o] = sum_i x[p * ci_stride + i] * w[o][i]` over pixel-major rows, on
/// the forward micro-kernel (a 1x1 convolution of a one-row image); `out` is `[px][cop]`, the
/// padded channels zero. For fcomb's per-sample layers (`kernels/head.rs`).
pub(crate) struct Dense {
    packed: Vec<f32>,
    ci_stride: usize,
    pub cop: usize,
}

impl Dense {
    /// `w` `[co][ci]`; input rows `ci_stride >= ci` floats apart, the extra inputs weighted 0.
    pub fn new(w: &[f32], co: usize, ci: usize, ci_stride: usize) -> Self {
        assert!(w.len() == co * ci && ci_stride >= ci);
        let mut padded = vec![0f32; co * ci_stride];
        for (dst, src) in padded.chunks_exact_mut(ci_stride).zip(w.chunks_exact(ci)) {
            dst[..ci].copy_from_slice(src);
        }
        let cop = round_up(co);
        Self { packed: pack_weight(&padded, (co, ci_stride, 1, 1), false, cop), ci_stride, cop }
    }

    pub fn apply(&self, x: &[f32], px: usize, out: &mut [f32]) {
        assert!(available() && x.len() >= px * self.ci_stride && out.len() >= px * self.cop);
        let f = Fwd { kh: 1, kw: 1, stride: [1, 1], ho: 1, wo: px };
        // SAFETY: the assert bounds every read of `x` (px rows of ci_stride) and write of `out`.
        unsafe { forward_row(x, px, self.ci_stride, &self.packed, self.cop, f, 0, out) };
    }
}

/// `[batch, c_out, ho, wo]`.
pub fn forward(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    forward_keep(g, x, weight, bias).0
}

/// [`forward`], also returning the padded NHWC copy of `x` it convolved, for the weight
/// gradient (`weight_grad::backward_weight_nhwc`), which then need not make its own.
pub fn forward_keep(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let (ho, wo) = g.out_hw().expect("geometry checked by the caller");
    let packed = pack_weight(weight, (g.c_out, g.c_in, g.kh, g.kw), false, round_up(g.c_out));
    let f = Fwd { kh: g.kh, kw: g.kw, stride: g.stride, ho, wo };
    let input = Nhwc::from_nchw(x, g.batch, (g.c_in, g.h, g.w), g.pad, g.c_in);
    let out = convolve_from(input.view(), g.batch, &packed, g.c_out, f, bias);
    (out, input.data)
}

/// The input gradient's padding: the forward's mirrored inside the kernel.
pub(super) fn x_backward_pad(g: &ConvGeom) -> [usize; 4] {
    [g.kh - 1 - g.pad[0], g.kw - 1 - g.pad[1], g.kh - 1 - g.pad[2], g.kw - 1 - g.pad[3]]
}

/// The input gradient from the gradient already in padded NHWC ([`x_backward_pad`], exactly
/// `c_out` channels).
pub(super) fn backward_x_from(g: &ConvGeom, weight: &[f32], grad: View) -> Vec<f32> {
    // A 3x3 convolution's gradient of whole tiles runs on Winograd's transform instead.
    if let Some(dx) = super::winograd::backward_x_from(g, weight, grad) {
        return dx;
    }
    let packed = pack_weight(weight, (g.c_out, g.c_in, g.kh, g.kw), true, round_up(g.c_in));
    let f = Fwd { kh: g.kh, kw: g.kw, stride: [1, 1], ho: g.h, wo: g.w };
    convolve_from(grad, g.batch, &packed, g.c_in, f, None)
}

/// The input gradient `[batch, c_in, h, w]` where [`x_backward_applies`].
pub fn backward_x(g: &ConvGeom, weight: &[f32], grad: &[f32]) -> Vec<f32> {
    let (ho, wo) = g.out_hw().expect("geometry checked by the caller");
    backward_x_from(g, weight, Nhwc::from_nchw(grad, g.batch, (g.c_out, ho, wo), x_backward_pad(g), g.c_out).view())
}
