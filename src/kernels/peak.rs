//! The core's measured fp32 FMA peak: a loop of independent fused multiply-adds on registers
//! only (no loads, no stores), so that kernel figures can be given as a share of what the core
//! can do, meaning the same on any CPU. Both the 256-bit (AVX2) and, where present, the
//! 512-bit (AVX-512F) form are timed: on Zen 4 the two reach the same rate (a 512-bit FMA is two
//! halves), on Intel server cores with two 512-bit FMA ports the 512-bit one doubles it.

use std::time::Instant;

/// GFLOP/s on one thread (the best of 5 repeats) for each vector width this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct FmaPeak {
    pub avx2_gflops: Option<f64>,
    pub avx512_gflops: Option<f64>,
}

impl FmaPeak {
    /// The higher of the two: the figure kernels are measured against.
    pub fn best(&self) -> Option<f64> {
        match (self.avx2_gflops, self.avx512_gflops) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Measures the peak on the calling thread (about 0.1 s per width).
pub fn measure() -> FmaPeak {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then(|| best_of(|n| unsafe { x86::fma256(n) }));
        let avx512 = is_x86_feature_detected!("avx512f").then(|| best_of(|n| unsafe { x86::fma512(n) }));
        FmaPeak { avx2_gflops: avx2, avx512_gflops: avx512 }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        FmaPeak { avx2_gflops: None, avx512_gflops: None }
    }
}

/// `run(n)` does n iterations and returns the FLOPs it did; the best GFLOP/s of 5 timed runs.
#[allow(dead_code)]
fn best_of(run: impl Fn(u64) -> f64) -> f64 {
    let n = 2_000_000;
    std::hint::black_box(run(n / 10));
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let flops = std::hint::black_box(run(n));
            flops / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 12 independent accumulators: enough to cover two FMA ports' 4-cycle latency.
    const ACC: usize = 12;

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(n: u64) -> f64 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); ACC];
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut sum = _mm256_setzero_ps();
        for v in acc {
            sum = _mm256_add_ps(sum, v);
        }
        std::hint::black_box(sum);
        (n as usize * ACC * 8 * 2) as f64
    }

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(n: u64) -> f64 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); ACC];
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let mut sum = _mm512_setzero_ps();
        for v in acc {
            sum = _mm512_add_ps(sum, v);
        }
        std::hint::black_box(sum);
        (n as usize * ACC * 16 * 2) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_is_a_positive_rate_for_each_width_the_cpu_has() {
        let p = measure();
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(p.avx2_gflops.is_some(), is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
            assert_eq!(p.avx512_gflops.is_some(), is_x86_feature_detected!("avx512f"));
        }
        for g in [p.avx2_gflops, p.avx512_gflops].into_iter().flatten() {
            // Between a slow emulator and any core that exists (fp32, one thread).
            assert!(g.is_finite() && g > 0.5 && g < 1000.0, "{g} GFLOP/s");
        }
    }
}
