//! GFLOP/s of the direct convolution kernels (`src/kernels/direct.rs`) on the 3x3 layers of the
//! default model and the LIDC recipe at batch 8 and of the CycleGAN at batch 1, forward, input
//! gradient and weight gradient, layout copies included, on one thread unless told otherwise.
//! Also prints a hash of each result's bits, so that a change meant to reorder memory traffic
//! only can be checked to give the same bits. Each rate is also given as a share of the core's
//! fp32 FMA peak, measured first with a register-only loop (`apunet::kernels::peak`), so that
//! the figures mean the same on any CPU (the share is per thread: with THREADS > 1 it is of
//! THREADS cores' peak).
//!
//! Where Winograd's F(2x2, 3x3) takes a layer (`src/kernels/winograd.rs`), its forward is
//! timed too, and the input gradient is Winograd's (as in training, for even sizes): their rates
//! count the direct convolution's FLOPs, so they can exceed the FMA peak.
//!
//!     cargo run --release --example conv_gflops [-- THREADS]

use std::time::Instant;

use apunet::kernels::{ConvGeom, direct, peak, weight_grad, winograd};

fn bits_hash(v: &[f32]) -> u64 {
    v.iter().fold(0u64, |a, x| a.wrapping_mul(31).wrapping_add(u64::from(x.to_bits())))
}

/// Seconds per call, the best of 5 after one warm-up call.
fn best_of_5(f: impl Fn() -> Vec<f32>) -> f64 {
    std::hint::black_box(f());
    (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    // As the apunet binary does: freed buffers stay in the heap.
    apunet::keep_freed_memory();
    if !direct::available() {
        eprintln!("this CPU lacks AVX2/FMA: the direct kernels do not run here");
        return;
    }
    let threads = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().expect("the first rayon pool");
    let p = peak::measure();
    let fmt = |g: Option<f64>| g.map_or("-".to_string(), |g| format!("{g:.1}"));
    println!("FMA peak, one thread: AVX2 {} GFLOP/s, AVX-512 {} GFLOP/s", fmt(p.avx2_gflops), fmt(p.avx512_gflops));
    let peak = p.best().unwrap_or(f64::NAN) * threads as f64;
    // (batch, c_in, c_out, size, pad): the default model's encoder levels and a decoder block's
    // first conv at batch 8; then the CycleGAN's residual blocks at batch 1 (paper size at 128
    // and 256 px, the small network at 128 px), on inputs already reflection-padded; then the
    // LIDC recipe's (filters 16-32-64-96, 64 px): its encoder levels and a decoder block's first conv.
    let geoms = [
        (8, 32, 32, 128, 1),
        (8, 64, 64, 64, 1),
        (8, 128, 128, 32, 1),
        (8, 192, 192, 16, 1),
        (8, 96, 32, 128, 1),
        (1, 256, 256, 34, 0),
        (1, 256, 256, 66, 0),
        (1, 64, 64, 34, 0),
        (8, 16, 16, 64, 1),
        (8, 48, 16, 64, 1),
        (8, 32, 32, 32, 1),
        (8, 64, 64, 16, 1),
        (8, 96, 96, 8, 1),
    ];
    for (batch, ci, co, hw, pad) in geoms {
        let g = ConvGeom { batch, c_in: ci, h: hw, w: hw, c_out: co, kh: 3, kw: 3, stride: [1, 1], pad: [pad; 4] };
        let (ho, wo) = g.out_hw().expect("a valid geometry");
        let x: Vec<f32> = (0..batch * ci * hw * hw).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..co * ci * 9).map(|i| (i % 5) as f32 * 0.1).collect();
        let grad: Vec<f32> = (0..batch * co * ho * wo).map(|i| (i % 3) as f32 * 0.1).collect();
        let gflop = 2.0 * batch as f64 * (ho * wo * ci * co * 9) as f64 / 1e9;
        let fwd = best_of_5(|| direct::forward(&g, &x, &w, None));
        let bx = best_of_5(|| direct::backward_x(&g, &w, &grad));
        let bw = best_of_5(|| weight_grad::backward_weight(&g, &x, &grad));
        let share = |t: f64| 100.0 * gflop / t / peak;
        if winograd::applies(&g) {
            let wf = best_of_5(|| winograd::forward(&g, &x, &w, None));
            println!(
                "n{batch} {ci:>3}->{co:<3} @{hw:<3}  Winograd forward {:6.1} ms {:5.1} GFLOP/s {:3.0}%",
                wf * 1e3,
                gflop / wf,
                share(wf)
            );
        }
        println!(
            "n{batch} {ci:>3}->{co:<3} @{hw:<3}  forward {:6.1} ms {:5.1} GFLOP/s {:3.0}% | input grad {:6.1} ms {:5.1} {:3.0}% | weight grad {:6.1} ms {:5.1} {:3.0}%",
            fwd * 1e3,
            gflop / fwd,
            share(fwd),
            bx * 1e3,
            gflop / bx,
            share(bx),
            bw * 1e3,
            gflop / bw,
            share(bw)
        );
        let (a, b, c) = (direct::forward(&g, &x, &w, None), direct::backward_x(&g, &w, &grad), weight_grad::backward_weight(&g, &x, &grad));
        println!("             bits: {:016x} {:016x} {:016x}", bits_hash(&a), bits_hash(&b), bits_hash(&c));
    }
}
