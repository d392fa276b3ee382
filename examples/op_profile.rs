//! Times the model's building blocks on their own, forward + backward, at the shapes the default
//! model sees at 128x128 with batch 8, to find the op that costs the most.
//! Compare with `bench/torch_ops.py` (same shapes). With `gan`, it times the CycleGAN's ops
//! instead, at the paper's 256x256 with batch 1.
//!
//! Each op is timed twice: through burn's own op (apunet's kernels off) and through apunet's
//! kernel (`src/kernels`), in the same run.
//!
//!     cargo run --release --example op_profile [-- gan]

use std::time::Instant;

use apunet::kernels::{self, conv2d, group_norm, instance_norm};
use apunet::model::to_host;
use burn::nn::conv::{Conv2dConfig, ConvTranspose2dConfig};
use burn::nn::{GroupNormConfig, InstanceNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::ops::PadMode;

/// ms per call of `f`, with apunet's kernels on or off.
fn ms(reps: usize, kernels_on: bool, f: &mut impl FnMut()) -> f64 {
    kernels::set_enabled(kernels_on);
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn time(name: &str, reps: usize, mut f: impl FnMut()) {
    let burn = ms(reps, false, &mut f);
    let ours = ms(reps, true, &mut f);
    println!("{name:<48} burn {burn:>8.1} ms   apunet kernels {ours:>8.1} ms   {:>5.2}x", burn / ours);
}

fn randn(shape: [usize; 4], d: &Device) -> Tensor<4> {
    Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), d).require_grad()
}

/// The ResNet generator's and PatchGAN's layers, one CycleGAN iteration's worth of shapes.
fn gan_ops(d: &Device) {
    let conv = |ci: usize, co: usize, k: usize, stride: usize, pad: usize| {
        Conv2dConfig::new([ci, co], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .init(d)
    };
    let stem = conv(1, 64, 7, 1, 0);
    let x = randn([1, 1, 256, 256], d);
    time("c7s1-64: reflect pad 3 + conv7x7 @256 fwd+bwd", 3, || {
        let _ = conv2d(&stem, x.clone().pad([(3, 3), (3, 3)], PadMode::Reflect)).sum().backward();
    });
    for (ci, co, s) in [(64, 128, 256), (128, 256, 128)] {
        let c = conv(ci, co, 3, 2, 1);
        let x = randn([1, ci, s, s], d);
        time(&format!("d{co}: conv3x3/2 {ci}->{co} @{s} fwd+bwd"), 3, || {
            let _ = conv2d(&c, x.clone()).sum().backward();
        });
    }
    let r = conv(256, 256, 3, 1, 0);
    let x = randn([1, 256, 64, 64], d);
    time("R256 conv3x3 256->256 @64 fwd+bwd (x18/G)", 3, || {
        let _ = conv2d(&r, x.clone().pad([(1, 1), (1, 1)], PadMode::Reflect)).sum().backward();
    });
    time("reflect pad 1 256 @64 fwd+bwd", 3, || {
        let _ = x.clone().pad([(1, 1), (1, 1)], PadMode::Reflect).sum().backward();
    });
    let inorm = InstanceNormConfig::new(256).init(d);
    time("instance norm 256 @64 fwd+bwd", 3, || {
        let _ = instance_norm(&inorm, x.clone()).sum().backward();
    });
    for (ci, co, s) in [(256, 128, 64), (128, 64, 128)] {
        let up = ConvTranspose2dConfig::new([ci, co], [3, 3]).with_stride([2, 2]).with_padding([1, 1]).with_padding_out([1, 1]).init(d);
        let x = randn([1, ci, s, s], d);
        time(&format!("u{co}: convT3x3/2 {ci}->{co} @{s} fwd+bwd"), 3, || {
            let _ = up.forward(x.clone()).sum().backward();
        });
    }
    for (ci, co, stride, s) in [(1, 64, 2, 256), (64, 128, 2, 128), (128, 256, 2, 64), (256, 512, 1, 32)] {
        let c = conv(ci, co, 4, stride, 1);
        let x = randn([1, ci, s, s], d);
        time(&format!("PatchGAN conv4x4/{stride} {ci}->{co} @{s} fwd+bwd"), 3, || {
            let _ = conv2d(&c, x.clone()).sum().backward();
        });
    }
}

fn main() {
    let d = Device::flex().autodiff();
    if std::env::args().any(|a| a == "gan") {
        gan_ops(&d);
        return;
    }
    let b = 8;
    for (c_in, c, s) in [(32, 32, 128), (64, 64, 64), (128, 128, 32), (192, 192, 16)] {
        let conv = Conv2dConfig::new([c_in, c], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).with_bias(false).init(&d);
        let x = randn([b, c_in, s, s], &d);
        time(&format!("conv3x3 {c_in}->{c} @{s}x{s} fwd"), 3, || {
            let _ = to_host(conv2d(&conv, x.clone()).sum());
        });
        time(&format!("conv3x3 {c_in}->{c} @{s}x{s} fwd+bwd"), 3, || {
            let _ = conv2d(&conv, x.clone()).sum().backward();
        });
        let gn = GroupNormConfig::new(8, c).init(&d);
        let y = randn([b, c, s, s], &d);
        time(&format!("groupnorm {c} @{s}x{s} fwd+bwd"), 3, || {
            let _ = group_norm(&gn, y.clone()).sum().backward();
        });
        time(&format!("relu {c} @{s}x{s} fwd+bwd"), 3, || {
            let _ = burn::tensor::activation::relu(y.clone()).sum().backward();
        });
    }
}
