//! Times the model's building blocks on their own, forward + backward, at the shapes the default
//! model sees at 128x128 with batch 8, to find the op that costs the most.
//! Compare with `bench/torch_ops.py` (same shapes).
//!
//!     cargo run --release --example op_profile

use std::time::Instant;

use apunet::model::to_host;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{GroupNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::Distribution;

fn time(name: &str, reps: usize, mut f: impl FnMut()) {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    println!("{name:<44} {:>9.1} ms", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
}

fn main() {
    let d = Device::flex().autodiff();
    let b = 8;
    for (c_in, c, s) in [(32, 32, 128), (64, 64, 64), (128, 128, 32), (192, 192, 16)] {
        let conv = Conv2dConfig::new([c_in, c], [3, 3]).with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1)).with_bias(false).init(&d);
        let x = Tensor::<4>::random([b, c_in, s, s], Distribution::Normal(0.0, 1.0), &d).require_grad();
        time(&format!("conv3x3 {c_in}->{c} @{s}x{s} fwd"), 3, || {
            let _ = to_host(conv.forward(x.clone()).sum());
        });
        time(&format!("conv3x3 {c_in}->{c} @{s}x{s} fwd+bwd"), 3, || {
            let _ = conv.forward(x.clone()).sum().backward();
        });
        let gn = GroupNormConfig::new(8, c).init(&d);
        let y = Tensor::<4>::random([b, c, s, s], Distribution::Normal(0.0, 1.0), &d).require_grad();
        time(&format!("groupnorm {c} @{s}x{s} fwd+bwd"), 3, || {
            let _ = gn.forward(y.clone()).sum().backward();
        });
        time(&format!("relu {c} @{s}x{s} fwd+bwd"), 3, || {
            let _ = burn::tensor::activation::relu(y.clone()).sum().backward();
        });
    }
}
