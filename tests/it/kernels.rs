//! apunet's CPU convolution kernel against burn's own conv2d: outputs and the gradients of the
//! input, weight and bias, on every geometry the models use plus odd ones; then a training run
//! with the kernels against one without.

use apunet::kernels::{self, conv_transpose2d, conv2d};
use apunet::model::{ProbUNet, elbo_loss, to_host};
use burn::module::{ModuleVisitor, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2dConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::module;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common;

fn values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// [`values`] with full mantissas, for the tests that compare bits: `values` draws multiples of
/// 2^-23, whose short sums (a pooling window, an upsampling's two terms) are exact in any order
/// and so would not tell two summation orders apart.
fn full_values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    values(rng, n).into_iter().map(|v| v * std::f32::consts::PI).collect()
}

/// Largest |a - b| over the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-2f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

struct Case {
    batch: usize,
    c_in: usize,
    c_out: usize,
    hw: [usize; 2],
    k: [usize; 2],
    stride: usize,
    /// Top, left, bottom, right.
    pad: [usize; 4],
    bias: bool,
}

fn case(batch: usize, c_in: usize, c_out: usize, hw: [usize; 2], k: usize, stride: usize, pad: usize) -> Case {
    Case { batch, c_in, c_out, hw, k: [k, k], stride, pad: [pad; 4], bias: true }
}

/// Forward output and the x, weight and bias gradients of `sum(out * r)`, through `f`.
fn run(c: &Case, conv: &Conv2d, x: &[f32], r: &[f32], through_kernel: bool) -> [Vec<f32>; 4] {
    let device = Device::flex().autodiff();
    let [h, w] = c.hw;
    let xt = Tensor::<4>::from_data(TensorData::new(x.to_vec(), [c.batch, c.c_in, h, w]), &device).require_grad();
    let weight = conv.weight.val();
    let bias = conv.bias.as_ref().map(|b| b.val());
    let out = if through_kernel {
        conv2d(conv, xt.clone())
    } else {
        let [t, l, b, rr] = c.pad;
        let opts = ConvOptions::new_with_padding([c.stride; 2], [(t, b), (l, rr)], [1, 1], 1);
        module::conv2d(xt.clone(), weight.clone(), bias.clone(), opts)
    };
    let rt = Tensor::<4>::from_data(TensorData::new(r.to_vec(), out.dims()), &device);
    let grads = (out.clone() * rt).sum().backward();
    let grad_of = |t: &Tensor<4>| to_host(t.grad(&grads).expect("a gradient")).unwrap();
    let db = bias.map(|b| to_host(b.grad(&grads).expect("a bias gradient")).unwrap()).unwrap_or_default();
    [to_host(out).unwrap(), grad_of(&xt), grad_of(&weight), db]
}

fn check(c: &Case, seed: u64) {
    let device = Device::flex().autodiff();
    let conv = Conv2dConfig::new([c.c_in, c.c_out], c.k)
        .with_stride([c.stride; 2])
        .with_padding(PaddingConfig2d::Explicit(c.pad[0], c.pad[1], c.pad[2], c.pad[3]))
        .with_bias(c.bias)
        .init(&device);
    let mut rng = StdRng::seed_from_u64(seed);
    let [h, w] = c.hw;
    let x = values(&mut rng, c.batch * c.c_in * h * w);
    let out_len = {
        let [t, l, b, r] = c.pad;
        let ho = (h + t + b - c.k[0]) / c.stride + 1;
        let wo = (w + l + r - c.k[1]) / c.stride + 1;
        c.batch * c.c_out * ho * wo
    };
    let r = values(&mut rng, out_len);
    let ours = run(c, &conv, &x, &r, true);
    let burn = run(c, &conv, &x, &r, false);
    for (i, what) in ["output", "input gradient", "weight gradient", "bias gradient"].iter().enumerate() {
        let e = rel_err(&ours[i], &burn[i]);
        assert!(
            e < 1e-4,
            "{what} of a {:?}x{:?} conv, stride {}, pad {:?}, input {:?}: relative error {e}",
            c.k,
            c.c_in,
            c.stride,
            c.pad,
            c.hw
        );
    }
}

#[test]
fn the_kernel_matches_burns_conv2d_on_every_geometry_the_models_use() {
    // Layers draw their initial weights from the process-wide device RNG.
    let _guard = common::rng_lock();
    let cases = [
        case(2, 3, 5, [16, 16], 3, 1, 1),   // U-Net block
        case(3, 4, 6, [13, 9], 3, 1, 1),    // odd sizes
        case(2, 3, 4, [15, 11], 3, 2, 1),   // stride 2
        case(2, 5, 3, [8, 8], 1, 1, 0),     // 1x1: fcomb, gates, heads
        case(1, 5, 3, [7, 5], 1, 1, 0),     // one image: the direct kernel, or burn's op
        case(2, 4, 2, [16, 10], 2, 2, 0),   // attention gate's 2x2 stride 2
        case(2, 3, 4, [17, 12], 4, 2, 1),   // PatchGAN 4x4 stride 2
        case(2, 3, 1, [9, 7], 4, 1, 1),     // PatchGAN 4x4 stride 1
        case(2, 2, 3, [14, 14], 7, 1, 0),   // CycleGAN stem after reflect padding
        case(2, 3, 3, [6, 6], 3, 1, 0),     // no padding
        case(5, 2, 2, [5, 5], 5, 1, 2),     // kernel as large as the input
        case(1, 1, 1, [1, 1], 1, 1, 0),     // one pixel
        case(2, 24, 16, [19, 21], 3, 1, 1), // 8x8 AVX tiles in the layout copies; padded input-gradient channels
        case(2, 16, 24, [12, 17], 3, 2, 1), // the same, padded output channels, stride 2
        case(1, 3, 64, [3, 70], 3, 1, 1),   // weight gradient: rows split into spans of 64 pixels
        case(3, 5, 7, [5, 6], 3, 1, 1),     // weight gradient: work items that span images
        // Weight gradient from copied spans (128 channels and up): a last block of 4 (AVX2) or
        // 10 (AVX-512) input channels, padded output channels, stride 2, and rows split into
        // spans of 256 pixels.
        case(1, 130, 131, [9, 11], 3, 1, 1),
        case(2, 128, 136, [7, 6], 4, 2, 1),
        case(1, 128, 128, [3, 300], 3, 1, 1),
        // Winograd in the training step: forward and input gradient, whole tiles.
        case(2, 16, 32, [12, 10], 3, 1, 1),
        case(1, 32, 16, [6, 4], 3, 1, 1),
    ];
    for (i, c) in cases.iter().enumerate() {
        check(c, i as u64);
    }
    let asymmetric = Case { batch: 2, c_in: 3, c_out: 2, hw: [9, 8], k: [3, 2], stride: 1, pad: [0, 1, 2, 0], bias: false };
    check(&asymmetric, 99);
}

#[test]
fn the_kernel_matches_on_random_shapes() {
    // Layers draw their initial weights from the process-wide device RNG.
    let _guard = common::rng_lock();
    let mut rng = StdRng::seed_from_u64(5);
    for seed in 0..25 {
        let k = rng.gen_range(1..=4);
        let stride = rng.gen_range(1..=2);
        let pad = rng.gen_range(0..k);
        let h = rng.gen_range(k.max(1)..12);
        let w = rng.gen_range(k.max(1)..12);
        let mut c = case(rng.gen_range(1..5), rng.gen_range(1..6), rng.gen_range(1..6), [h, w], k, stride, pad);
        c.bias = rng.gen_bool(0.5);
        check(&c, 100 + seed);
    }
}

/// On a CPU with AVX-512 the tests above run its 12-wide tiles; this runs them again on the
/// AVX2 tiles, which CPUs without AVX-512 use, in a child process of this test binary.
#[test]
fn the_avx2_tiles_match_burns_conv2d_too() {
    let tests = [
        "kernels::the_kernel_matches_burns_conv2d_on_every_geometry_the_models_use",
        "kernels::the_kernel_matches_on_random_shapes",
        "kernels::winograd_matches_the_plain_convolution",
    ];
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(tests)
        .args(["--exact", "--test-threads", "1"])
        .env("APUNET_NO_AVX512", "1")
        .output()
        .expect("the test binary runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("3 passed"), "AVX2 tiles:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Winograd's F(2x2, 3x3) (`kernels/winograd.rs`), which runs the 3x3 forward convolutions and
/// (for whole tiles) the training step's input gradients, against the plain im2col convolution
/// and burn's op on the untracked device: even and odd output sizes (a last tile cut in half),
/// maps smaller than one tile, asymmetric and zero padding, output channels that do not fill a
/// block of 16, and the layers' widths.
#[test]
fn winograd_matches_the_plain_convolution() {
    // The layers below get their weights set before any read, but keep the device's RNG still.
    let _guard = common::rng_lock();
    use apunet::kernels::conv::{self, ConvGeom};
    use apunet::kernels::winograd;
    let mut rng = StdRng::seed_from_u64(31);
    let geoms = [
        (2, 16, 16, [8, 8], [1; 4]),
        (3, 32, 20, [13, 9], [1; 4]),
        (1, 16, 17, [1, 1], [1; 4]),
        (2, 48, 32, [2, 3], [1; 4]),
        (1, 16, 16, [9, 8], [0, 1, 2, 0]),
        (2, 32, 16, [6, 7], [0; 4]),
        (1, 64, 48, [5, 50], [1; 4]),
        (4, 320, 128, [16, 16], [1; 4]),
    ];
    for (i, &(batch, c_in, c_out, [h, w], pad)) in geoms.iter().enumerate() {
        let g = ConvGeom { batch, c_in, h, w, c_out, kh: 3, kw: 3, stride: [1, 1], pad };
        let x = full_values(&mut rng, batch * c_in * h * w);
        let wt = full_values(&mut rng, c_out * c_in * 9);
        let b = full_values(&mut rng, c_out);
        let plain = conv::forward(&g, &x, &wt, Some(&b));
        if !winograd::applies(&g) {
            assert!(!kernels::direct::available(), "case {i}: {g:?} should run on Winograd");
            continue;
        }
        let e = rel_err(&winograd::forward(&g, &x, &wt, Some(&b)), &plain);
        assert!(e < 1e-5, "case {i}: {g:?}: relative error {e}");
        // The training step's entry points where the outputs are whole 2x2 tiles: the forward
        // keeping the direct kernel's NHWC copy, and the input gradient (through `direct`).
        let (ho, wo) = g.out_hw().unwrap();
        if ho % 2 == 0 && wo % 2 == 0 {
            let (out, kept) = winograd::forward_keep(&g, &x, &wt, Some(&b)).expect("whole tiles");
            assert!(rel_err(&out, &plain) < 1e-5, "case {i}: forward keeping its input");
            assert_eq!(kept, kernels::direct::forward_keep(&g, &x, &wt, Some(&b)).1, "case {i}: the kept copy");
            let r = full_values(&mut rng, batch * c_out * ho * wo);
            let e = rel_err(&kernels::direct::backward_x(&g, &wt, &r), &conv::backward_x(&g, &wt, &r));
            assert!(e < 1e-5, "case {i}: input gradient, relative error {e}");
        } else {
            assert!(winograd::forward_keep(&g, &x, &wt, Some(&b)).is_none(), "case {i}: a cut tile keeps the direct kernel");
        }
        assert!(rel_err(&winograd::forward(&g, &x, &wt, None), &conv::forward(&g, &x, &wt, None)) < 1e-5, "case {i}: no bias");
        // Through the layer on the plain device (where Winograd runs) against burn's op.
        let device = Device::flex();
        let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [batch, c_in, h, w]), &device);
        let mut layer =
            Conv2dConfig::new([c_in, c_out], [3, 3]).with_padding(PaddingConfig2d::Explicit(pad[0], pad[1], pad[2], pad[3])).init(&device);
        layer.weight = Param::from_tensor(Tensor::from_data(TensorData::new(wt.clone(), [c_out, c_in, 3, 3]), &device));
        layer.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(b.clone(), [c_out]), &device)));
        let ours = to_host(conv2d(&layer, xt.clone())).unwrap();
        let burn = to_host(layer.forward(xt)).unwrap();
        assert!(rel_err(&ours, &burn) < 1e-5, "case {i}: through conv2d against burn's op");
    }
    let one_channel = ConvGeom { batch: 1, c_in: 1, h: 8, w: 8, c_out: 16, kh: 3, kw: 3, stride: [1, 1], pad: [1; 4] };
    assert!(!winograd::applies(&one_channel), "the first layer keeps the direct kernel");
}

#[test]
fn burn_ops_serve_what_the_kernel_does_not_take() {
    // Layers draw their initial weights from the process-wide device RNG.
    let _guard = common::rng_lock();
    // Same padding, grouped and dilated convolutions go to burn's op and give its result.
    let device = Device::flex();
    let x = Tensor::<4>::random([1, 4, 9, 9], burn::tensor::Distribution::Default, &device);
    for conv in [
        Conv2dConfig::new([4, 4], [3, 3]).with_padding(PaddingConfig2d::Same).init(&device),
        Conv2dConfig::new([4, 4], [3, 3]).with_groups(2).init(&device),
        Conv2dConfig::new([4, 4], [3, 3]).with_dilation([2, 2]).init(&device),
    ] {
        let ours = to_host(conv2d(&conv, x.clone())).unwrap();
        let burn = to_host(conv.forward(x.clone())).unwrap();
        assert_eq!(ours, burn);
    }
}

/// The transposed convolution on the kernels (the input gradient of the convolution it
/// transposes) against burn's `conv_transpose2d`: output, and the gradients of x, weight and bias.
#[test]
fn the_transposed_convolution_matches_burns() {
    // Layers draw their initial weights from the process-wide device RNG.
    let _guard = common::rng_lock();
    let device = Device::flex().autodiff();
    // (batch, c_in, c_out, h, w, k, stride, pad, out_pad, bias)
    let cases = [
        (1, 8, 4, 8, 8, 3, 2, 1, 1, true),    // the CycleGAN's upsampling, one image
        (2, 5, 3, 7, 5, 3, 2, 1, 1, true),    // odd sizes
        (2, 5, 3, 6, 9, 3, 2, 1, 0, false),   // no output padding: an odd output
        (2, 3, 16, 5, 6, 4, 2, 1, 0, true),   // 4x4 stride 2, a whole channel block
        (1, 4, 2, 6, 6, 3, 1, 1, 0, true),    // stride 1
        (2, 3, 2, 4, 5, 2, 2, 0, 0, true),    // 2x2 stride 2, no padding
        (1, 2, 3, 1, 1, 3, 2, 1, 1, true),    // one pixel
        (1, 18, 20, 9, 10, 3, 2, 1, 1, true), // padded channels both ways
    ];
    let mut rng = StdRng::seed_from_u64(3);
    for (i, &(batch, ci, co, h, w, k, s, p, op, bias)) in cases.iter().enumerate() {
        let layer = ConvTranspose2dConfig::new([ci, co], [k, k])
            .with_stride([s, s])
            .with_padding([p, p])
            .with_padding_out([op, op])
            .with_bias(bias)
            .init(&device);
        let x = values(&mut rng, batch * ci * h * w);
        let run = |through_kernel: bool| {
            let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), [batch, ci, h, w]), &device).require_grad();
            let (weight, b) = (layer.weight.val(), layer.bias.as_ref().map(|b| b.val()));
            let out = if through_kernel {
                conv_transpose2d(&layer, xt.clone())
            } else {
                module::conv_transpose2d(
                    xt.clone(),
                    weight.clone(),
                    b.clone(),
                    ConvTransposeOptions::new([s, s], [p, p], [op, op], [1, 1], 1),
                )
            };
            let r = Tensor::<4>::from_data(
                TensorData::new(values(&mut StdRng::seed_from_u64(i as u64), out.dims().iter().product()), out.dims()),
                &device,
            );
            let grads = (out.clone() * r).sum().backward();
            let db = b.map(|b| to_host(b.grad(&grads).expect("a bias gradient")).unwrap()).unwrap_or_default();
            [to_host(out).unwrap(), to_host(xt.grad(&grads).expect("dx")).unwrap(), to_host(weight.grad(&grads).expect("dw")).unwrap(), db]
        };
        let (ours, burn) = (run(true), run(false));
        for (j, what) in ["output", "input gradient", "weight gradient", "bias gradient"].iter().enumerate() {
            assert_eq!(ours[j].len(), burn[j].len(), "{what}, case {i}");
            let e = rel_err(&ours[j], &burn[j]);
            assert!(e < 1e-4, "{what} of transposed conv case {i}: relative error {e}");
        }
    }
}

/// The 2x2 average pooling's one-pass forward and gradient against burn's, bit for bit, on even,
/// odd and single-cell sizes (an odd last row and column are left out, and get no gradient).
#[test]
fn the_pooling_matches_burns() {
    let device = Device::flex().autodiff();
    let mut rng = StdRng::seed_from_u64(8);
    for (i, dims) in [[2, 3, 8, 6], [1, 2, 7, 9], [3, 1, 2, 2], [1, 1, 3, 3], [2, 4, 1, 5]].into_iter().enumerate() {
        let x = full_values(&mut rng, dims.iter().product());
        let run = |through_kernel: bool| {
            let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), dims), &device).require_grad();
            let out = if through_kernel {
                kernels::avg_pool2x2(xt.clone())
            } else {
                module::avg_pool2d(xt.clone(), burn::tensor::ops::AvgPoolOptions::new([2, 2]))
            };
            let r = Tensor::<4>::from_data(
                TensorData::new(values(&mut StdRng::seed_from_u64(i as u64), out.dims().iter().product()), out.dims()),
                &device,
            );
            let grads = (out.clone() * r).sum().backward();
            (to_host(out).unwrap(), xt.grad(&grads).map(|g| to_host(g).unwrap()))
        };
        let (ours, burn) = (run(true), run(false));
        assert_eq!(ours.0, burn.0, "forward of {dims:?}");
        let zeros = vec![0f32; x.len()];
        // burn gives no gradient at all where the output is empty; the kernel gives zeros.
        assert_eq!(ours.1.unwrap_or(zeros.clone()), burn.1.unwrap_or(zeros), "gradient of {dims:?}");
    }
}

/// Reflection padding in one pass against burn's `pad(.., Reflect)`: the forward bit for bit,
/// the gradient (up to 4 cells summed into one) to float tolerance.
#[test]
fn the_reflection_padding_matches_burns() {
    let device = Device::flex().autodiff();
    let mut rng = StdRng::seed_from_u64(9);
    for (i, (dims, p)) in [([2, 3, 8, 6], 1), ([1, 2, 7, 9], 3), ([1, 1, 2, 2], 1), ([2, 1, 5, 4], 2)].into_iter().enumerate() {
        let x = values(&mut rng, dims.iter().product());
        let run = |through_kernel: bool| {
            let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), dims), &device).require_grad();
            let out = if through_kernel {
                kernels::reflect_pad(xt.clone(), p)
            } else {
                xt.clone().pad([(p, p), (p, p)], burn::tensor::ops::PadMode::Reflect)
            };
            let r = Tensor::<4>::from_data(
                TensorData::new(values(&mut StdRng::seed_from_u64(i as u64), out.dims().iter().product()), out.dims()),
                &device,
            );
            let grads = (out.clone() * r).sum().backward();
            (to_host(out).unwrap(), to_host(xt.grad(&grads).expect("dx")).unwrap())
        };
        let (ours, burn) = (run(true), run(false));
        assert_eq!(ours.0, burn.0, "forward of {dims:?}, pad {p}");
        let e = rel_err(&ours.1, &burn.1);
        assert!(e < 1e-6, "gradient of {dims:?}, pad {p}: relative error {e}");
    }
}

/// Five Adam steps of a tiny Probabilistic U-Net: losses per step and final weights.
fn train_five_steps(with_kernels: bool) -> (Vec<f32>, Vec<f32>) {
    kernels::set_enabled(with_kernels);
    let device = Device::flex().autodiff();
    device.seed(11);
    let cfg = common::tiny_config();
    let mut model = ProbUNet::new(&cfg, &device);
    let mut optim = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(3);
    let (b, s, l) = (2, 16, cfg.latent_dim);
    let mut losses = Vec::new();
    for _ in 0..5 {
        let x = Tensor::<4>::from_data(TensorData::new(values(&mut rng, b * s * s), [b, 1, s, s]), &device);
        let y: Vec<f32> = values(&mut rng, b * s * s).iter().map(|v| (*v > 0.3) as u8 as f32).collect();
        let y = Tensor::<4>::from_data(TensorData::new(y, [b, 1, s, s]), &device);
        let eps = Tensor::<2>::from_data(TensorData::new(values(&mut rng, b * l), [b, l]), &device);
        let out = model.forward_train(x, y.clone(), eps);
        let loss = elbo_loss(&out, y, 1.0);
        losses.push(to_host(loss.total.clone()).unwrap()[0]);
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    let mut weights = AllParams(Vec::new());
    model.visit(&mut weights);
    kernels::set_enabled(true);
    (losses, weights.0)
}

/// Every parameter's values, in module order.
struct AllParams(Vec<f32>);

impl ModuleVisitor for AllParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.extend(to_host(param.val()).unwrap());
    }
}

#[test]
fn training_with_the_kernels_matches_training_without() {
    let _guard = common::rng_lock();
    let (with, w_with) = train_five_steps(true);
    let (without, w_without) = train_five_steps(false);
    for (a, b) in with.iter().zip(&without) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "losses {with:?} vs {without:?}");
    }
    assert!(rel_err(&w_with, &w_without) < 1e-3, "weights after 5 steps differ");
}

/// Output and the x, gamma and beta gradients of `sum(norm(x) * r)`.
fn norm_run(x: &[f32], r: &[f32], dims: [usize; 4], norm: impl Fn(Tensor<4>) -> Tensor<4>, params: &[Tensor<1>]) -> Vec<Vec<f32>> {
    let device = Device::flex().autodiff();
    let xt = Tensor::<4>::from_data(TensorData::new(x.to_vec(), dims), &device).require_grad();
    let out = norm(xt.clone());
    let rt = Tensor::<4>::from_data(TensorData::new(r.to_vec(), dims), &device);
    let grads = (out.clone() * rt).sum().backward();
    let mut all = vec![to_host(out).unwrap(), to_host(xt.grad(&grads).unwrap()).unwrap()];
    all.extend(params.iter().map(|p| to_host(p.grad(&grads).expect("a parameter gradient")).unwrap()));
    all
}

#[test]
fn group_and_instance_norm_kernels_match_burn() {
    // Layers draw their initial weights from the process-wide device RNG.
    let _guard = common::rng_lock();
    use apunet::kernels::{group_norm, group_norm_relu, instance_norm, instance_norm_relu};
    use burn::nn::{GroupNormConfig, InstanceNormConfig};
    use burn::tensor::activation::relu;
    let device = Device::flex().autodiff();
    let mut rng = StdRng::seed_from_u64(8);
    for (i, (dims, groups, affine)) in
        [([2, 8, 16, 16], 4, true), ([3, 6, 7, 5], 3, true), ([1, 4, 9, 11], 1, false), ([2, 5, 1, 1], 5, true), ([2, 6, 13, 3], 6, true)]
            .into_iter()
            .enumerate()
    {
        let n = dims.iter().product();
        // An offset and scale far from 0 and 1, as activations have.
        let x: Vec<f32> = values(&mut rng, n).iter().map(|v| 3.0 + 2.0 * v).collect();
        let r = values(&mut rng, n);
        let mut gn = GroupNormConfig::new(groups, dims[1]).with_affine(affine).init(&device);
        if affine {
            // Non-trivial gamma and beta, so their gradients and effect are checked.
            let c = dims[1];
            gn.gamma = Some(Param::from_tensor(Tensor::from_data(TensorData::new(values(&mut rng, c), [c]), &device)));
            gn.beta = Some(Param::from_tensor(Tensor::from_data(TensorData::new(values(&mut rng, c), [c]), &device)));
        }
        let params: Vec<Tensor<1>> = gn.gamma.iter().chain(&gn.beta).map(|p| p.val()).collect();
        let ours = norm_run(&x, &r, dims, |t| group_norm(&gn, t), &params);
        let burn = norm_run(&x, &r, dims, |t| gn.forward(t), &params);
        for (j, what) in ["output", "input gradient", "gamma gradient", "beta gradient"].iter().enumerate().take(ours.len()) {
            let e = rel_err(&ours[j], &burn[j]);
            assert!(e < 1e-4, "GroupNorm case {i} {dims:?}/{groups}: {what} relative error {e}");
        }
        // Fused with the ReLU that follows it in every block: against burn's norm, then relu.
        let ours = norm_run(&x, &r, dims, |t| group_norm_relu(&gn, t), &params);
        let burn = norm_run(&x, &r, dims, |t| relu(gn.forward(t)), &params);
        assert!(ours[0].contains(&0.0) && ours[0].iter().any(|&v| v > 0.0), "case {i}: the ReLU cuts nothing");
        for (j, what) in ["output", "input gradient", "gamma gradient", "beta gradient"].iter().enumerate().take(ours.len()) {
            let e = rel_err(&ours[j], &burn[j]);
            assert!(e < 1e-4, "GroupNorm + ReLU case {i} {dims:?}/{groups}: {what} relative error {e}");
        }
        if groups == dims[1] {
            let inst = InstanceNormConfig::new(dims[1]).with_affine(affine).init(&device);
            let params: Vec<Tensor<1>> = inst.gamma.iter().chain(&inst.beta).map(|p| p.val()).collect();
            let ours = norm_run(&x, &r, dims, |t| instance_norm_relu(&inst, t), &params);
            let burn = norm_run(&x, &r, dims, |t| relu(inst.forward(t)), &params);
            for (a, b) in ours.iter().zip(&burn) {
                assert!(rel_err(a, b) < 1e-4, "InstanceNorm + ReLU case {i}: relative error {}", rel_err(a, b));
            }
        }
        if groups == dims[1] {
            let inst = InstanceNormConfig::new(dims[1]).with_affine(affine).init(&device);
            let params: Vec<Tensor<1>> = inst.gamma.iter().chain(&inst.beta).map(|p| p.val()).collect();
            let ours = norm_run(&x, &r, dims, |t| instance_norm(&inst, t), &params);
            let burn = norm_run(&x, &r, dims, |t| inst.forward(t), &params);
            for (a, b) in ours.iter().zip(&burn) {
                assert!(rel_err(a, b) < 1e-4, "InstanceNorm case {i}: relative error {}", rel_err(a, b));
            }
        }
    }
}

/// Bilinear x2 upsampling on the kernel against the same op composed of burn's ops (kernels
/// off): the forward the same bits, the input gradient to 1e-5, single rows, columns and
/// pixels included.
#[test]
fn the_upsampling_kernel_matches_the_composed_op() {
    use apunet::model::upsample2x;
    let device = Device::flex().autodiff();
    let mut rng = StdRng::seed_from_u64(11);
    for dims in [[2, 3, 5, 7], [1, 1, 1, 1], [1, 2, 1, 6], [3, 1, 4, 1], [2, 16, 8, 8], [1, 2, 2, 3]] {
        let n: usize = dims.iter().product();
        let x = full_values(&mut rng, n);
        let r = values(&mut rng, 4 * n);
        let run = |on: bool| {
            kernels::set_enabled(on);
            let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), dims), &device).require_grad();
            let out = upsample2x(xt.clone());
            let rt = Tensor::<4>::from_data(TensorData::new(r.clone(), out.dims()), &device);
            let grads = (out.clone() * rt).sum().backward();
            kernels::set_enabled(true);
            (out.dims(), to_host(out).unwrap(), to_host(xt.grad(&grads).unwrap()).unwrap())
        };
        let (ours, burn) = (run(true), run(false));
        assert_eq!(ours.0, [dims[0], dims[1], 2 * dims[2], 2 * dims[3]]);
        assert_eq!(ours.1, burn.1, "{dims:?}: forward");
        let e = rel_err(&ours.2, &burn.2);
        assert!(e < 1e-5, "{dims:?}: input gradient relative error {e}");
    }
    // Without autodiff too (sampling and predict run there).
    let x = values(&mut rng, 2 * 3 * 4 * 5);
    let on_plain = |on: bool| {
        kernels::set_enabled(on);
        let out = to_host(upsample2x(Tensor::<4>::from_data(TensorData::new(x.clone(), [2, 3, 4, 5]), &Device::flex()))).unwrap();
        kernels::set_enabled(true);
        out
    };
    assert_eq!(on_plain(true), on_plain(false));
}

/// Both slice-kernel paths, whichever the router would pick: the GEMM path (im2col) and the
/// direct AVX2 path (where this CPU has it), on every fixed geometry, random shapes and
/// single images, against burn's op.
#[test]
fn gemm_and_direct_slice_kernels_match_burn() {
    use apunet::kernels::conv::{self, ConvGeom};
    use apunet::kernels::{direct, weight_grad};
    let _guard = common::rng_lock();
    let mut rng = StdRng::seed_from_u64(12);
    let mut cases = vec![
        case(1, 4, 6, [11, 9], 3, 2, 1),
        case(1, 5, 17, [13, 8], 3, 1, 1),
        case(3, 19, 33, [9, 7], 3, 1, 1),
        case(2, 3, 4, [17, 12], 4, 2, 1),
        case(2, 2, 3, [14, 14], 7, 1, 0),
        case(2, 3, 2, [16, 10], 2, 2, 0),
        case(1, 7, 3, [5, 6], 1, 1, 0),
    ];
    for _ in 0..15 {
        let k = rng.gen_range(1..=4);
        let (h, w) = (rng.gen_range(k..13), rng.gen_range(k..13));
        cases.push(case(
            rng.gen_range(1..4),
            rng.gen_range(1..20),
            rng.gen_range(1..20),
            [h, w],
            k,
            rng.gen_range(1..=2),
            rng.gen_range(0..k),
        ));
    }
    let device = Device::flex().autodiff();
    for (i, c) in cases.iter().enumerate() {
        let conv = Conv2dConfig::new([c.c_in, c.c_out], c.k)
            .with_stride([c.stride; 2])
            .with_padding(PaddingConfig2d::Explicit(c.pad[0], c.pad[1], c.pad[2], c.pad[3]))
            .init(&device);
        let [h, w] = c.hw;
        let g = ConvGeom { batch: c.batch, c_in: c.c_in, h, w, c_out: c.c_out, kh: c.k[0], kw: c.k[1], stride: [c.stride; 2], pad: c.pad };
        let (ho, wo) = g.out_hw().unwrap();
        let x = values(&mut rng, c.batch * c.c_in * h * w);
        let r = values(&mut rng, c.batch * c.c_out * ho * wo);
        let burn = run(c, &conv, &x, &r, false);
        let wt = to_host(conv.weight.val()).unwrap();
        let b = to_host(conv.bias.as_ref().unwrap().val()).unwrap();
        let what = format!("case {i}: {g:?}");
        assert!(rel_err(&conv::forward(&g, &x, &wt, Some(&b)), &burn[0]) < 1e-4, "gemm forward, {what}");
        assert!(rel_err(&conv::backward_x(&g, &wt, &r), &burn[1]) < 1e-4, "gemm input gradient, {what}");
        assert!(rel_err(&conv::backward_weight(&g, &x, &r), &burn[2]) < 1e-4, "gemm weight gradient, {what}");
        if !direct::available() {
            continue;
        }
        assert!(rel_err(&direct::forward(&g, &x, &wt, Some(&b)), &burn[0]) < 1e-4, "direct forward, {what}");
        if direct::x_backward_applies(&g) {
            assert!(rel_err(&direct::backward_x(&g, &wt, &r), &burn[1]) < 1e-4, "direct input gradient, {what}");
        }
        assert!(rel_err(&weight_grad::backward_weight(&g, &x, &r), &burn[2]) < 1e-4, "direct weight gradient, {what}");
    }
}

/// A fresh seeded model draws its weights lazily, on first read. The fused sampling head
/// (`kernels/head.rs`) reads fcomb's parameters itself, so it must read them in burn's order,
/// or one seed would give two models: the first forward of a fresh fcomb, fused or not, must
/// give the same logits.
#[test]
fn the_fused_sampling_head_keeps_a_seeded_models_weights() {
    use apunet::model::fcomb::Fcomb;
    let _guard = common::rng_lock();
    let device = Device::flex();
    let fresh = |fused: bool| {
        device.seed(7);
        let f = Fcomb::new(16, 3, 3, 0.05, &device);
        let features = Tensor::<4>::ones([1, 16, 3, 3], &device);
        kernels::set_enabled(fused);
        let out = f.forward(features, Tensor::<2>::ones([2, 3], &device));
        kernels::set_enabled(true);
        to_host(out).unwrap()
    };
    let (fused, plain) = (fresh(true), fresh(false));
    assert!(rel_err(&fused, &plain) < 1e-4, "{fused:?} vs {plain:?}");
}
