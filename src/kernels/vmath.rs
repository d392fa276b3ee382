//! Math the kernels vectorise: branch-free `exp` and `erf` (`#[inline(always)]`, so that they
//! compile into the caller's vector loop), and [`widest!`], which compiles such a loop for the
//! widest vector unit the CPU has.

/// Compiles `$body` (generic code whose helpers are `#[inline(always)]`) for AVX-512, for
/// AVX2 + FMA and for the baseline, and runs the widest the CPU has: the callers' loops are
/// written to vectorise.
macro_rules! widest {
    ($name:ident, ($($arg:ident: $ty:ty),*) -> $ret:ty, $body:expr) => {
        fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { $body }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { $body }
                if $crate::kernels::direct::avx512() {
                    // SAFETY: the CPU has AVX-512F (checked at run time).
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::kernels::direct::available() {
                    // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body
        }
    };
}

/// e^x for x <= 0 (scores minus their row's maximum), branch-free so that it vectorises:
/// e^x = 2^n e^r with n = round(x / ln 2), |r| <= ln 2 / 2, e^r by its degree-7 Taylor series
/// (within 2 ulp of libm's). Below -87, e^x is taken as e^-87 (1.6e-38, where f32 stays normal).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer n, which then sits in the sum's low bits.
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    // Written with mul_add: Rust does not contract a * b + c into one FMA on its own.
    let y = x.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = y - ROUND;
    let r = (-n).mul_add(1.428_606_8e-6, (-n).mul_add(0.693_145_75, x));
    let c = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
    let p = c[1..].iter().fold(c[0], |acc: f32, &k| acc.mul_add(r, k));
    // 2^n from n's bits, in integer lanes (a float-to-int `as` would not vectorise).
    f32::from_bits(y.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23) * p
}

/// erf(x): x P(x^2) / Q(x^2) on x clamped to [-4, 4] (beyond, erf is 1 to within f32), the
/// rational approximation XLA and Eigen use for f32; within 5e-7 of libm's erff (tested: 4.2e-7 at
/// |x| = 3.94, where the f32 evaluation rounds; 7e-8 evaluated in f64).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const P: [f32; 7] = [-2.726_142_3e-10, 2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906_3e-4, -2.954_6e-3, -1.609_603_3e-2];
    const Q: [f32; 5] = [-1.456_607_2e-5, -2.133_740_6e-4, -1.682_827e-3, -7.373_329_2e-3, -1.426_474e-2];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let p = P[1..].iter().fold(P[0], |acc, &c| acc.mul_add(x2, c));
    let q = Q[1..].iter().fold(Q[0], |acc, &c| acc.mul_add(x2, c));
    // The quotient overshoots 1 by an ulp near the clamp.
    (x * p / q).clamp(-1.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vectorisable_exp_is_within_two_ulp_of_libm() {
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= 2.5e-7 * want, "exp({x}) = {got}, libm {want}");
        }
        assert!(exp(-1.0e4) < 2e-38 && exp(-1.0e4) >= 0.0);
    }

    #[test]
    fn the_vectorisable_erf_is_within_5e7_of_libm() {
        let worst = (-700_000..=700_000)
            .map(|i| i as f32 * 1e-5)
            .map(|x| ((erf(x) - libm::erff(x)).abs(), x))
            .fold((0.0, 0.0), |a, b| if b.0 > a.0 { b } else { a });
        assert!(worst.0 <= 5e-7, "erf({}) is {} off libm's", worst.1, worst.0);
        assert!((erf(50.0) - 1.0).abs() <= 2e-7 && (erf(-50.0) + 1.0).abs() <= 2e-7 && erf(0.0) == 0.0);
    }
}
