//! Bilinear x2 upsampling (align_corners = false) and its gradient, each in one pass over the
//! output. `model::upsample2x` composes it from about ten burn ops per axis (narrow, cat, two
//! scalings, add, stack), every one a pass over memory and, in training, a backward node: it
//! was 12% of the default model's forward pass. The forward is the same bits as that
//! composition: each value is `a * 0.75 + b * 0.25`, rows first, then columns.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::prelude::*;
use rayon::prelude::*;

use super::layout::par_init;
use super::{flex_out, on_kernels, values};

/// One axis of the x2 upsampling: `out[2i] = x[i] * 0.75 + x[i-1] * 0.25`,
/// `out[2i+1] = x[i] * 0.75 + x[i+1] * 0.25`, the neighbours clamped at the edges.
fn up_line(x: &[f32], out: &mut [f32]) {
    let n = x.len();
    for i in 0..n {
        let (prev, next) = (x[i.saturating_sub(1)], x[(i + 1).min(n - 1)]);
        out[2 * i] = x[i] * 0.75 + prev * 0.25;
        out[2 * i + 1] = x[i] * 0.75 + next * 0.25;
    }
}

/// The transpose of [`up_line`] along the rows of `g` (`2n` rows of `lane` values) into `dx`
/// (`n` rows): a line when `lane` is 1, a plane's columns when it is the plane's width.
fn up_backward(g: &[f32], lane: usize, dx: &mut [f32]) {
    let n = dx.len() / lane;
    let row = |r: usize| &g[r * lane..][..lane];
    for (j, d) in dx.chunks_exact_mut(lane).enumerate() {
        for (k, d) in d.iter_mut().enumerate() {
            // As the centre of out[2j] and out[2j+1]; as the left neighbour of out[2j+2] (out[0]'s
            // own, clamped, at j = 0); as the right neighbour of out[2j-1] (out[2n-1]'s at the end).
            let left_of = if j + 1 < n { row(2 * j + 2)[k] } else { 0.0 } + if j == 0 { row(0)[k] } else { 0.0 };
            let right_of = if j > 0 { row(2 * j - 1)[k] } else { 0.0 } + if j + 1 == n { row(2 * n - 1)[k] } else { 0.0 };
            *d = (row(2 * j)[k] + row(2 * j + 1)[k]) * 0.75 + (left_of + right_of) * 0.25;
        }
    }
}

/// `[planes, 2h, 2w]` from `x` `[planes, h, w]`.
pub fn upsample2x(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    assert!(x.len() == planes * h * w);
    if x.is_empty() {
        return Vec::new();
    }
    let fill = |p: usize, out: &mut [std::mem::MaybeUninit<f32>]| {
        let plane = &x[p * h * w..][..h * w];
        let (mut rows, mut line) = (vec![0f32; w], vec![0f32; 2 * w]);
        for i in 0..h {
            let (prev, next) = (i.saturating_sub(1), (i + 1).min(h - 1));
            let (row, up, down) = (&plane[i * w..][..w], &plane[prev * w..][..w], &plane[next * w..][..w]);
            // Row 2i, then row 2i+1: first along the rows (as the composed op does), then along
            // the columns.
            for (half, other) in [(0, up), (1, down)] {
                for ((t, a), b) in rows.iter_mut().zip(row).zip(other) {
                    *t = a * 0.75 + b * 0.25;
                }
                up_line(&rows, &mut line);
                let dst = &mut out[(2 * i + half) * 2 * w..][..2 * w];
                dst.iter_mut().zip(&line).for_each(|(d, v)| *d = std::mem::MaybeUninit::new(*v));
            }
        }
    };
    // SAFETY: `fill` writes all 2h rows of 2w values of its plane.
    unsafe { par_init(planes * 4 * h * w, 4 * h * w, fill) }
}

/// The gradient of [`upsample2x`]: `[planes, h, w]` from `grad` `[planes, 2h, 2w]`.
pub fn upsample2x_backward(grad: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    assert!(grad.len() == planes * 4 * h * w);
    let mut dx = vec![0f32; planes * h * w];
    if dx.is_empty() {
        return dx;
    }
    dx.par_chunks_mut(h * w).zip(grad.par_chunks(4 * h * w)).for_each(|(dx, g)| {
        // Columns first (the forward's last step), into 2h rows of w; then down the columns,
        // a whole row at a time.
        let mut cols = vec![0f32; 2 * h * w];
        for (src, dst) in g.chunks_exact(2 * w).zip(cols.chunks_exact_mut(w)) {
            up_backward(src, 1, dst);
        }
        up_backward(&cols, w, dx);
    });
    dx
}

#[backend_extension(Flex, Autodiff)]
pub trait CpuResize: Backend {
    /// `[n, c, 2h, 2w]` from `x [n, c, h, w]`, bilinear, align_corners = false.
    fn upsample2x_fused(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The gradient of [`CpuResize::upsample2x_fused`].
    fn upsample2x_fused_backward(grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl CpuResize for Flex {
    fn upsample2x_fused(x: FlexTensor) -> FlexTensor {
        let x = x.to_contiguous();
        let [n, c, h, w] = x.shape().dims::<4>();
        flex_out(upsample2x(&values(&x), n * c, h, w), &[n, c, 2 * h, 2 * w], x.dtype())
    }

    fn upsample2x_fused_backward(grad: FlexTensor) -> FlexTensor {
        let grad = grad.to_contiguous();
        let [n, c, h2, w2] = grad.shape().dims::<4>();
        flex_out(upsample2x_backward(&values(&grad), n * c, h2 / 2, w2 / 2), &[n, c, h2 / 2, w2 / 2], grad.dtype())
    }
}

#[derive(Debug)]
struct UpsampleBackward;

impl<B: CpuResize> Backward<B, 1> for UpsampleBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        if let Some(node) = node {
            grads.register::<B>(node.id, B::upsample2x_fused_backward(grad));
        }
    }
}

impl<B: CpuResize, C: CheckpointStrategy> CpuResize for Autodiff<B, C> {
    fn upsample2x_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = <UpsampleBackward as Backward<B, 1>>::prepare::<C>(UpsampleBackward, [x.node()]);
        prep.compute_bound().stateless(B::upsample2x_fused(x.into_primitive()))
    }

    fn upsample2x_fused_backward(grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::upsample2x_fused_backward(Self::inner(grad)))
    }
}

/// Bilinear x2 upsampling on the kernel, or `x` back where it does not apply (another device
/// or dtype); the caller then composes it from burn's ops.
// The Err hands the input back (a tensor handle, moved, never copied).
#[allow(clippy::result_large_err)]
pub fn upsample2x_on_kernel(x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    let [n, c, h, w] = x.dims();
    if n * c * h * w == 0 || !on_kernels(&x.device(), x.dtype()) {
        return Err(x);
    }
    Ok(Tensor::from_dispatch(<Dispatch as CpuResize>::upsample2x_fused(x.into_dispatch())))
}
