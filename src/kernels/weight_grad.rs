//! The weight gradient of the direct convolution (`direct.rs`): a sum over output pixels in
//! fixed-size row chunks, added up in a fixed order, so that the result is the same bits however
//! many threads run it. On the forward's micro-kernel step with the roles changed: input
//! channels across the block, output channels in the registers.
//!
//! The forward keeps its padded NHWC input for this ([`backward_weight_nhwc`]), and where both
//! gradients are wanted, one padded NHWC copy of the incoming gradient serves both
//! ([`backward_both`], where [`shares_grad`]): two of the four layout copies of a convolution's backward pass fewer.

use std::ops::Range;

use rayon::prelude::*;

use super::conv::ConvGeom;
#[cfg(target_arch = "x86_64")]
use super::direct::{Ctx, PX, PX_WIDE, avx512, rank1, rank1_wide, with_width};
use super::direct::{Fwd, Nhwc, OC, View, backward_x_from, round_up, x_backward_applies, x_backward_pad};
use super::layout::{assume_init, uninit};

/// Output rows per work item, at least...
const ROWS: usize = 8;
/// ...and enough rows for this many pixels, across images where they are small: each work item
/// writes a partial sum of the whole kernel. At 16x16 pixels and 192 channels, 8 rows made 16
/// partials of 1.3 MB, past the L2, and the weight gradient ran at 84 GFLOP/s against 101 now.
const CHUNK_PX: usize = 512;
/// Work items at least, where the rows allow, for the threads to share.
const MIN_CHUNKS: usize = 4;
/// The gradient floats of one span of pixels read in place (16 KiB, to stay in L1)...
const SPAN_FLOATS: usize = 4096;
/// ...but at least this many pixels, or re-reading the partial sums for each span costs more.
const MIN_SPAN: usize = 64;
/// Pixels of a span whose gradient is copied ([`Packed`]): one block of 16 channels is then
/// 16 KiB, and the partial sums (2.4 MB at 256 channels) are read a quarter as often as at 64.
#[cfg(target_arch = "x86_64")]
const PACKED_SPAN: usize = 256;

/// Where output pixel (0, 0)'s gradient sits in a padded NHWC gradient `w` pixels wide.
#[derive(Clone, Copy)]
struct GradAt {
    w: usize,
    y0: usize,
    x0: usize,
}

/// The weight gradient `[c_out, c_in, kh, kw]`, summed over the batch.
pub fn backward_weight(g: &ConvGeom, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let input = Nhwc::from_nchw(x, g.batch, (g.c_in, g.h, g.w), g.pad, g.c_in);
    backward_weight_nhwc(g, &input.data, grad)
}

/// [`backward_weight`] from the padded NHWC input the forward kept (`direct::forward_keep`).
pub fn backward_weight_nhwc(g: &ConvGeom, x_nhwc: &[f32], grad: &[f32]) -> Vec<f32> {
    let (ho, wo) = g.out_hw().expect("geometry checked by the caller");
    let grad = Nhwc::from_nchw(grad, g.batch, (g.c_out, ho, wo), [0; 4], round_up(g.c_out));
    weight_grad(g, input_view(g, x_nhwc), grad.view(), GradAt { w: wo, y0: 0, x0: 0 })
}

/// Whether [`backward_both`] applies: a stride-1 input gradient on the direct kernel, and output
/// channels that fill whole micro-kernel blocks, so that one padded copy of the gradient serves
/// both gradients.
pub fn shares_grad(g: &ConvGeom) -> bool {
    x_backward_applies(g) && g.c_out.is_multiple_of(OC)
}

/// The input and weight gradients where [`shares_grad`], from the padded NHWC input the forward
/// kept: the input gradient's padded NHWC copy of the gradient is read by the weight gradient
/// too, from its padding's offset.
pub fn backward_both(g: &ConvGeom, x_nhwc: &[f32], weight: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert!(shares_grad(g), "both gradients from one copy need stride 1 and whole channel blocks");
    let (ho, wo) = g.out_hw().expect("geometry checked by the caller");
    let pad = x_backward_pad(g);
    let grad = Nhwc::from_nchw(grad, g.batch, (g.c_out, ho, wo), pad, g.c_out);
    let dx = backward_x_from(g, weight, grad.view());
    let dw = weight_grad(g, input_view(g, x_nhwc), grad.view(), GradAt { w: grad.view().w, y0: pad[0], x0: pad[1] });
    (dx, dw)
}

fn input_view<'a>(g: &ConvGeom, x_nhwc: &'a [f32]) -> View<'a> {
    let (h, w) = (g.h + g.pad[0] + g.pad[2], g.w + g.pad[1] + g.pad[3]);
    assert!(x_nhwc.len() == g.batch * h * w * g.c_in, "a kept input of another geometry");
    View { data: x_nhwc, h, w, c: g.c_in }
}

/// The sum over every image and output pixel, `grad`'s channels padded to whole blocks.
fn weight_grad(g: &ConvGeom, input: View, grad: View, at: GradAt) -> Vec<f32> {
    let (ho, wo) = g.out_hw().expect("geometry checked by the caller");
    let cop = round_up(g.c_out);
    assert!(grad.c == cop && at.x0 + wo <= grad.w && at.y0 + ho <= grad.h);
    let f = Fwd { kh: g.kh, kw: g.kw, stride: g.stride, ho, wo };
    let len = g.kh * g.kw * g.c_in * cop;
    // Fixed chunks of rows, summed in a fixed order: the same bits on any number of threads. A
    // chunk may span images (rows counted over the batch), taken in order.
    let total = g.batch * ho;
    let per = CHUNK_PX.div_ceil(wo.max(1)).max(ROWS).min(total.div_ceil(MIN_CHUNKS)).max(1);
    let chunks: Vec<usize> = (0..total).step_by(per).collect();
    let partials: Vec<Vec<f32>> = chunks
        .par_iter()
        .map(|&start| {
            let mut acc = uninit(len);
            // SAFETY: the rows lie below the batch's and the NHWC buffers hold the padded
            // geometry `f` reads; the chunk's first span writes every partial sum.
            unsafe {
                weight_rows(input, (grad, at), cop, f, start..(start + per).min(total), acc.as_mut_ptr().cast());
                assume_init(acc)
            }
        })
        .collect();
    // Summed in parallel over the elements, each in the fixed order of the chunks.
    const SUM_CHUNK: usize = 4096;
    let mut partials = partials.into_iter();
    let Some(mut sum) = partials.next() else { return vec![0f32; g.c_out * g.c_in * g.kh * g.kw] };
    let rest: Vec<Vec<f32>> = partials.collect();
    sum.par_chunks_mut(SUM_CHUNK).enumerate().for_each(|(i, s)| {
        for p in &rest {
            s.iter_mut().zip(&p[i * SUM_CHUNK..]).for_each(|(s, v)| *s += v);
        }
    });
    let taps = g.kh * g.kw;
    // Sixteen output channels per task, their sums read 16 at a time. Per input channel, its
    // taps' sums are gathered first, so that each output channel's taps are written as one run:
    // scattered one float at a time they were 1.8% of a CycleGAN iteration.
    let mut dw = vec![0f32; g.c_out * g.c_in * taps];
    dw.par_chunks_mut(OC * g.c_in * taps).enumerate().for_each(|(ob, dw)| {
        let mut block = vec![[0f32; OC]; taps];
        for i in 0..g.c_in {
            for (k, b) in block.iter_mut().enumerate() {
                b.copy_from_slice(&sum[(k * g.c_in + i) * cop + ob * OC..][..OC]);
            }
            for (o, row) in dw.chunks_exact_mut(g.c_in * taps).enumerate() {
                row[i * taps..][..taps].iter_mut().zip(&block).for_each(|(d, b)| *d = b[o]);
            }
        }
    });
    dw
}

/// Writes the contribution of output rows `rows`, counted over the batch, to `acc`
/// `[kh][kw][ci][cop]`, which need not be initialised.
///
/// A span of pixels at a time (part of a row, or whole rows), each span visited for every tap
/// and channel block, so that its gradients stay in cache while every partial sum is read and
/// written once per span. The pixels still reach each sum in row-major order, image by image:
/// the bits do not depend on the span.
///
/// # Safety
/// The direct kernels must be [`available`](super::direct::available) on this CPU; `input` and
/// `grad` must be the padded input and output gradient of `f` for the rows in `rows`, and `acc`
/// must point to `kh * kw * ci * cop` writable floats that no other thread touches.
unsafe fn weight_rows(input: View, (grad, at): (View, GradAt), cop: usize, f: Fwd, rows: Range<usize>, acc: *mut f32) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        let span = if cop >= PACK_FROM { PACKED_SPAN } else { (SPAN_FLOATS / cop).max(MIN_SPAN) };
        let (rows_per, cols) = if f.wo >= span { (1, span) } else { ((span / f.wo).max(1), f.wo) };
        // Input channels per block: the micro-kernel's width.
        let pw = if avx512() { PX_WIDE } else { PX };
        let mut packed = Packed::default();
        let mut first = true;
        for n in rows.start / f.ho..rows.end.div_ceil(f.ho) {
            let ctx = (input.image(n), input.w, input.c, grad.image(n), cop, f);
            let oy = rows.start.max(n * f.ho) - n * f.ho..rows.end.min((n + 1) * f.ho) - n * f.ho;
            for y0 in oy.clone().step_by(rows_per) {
                for x0 in (0..f.wo).step_by(cols) {
                    let px = (y0..(y0 + rows_per).min(oy.end), x0..(x0 + cols).min(f.wo));
                    let dims = (px.0.len(), px.1.len());
                    let ops = packed.fill(ctx, at, px, pw);
                    span_sums(ops, dims, (input.c, cop, pw), f, (acc, first));
                    first = false;
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (input, grad, at, cop, f, rows, acc);
        unreachable!("the direct kernels run only where `available()`")
    }
}

/// One span's `dims` (rows, columns) of pixels through every tap, block of `pw` input channels
/// and block of output channels, added to the sums at `acc` or written there if `first`.
///
/// # Safety
/// `acc` must hold the [kh][kw][ci][cop] sums, the operands must cover the span
/// (`Packed::fill`), and this CPU must have the tile's instructions (`avx512`, or AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
unsafe fn span_sums(
    (input, grad): (Operand, Operand),
    dims: (usize, usize),
    (ci, cop, pw): (usize, usize, usize),
    f: Fwd,
    (acc, first): (*mut f32, bool),
) {
    // SAFETY: the caller's: `acc` holds [kh][kw][ci][cop] sums, the operands cover the span
    // (`Packed::fill`), and this CPU has the tile's instructions (`avx512`, or AVX2).
    unsafe {
        for k in 0..f.kh * f.kw {
            for cb in 0..ci.div_ceil(pw) {
                let n = (ci - cb * pw).min(pw);
                for ob in 0..cop / OC {
                    let out = acc.add((k * ci + cb * pw) * cop + ob * OC);
                    let ops = (input.at(cb), grad.at(ob));
                    if pw == PX_WIDE {
                        with_width!(n, wgt_block_wide(ops, dims, f, k, (out, first), cop));
                    } else {
                        with_width!(n, wgt_block(ops, dims, f, k, (out, first), cop));
                    }
                }
            }
        }
    }
}

/// Where a span's values lie: value `lane` of pixel (row, col) in block `b` at
/// `b * block + row * row_stride + col * px + lane` floats from `ptr`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    block: usize,
    row: usize,
    px: usize,
}

#[cfg(target_arch = "x86_64")]
impl Operand {
    /// Block `b` alone.
    ///
    /// # Safety
    /// Block `b` must lie inside the allocation `ptr` points into.
    unsafe fn at(self, b: usize) -> Self {
        Self { ptr: unsafe { self.ptr.add(b * self.block) }, ..self }
    }
}

/// Copies of a span's operands laid out for sequential reads: the gradient as
/// `[ob][pixel][16]` and the input window the span's taps read as
/// `[channel block][row][column][PX]`. Read in place, a pixel's values sit `channels` floats
/// from the next one's, and at 256 channels (the CycleGAN's) that 1 KiB stride maps every pixel
/// of a span to the same few sets of the L1 cache (measured: the weight gradient 60 GFLOP/s in
/// place, 87 packed). With few channels the stride does no harm and the copy would cost more
/// than it saves, so those stay in place.
#[cfg(target_arch = "x86_64")]
#[derive(Default)]
struct Packed {
    grad: Vec<f32>,
    input: Vec<f32>,
}

/// Channels from which a copy pays (measured at 32 to 256 channels).
#[cfg(target_arch = "x86_64")]
const PACK_FROM: usize = 128;

#[cfg(target_arch = "x86_64")]
impl Packed {
    /// The operands of the span of output pixels `(rows, cols)`, copied where [`PACK_FROM`] says.
    /// `pw` input channels to a block.
    fn fill(
        &mut self,
        (img, wp, ci, grad, cop, f): Ctx,
        at: GradAt,
        (rows, ox): (Range<usize>, Range<usize>),
        pw: usize,
    ) -> (Operand, Operand) {
        let (nr, nc) = (rows.len(), ox.len());
        let [sh, sw] = f.stride;
        let (rows_in, cols_in) = ((nr - 1) * sh + f.kh, (nc - 1) * sw + f.kw);
        let grad = &grad[((rows.start + at.y0) * at.w + at.x0 + ox.start) * cop..];
        let img = &img[(rows.start * sh * wp + ox.start * sw) * ci..];
        let g = if cop >= PACK_FROM {
            self.pack_grad(grad, (nr, nc), at.w * cop, cop)
        } else {
            Operand { ptr: grad.as_ptr(), block: OC, row: at.w * cop, px: cop }
        };
        let x = if ci >= PACK_FROM {
            self.pack_input(img, (rows_in, cols_in), wp * ci, ci, pw == PX_WIDE)
        } else {
            Operand { ptr: img.as_ptr(), block: pw, row: wp * ci, px: ci }
        };
        (x, g)
    }

    fn pack_grad(&mut self, src: &[f32], (nr, nc): (usize, usize), row: usize, cop: usize) -> Operand {
        // Grown, never cleared: every value a micro-kernel reads is written below.
        let block = nr * nc * OC;
        self.grad.resize(self.grad.len().max(cop / OC * block), 0.0);
        for (ob, dst) in self.grad.chunks_exact_mut(block).take(cop / OC).enumerate() {
            for (r, dst) in dst.chunks_exact_mut(nc * OC).enumerate() {
                let src = &src[r * row + ob * OC..];
                for (x, d) in dst.chunks_exact_mut(OC).enumerate() {
                    d.copy_from_slice(&src[x * cop..][..OC]);
                }
            }
        }
        Operand { ptr: self.grad.as_ptr(), block, row: nc * OC, px: OC }
    }

    fn pack_input(&mut self, src: &[f32], dims: (usize, usize), row: usize, ci: usize, wide: bool) -> Operand {
        if wide { self.pack_input_as::<PX_WIDE>(src, dims, row, ci) } else { self.pack_input_as::<PX>(src, dims, row, ci) }
    }

    /// [`Self::pack_input`] with `W` channels to a block, a constant for the copies' sake.
    fn pack_input_as<const W: usize>(&mut self, src: &[f32], (rows_in, cols_in): (usize, usize), row: usize, ci: usize) -> Operand {
        // A block's lanes past the last channel stay as they are: `wgt_block::<P>` reads P.
        let block = rows_in * cols_in * W;
        self.input.resize(self.input.len().max(ci.div_ceil(W) * block), 0.0);
        for (b, dst) in self.input.chunks_exact_mut(block).take(ci.div_ceil(W)).enumerate() {
            let n = (ci - b * W).min(W);
            for (r, dst) in dst.chunks_exact_mut(cols_in * W).enumerate() {
                let src = &src[r * row + b * W..];
                if n == W {
                    for (x, d) in dst.chunks_exact_mut(W).enumerate() {
                        d.copy_from_slice(&src[x * ci..][..W]);
                    }
                } else {
                    for (x, d) in dst.chunks_exact_mut(W).enumerate() {
                        d[..n].copy_from_slice(&src[x * ci..][..n]);
                    }
                }
            }
        }
        Operand { ptr: self.input.as_ptr(), block, row: cols_in * W, px: W }
    }
}

/// Input channels `P` of `input`'s block times the 16 output channels of `grad`'s block, kernel
/// tap `k`, over the span's `(rows, cols)` pixels, added to the sums at `out` (`P` rows of `cop`),
/// or written there for the `first` span.
///
/// # Safety
/// The CPU must have AVX2 and FMA; the operands must cover the span's pixels and tap, and `out`
/// must point to P rows of `cop` floats (16 of them read and written per row).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wgt_block<const P: usize>(
    (input, grad): (Operand, Operand),
    (rows, cols): (usize, usize),
    f: Fwd,
    k: usize,
    (out, first): (*mut f32, bool),
    cop: usize,
) {
    unsafe {
        use std::arch::x86_64::*;
        let (ki, kj) = (k / f.kw, k % f.kw);
        let [sh, sw] = f.stride;
        let mut a = [[_mm256_setzero_ps(); 2]; P];
        for (p, a) in a.iter_mut().enumerate().filter(|_| !first) {
            a[0] = _mm256_loadu_ps(out.add(p * cop));
            a[1] = _mm256_loadu_ps(out.add(p * cop + 8));
        }
        for r in 0..rows {
            let src = input.ptr.add((r * sh + ki) * input.row + kj * input.px);
            let gr = grad.ptr.add(r * grad.row);
            for x in 0..cols {
                rank1(&mut a, gr.add(x * grad.px), src.add(x * sw * input.px), 1);
            }
        }
        for (p, a) in a.iter().enumerate() {
            _mm256_storeu_ps(out.add(p * cop), a[0]);
            _mm256_storeu_ps(out.add(p * cop + 8), a[1]);
        }
    }
}

/// [`wgt_block`] with the 16 output channels in one AVX-512 register and the input value
/// broadcast from memory into the FMA. Each sum takes its terms in the same order: the same bits.
///
/// # Safety
/// As [`wgt_block`], with AVX-512F instead of AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wgt_block_wide<const P: usize>(
    (input, grad): (Operand, Operand),
    (rows, cols): (usize, usize),
    f: Fwd,
    k: usize,
    (out, first): (*mut f32, bool),
    cop: usize,
) {
    unsafe {
        use std::arch::x86_64::*;
        let (ki, kj) = (k / f.kw, k % f.kw);
        let [sh, sw] = f.stride;
        let mut a = [_mm512_setzero_ps(); P];
        for (p, a) in a.iter_mut().enumerate().filter(|_| !first) {
            *a = _mm512_loadu_ps(out.add(p * cop));
        }
        for r in 0..rows {
            let src = input.ptr.add((r * sh + ki) * input.row + kj * input.px);
            let gr = grad.ptr.add(r * grad.row);
            for x in 0..cols {
                rank1_wide(&mut a, gr.add(x * grad.px), src.add(x * sw * input.px), 1);
            }
        }
        for (p, a) in a.iter().enumerate() {
            _mm512_storeu_ps(out.add(p * cop), *a);
        }
    }
}
