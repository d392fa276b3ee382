//! The fused attention kernel (src/kernels/attention.rs) against burn's MultiHeadAttention:
//! the output and the gradients of the input and of every projection to 1e-4, on token counts
//! across the kernel's 64-token blocks, odd head sizes, and with Swin's region labels. Then
//! the MLP's GELU kernel against burn's.

use apunet::kernels;
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::prelude::*;
use burn::tensor::Bool;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common;

fn values(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-scale..scale)).collect()
}

/// Largest |a - b| over the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// burn's mask for labels [W, T]: true where two tokens' labels differ.
fn mask(labels: &[f32], n: usize, t: usize, device: &Device) -> Tensor<3, Bool> {
    let rows = labels.len() / t;
    let bits: Vec<bool> = (0..n)
        .flat_map(|s| {
            let row = &labels[(s % rows) * t..][..t];
            row.iter().flat_map(move |&a| row.iter().map(move |&b| a != b))
        })
        .collect();
    Tensor::from_data(TensorData::new(bits, [n, t, t]), device)
}

/// The output, then the gradients of x and of the four projections' weights, of
/// sum(attention(x) * r).
fn run(mha: &MultiHeadAttention, x: &[f32], [n, t, c]: [usize; 3], labels: Option<&[f32]>, r: &[f32], fused: bool) -> Vec<Vec<f32>> {
    let device = Device::flex().autodiff();
    let x = Tensor::<3>::from_data(TensorData::new(x.to_vec(), [n, t, c]), &device).require_grad();
    let out = if fused {
        kernels::self_attention(mha, &x, labels).expect("the kernel takes this shape")
    } else {
        let mut input = MhaInput::self_attn(x.clone());
        if let Some(l) = labels {
            input = input.mask_attn(mask(l, n, t, &device));
        }
        mha.forward(input).context
    };
    let r = Tensor::<3>::from_data(TensorData::new(r.to_vec(), [n, t, c]), &device);
    let grads = (out.clone() * r).sum().backward();
    let host = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
    let mut all = vec![host(out), host(x.grad(&grads).unwrap())];
    for linear in [&mha.query, &mha.key, &mha.value, &mha.output] {
        all.push(linear.weight.val().grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap());
    }
    all
}

#[test]
fn the_fused_attention_matches_burns_output_and_gradients() {
    let device = Device::flex().autodiff();
    let mut rng = StdRng::seed_from_u64(7);
    // (sequences, tokens, heads, head size, label rows): one token; block edges at 63, 65 and
    // 130 tokens; head sizes 3, 5, 7, 11; Swin's labels on 64-token windows and on 70 tokens.
    let cases = [(3, 1, 1, 3, 0), (2, 63, 2, 5, 0), (2, 65, 3, 7, 0), (1, 130, 2, 11, 0), (8, 64, 2, 4, 4), (2, 70, 1, 8, 1)];
    for (n, t, heads, d, label_rows) in cases {
        let c = heads * d;
        let mha = {
            let _guard = common::rng_lock();
            MultiHeadAttentionConfig::new(c, heads).with_dropout(0.0).init(&device)
        };
        let x = values(&mut rng, n * t * c, 2.0);
        let r = values(&mut rng, n * t * c, 1.0);
        let labels: Vec<f32> = (0..label_rows * t).map(|_| rng.gen_range(0..3) as f32).collect();
        let labels = (label_rows > 0).then_some(labels.as_slice());
        let fused = run(&mha, &x, [n, t, c], labels, &r, true);
        let burn = run(&mha, &x, [n, t, c], labels, &r, false);
        for (i, (a, b)) in fused.iter().zip(&burn).enumerate() {
            let what = ["output", "dx", "d query", "d key", "d value", "d output"][i];
            let err = rel_err(a, b);
            assert!(err < 1e-4, "{n}x{t} tokens, {heads} heads of {d}, labels {label_rows}: {what} differs by {err}");
        }
    }
}

#[test]
fn burns_attention_serves_what_the_kernel_does_not_take() {
    let device = Device::flex();
    let x = Tensor::<3>::zeros([1, 4, 8], &device);
    let dropout = MultiHeadAttentionConfig::new(8, 2).with_dropout(0.1).init(&device);
    assert!(kernels::self_attention(&dropout, &x, None).is_none());
    let quiet = MultiHeadAttentionConfig::new(8, 2).with_dropout(0.0).with_quiet_softmax(true).init(&device);
    assert!(kernels::self_attention(&quiet, &x, None).is_none());
    let plain = MultiHeadAttentionConfig::new(8, 2).with_dropout(0.0).init(&device);
    assert!(kernels::self_attention(&plain, &x, None).is_some());
    kernels::set_enabled(false);
    assert!(kernels::self_attention(&plain, &x, None).is_none());
    kernels::set_enabled(true);
}

/// The vectorised GELU (src/kernels/gelu.rs) against burn's, which takes libm's erff value by
/// value: output and input gradient to 2e-6 (x in [-8, 8]), across erf's clamp at |x| / sqrt 2 = 4
/// and on shapes that are not a whole number of the kernel's chunks, with and without autodiff.
#[test]
fn the_gelu_kernel_matches_burns() {
    let device = Device::flex().autodiff();
    let mut rng = StdRng::seed_from_u64(5);
    for dims in [[2, 100, 7], [1, 1, 1], [3, 1024, 64]] {
        let n: usize = dims.iter().product();
        let x = values(&mut rng, n, 8.0);
        let r = values(&mut rng, n, 1.0);
        let run = |on: bool| {
            kernels::set_enabled(on);
            let xt = Tensor::<3>::from_data(TensorData::new(x.clone(), dims), &device).require_grad();
            let out = kernels::gelu(xt.clone());
            let grads = (out.clone() * Tensor::<3>::from_data(TensorData::new(r.clone(), dims), &device)).sum().backward();
            let plain = kernels::gelu(Tensor::<3>::from_data(TensorData::new(x.clone(), dims), &Device::flex()));
            kernels::set_enabled(true);
            let host = |t| apunet::model::to_host(t).unwrap();
            (host(out), host(xt.grad(&grads).unwrap()), host(plain))
        };
        let (ours, burn) = (run(true), run(false));
        for (what, a, b) in
            [("output", &ours.0, &burn.0), ("input gradient", &ours.1, &burn.1), ("output without autodiff", &ours.2, &burn.2)]
        {
            // The kernel's erf is within 5e-7 of libm's, times |x| / 2 <= 4.
            let e = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(e < 2e-6, "{dims:?}: {what} off by {e}");
        }
        if n > 1000 {
            assert_ne!(ours.0, burn.0, "{dims:?}: both runs took the same op");
        }
    }
}
