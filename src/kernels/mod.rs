//! apunet's own CPU kernels for the ops that dominate a training step on burn's `flex` backend,
//! plugged in through burn's backend extensions (`#[backend_extension(Flex, Autodiff)]`) with
//! a handwritten backward pass. Other devices (wgpu, cuda) keep burn's ops: [`conv2d`] picks
//! at run time, so the models have one code path.

#[macro_use]
mod vmath;
pub mod attention;
mod autodiff;
pub mod conv;
pub mod direct;
pub mod gelu;
pub mod head;
pub mod layout;
pub mod norm;
pub mod pad;
pub mod peak;
pub mod pool;
pub mod resize;
pub mod strided;
pub mod weight_grad;
pub mod winograd;

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::OnceLock;

use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvOptions, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::attention::MultiHeadAttention;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{GroupNorm, InstanceNorm};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::relu;

use rayon::prelude::*;

pub use attention::AttnGeom;
pub use conv::ConvGeom;
pub use norm::NormGeom;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Turns the kernels off (burn's own ops) or on again for the models run on this thread, for
/// comparisons and benchmarks; `APUNET_KERNELS=off` turns them off for the whole process.
/// Per thread, so that parallel tests do not switch each other's ops.
pub fn set_enabled(on: bool) {
    ENABLED.with(|e| e.set(on));
}

pub fn enabled() -> bool {
    static ENV: OnceLock<bool> = OnceLock::new();
    let env_on = *ENV.get_or_init(|| !matches!(std::env::var("APUNET_KERNELS").as_deref(), Ok("off" | "0" | "false" | "no")));
    env_on && ENABLED.with(Cell::get)
}

/// Whether a tensor on this device with this dtype runs on the kernels.
fn on_kernels(device: &Device, dtype: DType) -> bool {
    enabled() && dtype == DType::F32 && device.clone().inner() == Device::flex()
}

#[backend_extension(Flex, Autodiff)]
pub trait CpuKernels: Backend {
    /// `[n, c_out, ho, wo]` from `x [n, c_in, h, w]`, `weight [c_out, c_in, kh, kw]`: Winograd
    /// where it applies (`winograd::applies`), else the direct kernels where the CPU has them
    /// (`direct::available`), else flex's im2col + GEMM.
    fn conv2d_forward(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, geom: ConvGeom) -> FloatTensor<Self>;
    /// The input gradient of [`CpuKernels::conv2d_forward`]: Winograd for 3x3 of whole tiles,
    /// direct, per output phase for strides, or im2col + GEMM (`conv.rs`) without AVX2.
    fn conv2d_x_grad(weight: FloatTensor<Self>, grad: FloatTensor<Self>, geom: ConvGeom) -> FloatTensor<Self>;
    /// The weight gradient of [`CpuKernels::conv2d_forward`], summed over the batch (direct, or
    /// im2col + GEMM without AVX2).
    fn conv2d_weight_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>, geom: ConvGeom) -> FloatTensor<Self>;
    /// [`CpuKernels::conv2d_forward`] on Winograd (whole tiles) or the direct kernels, also
    /// returning the padded NHWC copy of `x` it made (flat), for the backward pass to reuse.
    fn conv2d_direct_keep(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        geom: ConvGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// The weight gradient from the kept NHWC input.
    fn conv2d_direct_weight_backward(x_nhwc: FloatTensor<Self>, grad: FloatTensor<Self>, geom: ConvGeom) -> FloatTensor<Self>;
    /// Both gradients, from the kept NHWC input: `(dx, dweight)`, where
    /// `weight_grad::shares_grad`.
    fn conv2d_direct_backward(
        x_nhwc: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geom: ConvGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// The transposed convolution `[n, c_in, h, w]` of `x [n, c_out, ho, wo]` (the convolution
    /// `g`'s input gradient, plus `bias [c_in]`), `weight [c_out, c_in, kh, kw]` as burn's
    /// `ConvTranspose2d` holds it: `g` is the convolution it transposes.
    fn conv_transpose2d_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        geom: ConvGeom,
    ) -> FloatTensor<Self>;
    /// `(dx, dweight)` of [`CpuKernels::conv_transpose2d_forward`]: the convolution `g` of the
    /// gradient, and `g`'s weight gradient with the gradient as its input and `x` as its output's.
    fn conv_transpose2d_grads(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geom: ConvGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// 2x2 average pooling with stride 2, no padding, in one pass.
    fn avg_pool2x2(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The gradient of [`CpuKernels::avg_pool2x2`] for an input `[n, c, h, w]` = `dims`.
    fn avg_pool2x2_backward(grad: FloatTensor<Self>, dims: [usize; 4]) -> FloatTensor<Self>;
    /// Reflection padding by `p` on every side of `x [n, c, h, w]` (p < h, w).
    fn reflect_pad(x: FloatTensor<Self>, p: usize) -> FloatTensor<Self>;
    /// The gradient of [`CpuKernels::reflect_pad`] for an input `[n, c, h, w]` = `dims`.
    fn reflect_pad_backward(grad: FloatTensor<Self>, dims: [usize; 4], p: usize) -> FloatTensor<Self>;
    /// GroupNorm of `x [n, c, ...]` with per-channel `gamma` and `beta`.
    fn group_norm_fused(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, geom: NormGeom) -> FloatTensor<Self>;
    /// The gradients of x, gamma and beta of [`CpuKernels::group_norm_fused`].
    fn group_norm_fused_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geom: NormGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
    /// GELU with the exact normal CDF, `x Phi(x)`, on any shape.
    fn gelu_exact(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// The gradient of [`CpuKernels::gelu_exact`] at `x` for the output's gradient.
    fn gelu_exact_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Scaled dot-product attention of `q`, `k`, `v` `[N, T, H*d]` (`attention.rs`), the score
    /// matrix never stored; `labels` `[W * T]` (or one unused value) restricts each token to
    /// its own label's tokens.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        geom: AttnGeom,
    ) -> FloatTensor<Self>;
    /// [`CpuKernels::fused_attention`] and its log-sum-exp `[N, H, T]`, for the backward pass.
    fn fused_attention_keep(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        geom: AttnGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// `(dq, dk, dv)` of [`CpuKernels::fused_attention`] from its inputs, output `o`, log-sum-exp and
    /// the output's gradient.
    #[allow(clippy::too_many_arguments)]
    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        geom: AttnGeom,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// A Flex tensor's values as f32: borrowed when they already are, converted otherwise.
fn values(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(v) => Cow::Borrowed(v),
        None => Cow::Owned(t.to_contiguous().into_data().convert::<f32>().try_into_vec::<f32>().unwrap_or_default()),
    }
}

/// A result in the dtype of the tensor it came from.
fn flex_out(values: Vec<f32>, shape: &[usize], like: DType) -> FlexTensor {
    let out = FlexTensor::from_data(TensorData::new(values, shape.to_vec()));
    if like == DType::F32 { out } else { Flex::float_cast(out, like.into()) }
}

/// A convolution's input gradient on the fastest path that takes its geometry.
fn input_grad(g: &ConvGeom, weight: &[f32], grad: &[f32]) -> Vec<f32> {
    if direct::available() && direct::x_backward_applies(g) {
        direct::backward_x(g, weight, grad)
    } else if direct::available() && strided::applies(g) {
        strided::backward_x(g, weight, grad)
    } else {
        conv::backward_x(g, weight, grad)
    }
}

impl CpuKernels for Flex {
    fn conv2d_forward(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, g: ConvGeom) -> FlexTensor {
        if !direct::available() {
            // flex's own forward (tiled im2col, then gemm) measured as fast as `conv::forward`.
            let options = ConvOptions::new_with_padding(g.stride, [(g.pad[0], g.pad[2]), (g.pad[1], g.pad[3])], [1, 1], 1);
            return Flex::conv2d(x, weight, Some(bias), options);
        }
        let (x, weight, bias) = (x.to_contiguous(), weight.to_contiguous(), bias.to_contiguous());
        let (ho, wo) = g.out_hw().expect("geometry checked by the router");
        let (x_v, w_v, b_v) = (values(&x), values(&weight), values(&bias));
        // No weight gradient follows this forward (one that does keeps its input: `conv2d_direct_keep`).
        let out =
            if winograd::applies(&g) { winograd::forward(&g, &x_v, &w_v, Some(&b_v)) } else { direct::forward(&g, &x_v, &w_v, Some(&b_v)) };
        flex_out(out, &[g.batch, g.c_out, ho, wo], x.dtype())
    }

    fn conv2d_x_grad(weight: FlexTensor, grad: FlexTensor, g: ConvGeom) -> FlexTensor {
        let (weight, grad) = (weight.to_contiguous(), grad.to_contiguous());
        let dx = input_grad(&g, &values(&weight), &values(&grad));
        flex_out(dx, &[g.batch, g.c_in, g.h, g.w], grad.dtype())
    }

    fn conv_transpose2d_forward(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, g: ConvGeom) -> FlexTensor {
        let (x, weight, bias) = (x.to_contiguous(), weight.to_contiguous(), bias.to_contiguous());
        let mut y = input_grad(&g, &values(&weight), &values(&x));
        let plane = g.h * g.w;
        let bias = values(&bias);
        y.par_chunks_mut(plane).enumerate().for_each(|(i, p)| p.iter_mut().for_each(|v| *v += bias[i % g.c_in]));
        flex_out(y, &[g.batch, g.c_in, g.h, g.w], x.dtype())
    }

    fn conv_transpose2d_grads(x: FlexTensor, weight: FlexTensor, grad: FlexTensor, g: ConvGeom) -> (FlexTensor, FlexTensor) {
        let (x, weight, grad) = (x.to_contiguous(), weight.to_contiguous(), grad.to_contiguous());
        let (ho, wo) = g.out_hw().expect("geometry checked by the router");
        let (grad_v, x_v, w_v) = (values(&grad), values(&x), values(&weight));
        let (dx, dw) = if direct::available() {
            (direct::forward(&g, &grad_v, &w_v, None), weight_grad::backward_weight(&g, &grad_v, &x_v))
        } else {
            (conv::forward(&g, &grad_v, &w_v, None), conv::backward_weight(&g, &grad_v, &x_v))
        };
        (flex_out(dx, &[g.batch, g.c_out, ho, wo], grad.dtype()), flex_out(dw, &[g.c_out, g.c_in, g.kh, g.kw], grad.dtype()))
    }

    fn conv2d_weight_grad(x: FlexTensor, grad: FlexTensor, g: ConvGeom) -> FlexTensor {
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let dw = if direct::available() {
            weight_grad::backward_weight(&g, &values(&x), &values(&grad))
        } else {
            conv::backward_weight(&g, &values(&x), &values(&grad))
        };
        flex_out(dw, &[g.c_out, g.c_in, g.kh, g.kw], grad.dtype())
    }

    fn conv2d_direct_keep(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, g: ConvGeom) -> (FlexTensor, FlexTensor) {
        let (x, weight, bias) = (x.to_contiguous(), weight.to_contiguous(), bias.to_contiguous());
        let (ho, wo) = g.out_hw().expect("geometry checked by the router");
        let (x_v, w_v, b_v) = (values(&x), values(&weight), values(&bias));
        let (out, nhwc) =
            winograd::forward_keep(&g, &x_v, &w_v, Some(&b_v)).unwrap_or_else(|| direct::forward_keep(&g, &x_v, &w_v, Some(&b_v)));
        let len = nhwc.len();
        (flex_out(out, &[g.batch, g.c_out, ho, wo], x.dtype()), flex_out(nhwc, &[len], DType::F32))
    }

    fn conv2d_direct_weight_backward(x_nhwc: FlexTensor, grad: FlexTensor, g: ConvGeom) -> FlexTensor {
        let grad = grad.to_contiguous();
        let dw = weight_grad::backward_weight_nhwc(&g, &values(&x_nhwc), &values(&grad));
        flex_out(dw, &[g.c_out, g.c_in, g.kh, g.kw], grad.dtype())
    }

    fn conv2d_direct_backward(x_nhwc: FlexTensor, weight: FlexTensor, grad: FlexTensor, g: ConvGeom) -> (FlexTensor, FlexTensor) {
        let (weight, grad) = (weight.to_contiguous(), grad.to_contiguous());
        let (dx, dw) = weight_grad::backward_both(&g, &values(&x_nhwc), &values(&weight), &values(&grad));
        (flex_out(dx, &[g.batch, g.c_in, g.h, g.w], grad.dtype()), flex_out(dw, &[g.c_out, g.c_in, g.kh, g.kw], grad.dtype()))
    }

    fn avg_pool2x2(x: FlexTensor) -> FlexTensor {
        let x = x.to_contiguous();
        let [n, c, h, w]: [usize; 4] = x.shape().dims::<4>();
        let y = pool::avg_pool2x2(&values(&x), n * c, (h, w));
        flex_out(y, &[n, c, h / 2, w / 2], x.dtype())
    }

    fn avg_pool2x2_backward(grad: FlexTensor, [n, c, h, w]: [usize; 4]) -> FlexTensor {
        let grad = grad.to_contiguous();
        let dx = pool::avg_pool2x2_backward(&values(&grad), n * c, (h, w));
        flex_out(dx, &[n, c, h, w], grad.dtype())
    }

    fn reflect_pad(x: FlexTensor, p: usize) -> FlexTensor {
        let x = x.to_contiguous();
        let [n, c, h, w]: [usize; 4] = x.shape().dims::<4>();
        let y = pad::reflect_pad(&values(&x), n * c, (h, w), p);
        flex_out(y, &[n, c, h + 2 * p, w + 2 * p], x.dtype())
    }

    fn reflect_pad_backward(grad: FlexTensor, [n, c, h, w]: [usize; 4], p: usize) -> FlexTensor {
        let grad = grad.to_contiguous();
        let dx = pad::reflect_pad_backward(&values(&grad), n * c, (h, w), p);
        flex_out(dx, &[n, c, h, w], grad.dtype())
    }

    fn group_norm_fused(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, g: NormGeom) -> FlexTensor {
        let (x, gamma, beta) = (x.to_contiguous(), gamma.to_contiguous(), beta.to_contiguous());
        let y = norm::forward(&g, &values(&x), &values(&gamma), &values(&beta));
        flex_out(y, &x.shape().to_vec(), x.dtype())
    }

    fn group_norm_fused_backward(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        grad: FlexTensor,
        g: NormGeom,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let (gamma, beta) = (gamma.to_contiguous(), beta.to_contiguous());
        let (dx, dgamma, dbeta) = norm::backward(&g, &values(&x), &values(&gamma), &values(&beta), &values(&grad));
        let dtype = grad.dtype();
        (flex_out(dx, &x.shape().to_vec(), dtype), flex_out(dgamma, &[g.channels], dtype), flex_out(dbeta, &[g.channels], dtype))
    }

    fn gelu_exact(x: FlexTensor) -> FlexTensor {
        let x = x.to_contiguous();
        flex_out(gelu::forward(&values(&x)), &x.shape().to_vec(), x.dtype())
    }

    fn gelu_exact_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        flex_out(gelu::backward(&values(&x), &values(&grad)), &x.shape().to_vec(), grad.dtype())
    }

    fn fused_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, labels: FlexTensor, g: AttnGeom) -> FlexTensor {
        flex_attention(q, k, v, labels, g).0
    }

    fn fused_attention_keep(q: FlexTensor, k: FlexTensor, v: FlexTensor, labels: FlexTensor, g: AttnGeom) -> (FlexTensor, FlexTensor) {
        flex_attention(q, k, v, labels, g)
    }

    fn fused_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        o: FlexTensor,
        lse: FlexTensor,
        grad: FlexTensor,
        labels: FlexTensor,
        g: AttnGeom,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dtype = grad.dtype();
        let c = |t: FlexTensor| t.to_contiguous();
        let (q, k, v, o, lse, grad, labels) = (c(q), c(k), c(v), c(o), c(lse), c(grad), c(labels));
        let used = &values(&labels)[..g.label_rows * g.tokens];
        let [dq, dk, dv] =
            attention::backward(&g, (&values(&q), &values(&k), &values(&v)), (&values(&o), &values(&lse), &values(&grad)), used);
        let shape = [g.seqs, g.tokens, g.heads * g.head_dim];
        (flex_out(dq, &shape, dtype), flex_out(dk, &shape, dtype), flex_out(dv, &shape, dtype))
    }
}

/// `mha` (burn's `MultiHeadAttention`) as self-attention over `x [N, T, C]` on the attention
/// kernel, where it applies: flex, f32, a CPU with FMA, no dropout, burn's softmax and mask fill. `labels`
/// `[W, T]`: sequence n's tokens attend only within their label in row n mod W. None
/// elsewhere (before any parameter is read), and the caller runs burn's attention.
pub fn self_attention(mha: &MultiHeadAttention, x: &Tensor<3>, labels: Option<&[f32]>) -> Option<Tensor<3>> {
    let [seqs, tokens, c] = x.dims();
    let plain = mha.dropout.prob == 0.0 && !mha.quiet_softmax && mha.min_float as f32 == attention::MASKED;
    let fits = c == mha.d_model && mha.n_heads * mha.d_k == c && tokens > 0 && labels.is_none_or(|l| l.len() % tokens == 0);
    // The kernel's sums are fused multiply-adds: without FMA units they would run in software.
    if !plain || !fits || !direct::available() || !on_kernels(&x.device(), x.dtype()) {
        return None;
    }
    let label_rows = labels.map_or(0, |l| l.len() / tokens);
    let g = AttnGeom { seqs, tokens, heads: mha.n_heads, head_dim: mha.d_k, label_rows };
    // Query, key, value, output: the order burn's forward reads (and lazily initialises) them.
    let (q, k, v) = (mha.query.forward(x.clone()), mha.key.forward(x.clone()), mha.value.forward(x.clone()));
    let labels =
        Tensor::<1>::from_data(TensorData::new(labels.map_or(vec![0.0], <[f32]>::to_vec), [labels.map_or(1, <[f32]>::len)]), &x.device());
    let out = <Dispatch as CpuKernels>::fused_attention(q.into_dispatch(), k.into_dispatch(), v.into_dispatch(), labels.into_dispatch(), g);
    Some(mha.output.forward(Tensor::from_dispatch(out)))
}

/// The attention kernel on flex tensors: `(out, lse)`.
fn flex_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, labels: FlexTensor, g: AttnGeom) -> (FlexTensor, FlexTensor) {
    let (q, k, v, labels) = (q.to_contiguous(), k.to_contiguous(), v.to_contiguous(), labels.to_contiguous());
    let used = &values(&labels)[..g.label_rows * g.tokens];
    let (out, lse) = attention::forward(&g, &values(&q), &values(&k), &values(&v), used);
    (flex_out(out, &[g.seqs, g.tokens, g.heads * g.head_dim], q.dtype()), flex_out(lse, &[g.seqs, g.heads, g.tokens], DType::F32))
}

/// `conv.forward(x)`, on the kernels where they apply (flex, f32, groups 1, dilation 1, explicit
/// or no padding), else burn's op.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let pad = match conv.padding {
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r],
        PaddingConfig2d::Same => return conv.forward(x),
    };
    let [batch, c_in, h, w] = x.dims();
    let [c_out, wc_in, kh, kw] = conv.weight.dims();
    let g = ConvGeom { batch, c_in, h, w, c_out, kh, kw, stride: conv.stride, pad };
    // On the GEMM path one image (the CycleGAN's batch) measured no faster than burn's ops: its
    // GEMMs are too small to share out over the cores one by one. The direct kernels split rows.
    let batch_ok = batch >= 2 || (batch == 1 && direct::available());
    let plain = conv.groups == 1 && conv.dilation == [1, 1] && wc_in == c_in && g.out_hw().is_some() && batch_ok;
    if !plain || !on_kernels(&x.device(), x.dtype()) {
        return conv.forward(x);
    }
    // Weight before bias, as burn's forward reads them: parameters initialise lazily from the
    // device's RNG on first read, so the order decides a seeded model's initial weights.
    let weight = conv.weight.val();
    let bias = conv.bias.as_ref().map(|b| b.val()).unwrap_or_else(|| Tensor::zeros([c_out], &x.device()));
    let out = <Dispatch as CpuKernels>::conv2d_forward(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), g);
    Tensor::from_dispatch(out)
}

/// `layer.forward(x)` for a transposed convolution, on the kernels where they apply (as for
/// [`conv2d`] on a CPU with the direct kernels, and an output padding below the stride), else
/// burn's op. It runs as the input
/// gradient of the convolution it transposes, whose input has the transposed output's size.
pub fn conv_transpose2d(layer: &ConvTranspose2d, x: Tensor<4>) -> Tensor<4> {
    let [batch, c_in, h, w] = x.dims();
    let [wc_in, c_out, kh, kw] = layer.weight.dims();
    let ([sh, sw], [ph, pw], [oh, ow]) = (layer.stride, layer.padding, layer.padding_out);
    // burn's output size, (h - 1) * s - 2p + k + out_pad, where it is positive.
    let size = |n: usize, s: usize, p: usize, k: usize, o: usize| ((n.max(1) - 1) * s + k + o).checked_sub(2 * p).filter(|&v| v > 0);
    let plain = layer.groups == 1 && layer.dilation == [1, 1] && wc_in == c_in && oh < sh && ow < sw && h > 0 && w > 0;
    let (Some(ho), Some(wo)) = (size(h, sh, ph, kh, oh), size(w, sw, pw, kw, ow)) else {
        return layer.forward(x);
    };
    let g = ConvGeom { batch, c_in: c_out, h: ho, w: wo, c_out: c_in, kh, kw, stride: layer.stride, pad: [ph, pw, ph, pw] };
    if !plain || batch == 0 || !direct::available() || g.out_hw() != Some((h, w)) || !on_kernels(&x.device(), x.dtype()) {
        return layer.forward(x);
    }
    let weight = layer.weight.val();
    let bias = layer.bias.as_ref().map(|b| b.val()).unwrap_or_else(|| Tensor::zeros([c_out], &x.device()));
    let out = <Dispatch as CpuKernels>::conv_transpose2d_forward(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), g);
    Tensor::from_dispatch(out)
}

/// 2x2 average pooling, stride 2 (`AvgPoolOptions::new([2, 2])`): one pass each way
/// (`pool.rs`) where the kernels apply, else burn's op.
pub fn avg_pool2x2(x: Tensor<4>) -> Tensor<4> {
    if !on_kernels(&x.device(), x.dtype()) {
        return burn::tensor::module::avg_pool2d(x, burn::tensor::ops::AvgPoolOptions::new([2, 2]));
    }
    Tensor::from_dispatch(<Dispatch as CpuKernels>::avg_pool2x2(x.into_dispatch()))
}

/// `burn::tensor::activation::gelu(x)` on the vectorised kernel where it runs (flex, f32, a
/// CPU with FMA), else burn's op.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !direct::available() || !on_kernels(&x.device(), x.dtype()) {
        return burn::tensor::activation::gelu(x);
    }
    Tensor::from_dispatch(<Dispatch as CpuKernels>::gelu_exact(x.into_dispatch()))
}

/// `x.pad([(p, p), (p, p)], PadMode::Reflect)` in one pass each way where the kernels apply,
/// else burn's op.
pub fn reflect_pad(x: Tensor<4>, p: usize) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if p == 0 || p >= h || p >= w || !on_kernels(&x.device(), x.dtype()) {
        return x.pad([(p, p), (p, p)], burn::tensor::ops::PadMode::Reflect);
    }
    Tensor::from_dispatch(<Dispatch as CpuKernels>::reflect_pad(x.into_dispatch(), p))
}

/// A norm layer's forward on the kernel, or `x` back when the kernel does not apply (then the
/// caller runs burn's op). `gamma` and `beta` are the layer's affine parameters, if it has them.
/// `relu`: a ReLU after the norm, fused.
// The Err hands the input back (a tensor handle, moved, never copied).
#[allow(clippy::result_large_err)]
fn norm(
    x: Tensor<4>,
    (gamma, beta): (Option<Tensor<1>>, Option<Tensor<1>>),
    affine: bool,
    groups: usize,
    eps: f64,
    relu: bool,
) -> Result<Tensor<4>, Tensor<4>> {
    let [batch, channels, h, w] = x.dims();
    let consistent = gamma.is_some() == affine && beta.is_some() == affine;
    let fits = groups > 0 && channels % groups == 0 && gamma.as_ref().is_none_or(|t| t.dims() == [channels]);
    if !consistent || !fits || !on_kernels(&x.device(), x.dtype()) {
        return Err(x);
    }
    let g = NormGeom { batch, channels, groups, hw: h * w, eps, relu };
    let gamma = gamma.unwrap_or_else(|| Tensor::ones([channels], &x.device()));
    let beta = beta.unwrap_or_else(|| Tensor::zeros([channels], &x.device()));
    let out = <Dispatch as CpuKernels>::group_norm_fused(x.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch(), g);
    Ok(Tensor::from_dispatch(out))
}

/// `norm.forward(x)` on the kernel where it applies, else burn's op.
pub fn group_norm(layer: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    group_norm_then(layer, x, false)
}

/// `relu(norm.forward(x))`, the two fused on the kernel where it applies.
pub fn group_norm_relu(layer: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    group_norm_then(layer, x, true)
}

fn group_norm_then(layer: &GroupNorm, x: Tensor<4>, then_relu: bool) -> Tensor<4> {
    let params = (layer.gamma.as_ref().map(|p| p.val()), layer.beta.as_ref().map(|p| p.val()));
    norm(x, params, layer.affine, layer.num_groups, layer.epsilon, then_relu).unwrap_or_else(|x| burn_relu(layer.forward(x), then_relu))
}

/// `norm.forward(x)` (GroupNorm with a group per channel) on the kernel where it applies.
pub fn instance_norm(layer: &InstanceNorm, x: Tensor<4>) -> Tensor<4> {
    instance_norm_then(layer, x, false)
}

/// `relu(norm.forward(x))` for an InstanceNorm, fused on the kernel where it applies.
pub fn instance_norm_relu(layer: &InstanceNorm, x: Tensor<4>) -> Tensor<4> {
    instance_norm_then(layer, x, true)
}

fn instance_norm_then(layer: &InstanceNorm, x: Tensor<4>, then_relu: bool) -> Tensor<4> {
    let params = (layer.gamma.as_ref().map(|p| p.val()), layer.beta.as_ref().map(|p| p.val()));
    norm(x, params, layer.affine, layer.num_channels, layer.epsilon, then_relu).unwrap_or_else(|x| burn_relu(layer.forward(x), then_relu))
}

/// burn's ReLU, where the kernel did not take the norm.
fn burn_relu(x: Tensor<4>, on: bool) -> Tensor<4> {
    if on { relu(x) } else { x }
}

/// fcomb's layers after the first, fused (`head.rs`): logits `[b * n, 1, h, w]` from the first
/// layer's feature part `feat` `[b, c, h, w]` and its per-sample part (latent and bias)
/// `per_sample` `[b * n, c]`. None where the kernel does not apply: another device or dtype,
/// an autodiff device (the kernel has no backward pass; no parameter is read then), or shapes
/// it does not take.
pub fn fcomb_tail(feat: &Tensor<4>, per_sample: &Tensor<2>, hidden: &[Conv2d], out: &Conv2d) -> Option<Tensor<4>> {
    // Decided before any parameter is read: reading one initialises it, and out of burn's order
    // that would change a seeded model's initial weights.
    if feat.is_autodiff() || per_sample.is_autodiff() || !direct::available() || !on_kernels(&feat.device(), feat.dtype()) {
        return None;
    }
    let [b, c, h, w] = feat.dims();
    let [bn, pc] = per_sample.dims();
    if pc != c || b == 0 || bn % b != 0 {
        return None;
    }
    // Weight before bias, layer by layer, as burn's forward reads them.
    let layers: Vec<(Tensor<4>, Option<Tensor<1>>)> =
        hidden.iter().chain([out]).map(|l| (l.weight.val(), l.bias.as_ref().map(|b| b.val()))).collect();
    let shape_ok = |(i, (weight, bias)): (usize, &(Tensor<4>, Option<Tensor<1>>))| {
        let co = if i < hidden.len() { c } else { 1 };
        weight.dims() == [co, c, 1, 1] && bias.as_ref().is_none_or(|b| b.dims() == [co])
    };
    if !layers.iter().enumerate().all(shape_ok) {
        return None;
    }
    let mut params = Vec::new();
    for (weight, bias) in layers {
        let co = weight.dims()[0];
        let bias = match bias {
            Some(b) => to_host(b).ok()?,
            None => vec![0.0; co],
        };
        params.push((to_host(weight).ok()?, bias));
    }
    let (out_w, out_b) = params.pop()?;
    let layers: Vec<head::Layer> = params.iter().map(|(weight, bias)| head::Layer { weight, bias }).collect();
    let (feat_host, ps) = (to_host(feat.clone()).ok()?, to_host(per_sample.clone()).ok()?);
    let logits = head::fcomb_tail(&feat_host, (b, c, h * w), &ps, bn / b, &layers, (&out_w, out_b[0]));
    Some(Tensor::from_data(TensorData::new(logits, [bn, 1, h, w]), &feat.device()))
}

/// A tensor's values on the host, as f32 (re-exported as `model::to_host`; it lives here, at the
/// bottom of the stack, so that the kernels need nothing from the models that call them).
pub fn to_host<const D: usize>(t: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.try_into_data()
        .map_err(|e| anyhow::anyhow!("the device failed to compute or return a result: {e:?}"))?
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading tensor back from the device: {e:?}"))
}
