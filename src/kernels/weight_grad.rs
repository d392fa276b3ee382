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
use super::direct::{Fwd, Nhwc, OC, View, backward_x_from, round_up, x_backward_applies, x_backward_pad};
#[cfg(target_arch = "x86_64")]
use super::direct::{Ctx, PX, rank1, with_width};

/// Output rows per work item.
const ROWS: usize = 8;
/// The gradient floats of one span of pixels (16 KiB, to stay in L1)...
const SPAN_FLOATS: usize = 4096;
/// ...but at least this many pixels, or re-reading the partial sums for each span costs more.
const MIN_SPAN: usize = 64;

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
    // Fixed chunks of rows, summed in a fixed order: the same bits on any number of threads.
    let chunks: Vec<(usize, usize)> = (0..g.batch).flat_map(|n| (0..ho).step_by(ROWS).map(move |r| (n, r))).collect();
    let partials: Vec<Vec<f32>> = chunks
        .par_iter()
        .map(|&(n, r0)| {
            let mut acc = vec![0f32; len];
            let rows = r0..(r0 + ROWS).min(ho);
            // SAFETY: `rows` lie below `ho` and the NHWC buffers hold the padded geometry `f` reads.
            unsafe { weight_rows(input.image(n), input.w, g.c_in, (grad.image(n), at), cop, f, rows, &mut acc) };
            acc
        })
        .collect();
    // Summed in parallel over the elements, each in the fixed order of the chunks.
    const SUM_CHUNK: usize = 4096;
    let mut sum = vec![0f32; len];
    sum.par_chunks_mut(SUM_CHUNK).enumerate().for_each(|(i, s)| {
        for p in &partials {
            s.iter_mut().zip(&p[i * SUM_CHUNK..]).for_each(|(s, v)| *s += v);
        }
    });
    let taps = g.kh * g.kw;
    let mut dw = vec![0f32; g.c_out * g.c_in * taps];
    dw.par_chunks_mut(g.c_in * taps).enumerate().for_each(|(o, dw)| {
        for i in 0..g.c_in {
            for k in 0..taps {
                dw[i * taps + k] = sum[(k * g.c_in + i) * cop + o];
            }
        }
    });
    dw
}

/// Adds the contribution of output rows `oy` to `acc` `[kh][kw][ci][cop]`.
///
/// A span of pixels at a time (part of a row, or whole rows), each span visited for every tap
/// and channel block, so that its gradients stay in cache while every partial sum is read and
/// written once per span. The pixels still reach each sum in row-major order: the bits do not
/// depend on the span.
#[allow(clippy::too_many_arguments)]
unsafe fn weight_rows(img: &[f32], wp: usize, ci: usize, (grad, at): (&[f32], GradAt), cop: usize, f: Fwd, oy: Range<usize>, acc: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        let span = (SPAN_FLOATS / cop).max(MIN_SPAN);
        let (rows_per, cols) = if f.wo >= span { (1, span) } else { ((span / f.wo).max(1), f.wo) };
        for y0 in oy.clone().step_by(rows_per) {
            let rows = y0..(y0 + rows_per).min(oy.end);
            for x0 in (0..f.wo).step_by(cols) {
                let px = (rows.clone(), x0..(x0 + cols).min(f.wo));
                for k in 0..f.kh * f.kw {
                    let mut c0 = 0;
                    while c0 < ci {
                        let n = (ci - c0).min(PX);
                        for ob in 0..cop / OC {
                            let (ctx, px) = ((img, wp, ci, grad, cop, f), px.clone());
                            with_width!(n, wgt_block(ctx, at, px, k, c0, ob, acc));
                        }
                        c0 += n;
                    }
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (img, wp, ci, grad, at, cop, f, oy, acc);
        unreachable!("the direct kernels run only where `available()`")
    }
}


/// Input channels `c0..c0+P` times output channels of block `ob`, kernel tap `k`, over the
/// output pixels `ox` of rows `oy`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn wgt_block<const P: usize>((img, wp, ci, grad, cop, f): Ctx, at: GradAt, (rows, ox): (Range<usize>, Range<usize>), k: usize, c0: usize, ob: usize, acc: &mut [f32]) {
    unsafe {
        use std::arch::x86_64::*;
        let (ki, kj) = (k / f.kw, k % f.kw);
        let out = acc.as_mut_ptr().add((k * ci + c0) * cop + ob * OC);
        let mut a = [[_mm256_setzero_ps(); 2]; P];
        for (p, a) in a.iter_mut().enumerate() {
            a[0] = _mm256_loadu_ps(out.add(p * cop));
            a[1] = _mm256_loadu_ps(out.add(p * cop + 8));
        }
        let step = f.stride[1] * ci;
        for oy in rows {
            let src = img.as_ptr().add(((oy * f.stride[0] + ki) * wp + kj) * ci + c0);
            let gr = grad.as_ptr().add(((oy + at.y0) * at.w + at.x0) * cop + ob * OC);
            for x in ox.clone() {
                rank1(&mut a, gr.add(x * cop), src.add(x * step), 1);
            }
        }
        for (p, a) in a.iter().enumerate() {
            _mm256_storeu_ps(out.add(p * cop), a[0]);
            _mm256_storeu_ps(out.add(p * cop + 8), a[1]);
        }
    }
}
