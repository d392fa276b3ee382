//! Times the fused attention kernel's forward on its own at the shapes the transformers see
//! (batch 8, 4 heads): the LIDC recipe's 32-px (1,024 tokens, full), 16-px and 8-px levels, and a
//! 64-px level in 8x8 windows; forward, then backward.
//!
//!     cargo run --release --example attn_profile [-- REPS]

use std::time::Instant;

use apunet::kernels::attention::{AttnGeom, backward, forward};

fn main() {
    apunet::keep_freed_memory();
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    let shapes = [
        (8, 1024, 4, 8, "32 px, 32 ch"),
        (8, 256, 4, 16, "16 px, 64 ch"),
        (8, 64, 4, 24, "8 px, 96 ch"),
        (8 * 64, 64, 4, 4, "64 px windows, 16 ch"),
        (8, 1024, 4, 16, "32 px, 64 ch"),
    ];
    let only = std::env::args().nth(2).unwrap_or_default();
    for (seqs, tokens, heads, head_dim, what) in shapes {
        if !what.starts_with(only.as_str()) {
            continue;
        }
        let g = AttnGeom { seqs, tokens, heads, head_dim, label_rows: 0 };
        let x: Vec<f32> = (0..g.elements()).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        forward(&g, &x, &x, &x, &[]);
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(forward(&g, &x, &x, &x, &[]));
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let gscores = (seqs * heads * tokens * tokens) as f64 / ms / 1e6;
        println!("{what:<24} {ms:>8.2} ms  {gscores:>6.2} G scores/s");
        let (o, lse) = forward(&g, &x, &x, &x, &[]);
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(backward(&g, (&x, &x, &x), (&o, &lse, &x), &[]));
        }
        println!("{:<24} {:>8.2} ms", "  backward", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
    }
    // The whole transformer block (norms, projections, MLP, layout) around it.
    let device = burn::prelude::Device::flex();
    for (c, side, shifted) in [(32, 32, false), (64, 16, true), (96, 8, false), (32, 64, false)] {
        let block = apunet::model::transformer::TransformerBlock::new(c, 4, shifted, &device);
        let x = burn::tensor::Tensor::<4>::random([8, c, side, side], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let run = || apunet::model::to_host(block.forward(x.clone())).map(|_| ());
        run().unwrap();
        let t = Instant::now();
        for _ in 0..reps {
            run().unwrap();
        }
        println!("block {c} ch at {side} px     {:>8.2} ms", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
    }
}
