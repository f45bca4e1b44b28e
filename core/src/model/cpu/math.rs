//! Element-wise functions written so that the compiler turns their loops into vector code:
//! branch-free polynomials with no calls into libm, whose `exp` and `erf` are scalar. Their
//! multiply-adds are fused (one rounding, one instruction) where the vector unit has FMA, and
//! separate elsewhere (wasm's simd128 has none, and a fused one would be a libm call there).
//!
//! Accuracy (measured against 40-digit references over the whole float32 range they are used on):
//! [`exp`] within 9e-8 relative; [`gelu`] within 1.3e-7 of `x·Φ(x)` plus float32 rounding of
//! its own inputs, as `x * 0.5 * (1 + erf(x / sqrt(2)))` computed with libm's `erff`.

/// Runs its body compiled for the widest vector unit the CPU has (AVX-512, else AVX2 with FMA on
/// x86-64; the `+simd128` build on wasm), so that the loops of the functions below, which are all
/// `#[inline(always)]`, are vectorised for it. A body declared `fn name<M>(...)` gets the
/// [`MulAdd`] of that unit as `M`, to pass to the functions below.
macro_rules! vectorized {
    ($(#[$meta:meta])* $vis:vis fn $name:ident<$mul_add:ident>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body<$mul_add: $crate::model::cpu::math::MulAdd>($($arg: $ty),*) $body
            $crate::model::cpu::math::vectorized!(@dispatch body, ($($arg),*), ($($arg: $ty),*));
        }
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $crate::model::cpu::math::vectorized! {
            $(#[$meta])*
            $vis fn $name<_Unused>($($arg: $ty),*) $body
        }
    };
    (@dispatch $body:ident, ($($arg:ident),*), ($($param:ident: $ty:ty),*)) => {
        #[cfg(target_arch = "x86_64")]
        {
            use $crate::model::cpu::math::{Fused, VectorUnit};
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
            unsafe fn avx512($($param: $ty),*) {
                $body::<Fused>($($arg),*)
            }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($param: $ty),*) {
                $body::<Fused>($($arg),*)
            }
            match VectorUnit::detected() {
                // SAFETY: the CPU has the features these functions were compiled for.
                VectorUnit::Avx512 => return unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                VectorUnit::Avx2 => return unsafe { avx2($($arg),*) },
                VectorUnit::Baseline => {}
            }
        }
        $body::<$crate::model::cpu::math::Separate>($($arg),*)
    };
}
pub(crate) use vectorized;

/// `a · b + c`, as the vector unit a [`vectorized`] body runs on computes it best.
pub(crate) trait MulAdd {
    /// Whether `mul_add` rounds once.
    const FUSED: bool;
    /// `a · b + c`.
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// One fused multiply-add: rounded once (for units with FMA).
#[cfg(any(target_arch = "x86_64", test))]
pub(crate) struct Fused;

#[cfg(any(target_arch = "x86_64", test))]
impl MulAdd for Fused {
    const FUSED: bool = true;
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// A product, then a sum: rounded twice (for units without FMA).
pub(crate) struct Separate;

impl MulAdd for Separate {
    const FUSED: bool = false;
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// The vector instructions [`vectorized`] compiles for on x86-64, as the CPU reports them.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VectorUnit {
    /// AVX-512 (F, VL, BW, DQ) with AVX2 and FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// x86-64's baseline, SSE2.
    Baseline,
}

#[cfg(target_arch = "x86_64")]
impl VectorUnit {
    /// What this CPU has (detected once).
    pub(crate) fn detected() -> Self {
        static DETECTED: std::sync::OnceLock<VectorUnit> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            let avx512 = std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512dq");
            match (avx512, avx2) {
                (true, true) => Self::Avx512,
                (_, true) => Self::Avx2,
                _ => Self::Baseline,
            }
        })
    }
}

/// `e^x`: 0 below -87.3 (where float32 leaves the normal range), saturating at `e^88` above.
#[inline(always)]
pub(crate) fn exp<M: MulAdd>(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HI` is exact for the |n| <= 128 that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const LOWEST: f32 = -87.336_54;
    let underflows = x < LOWEST;
    // Adding 1.5 · 2^23 rounds `x · log2(e)` to the nearest integer n (ties to even), which then
    // sits in the low bits of `shifted`: the integer arithmetic on them below vectorises, where a
    // float-to-int conversion (`as i32`, saturating) would not.
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(LOWEST, 88.0);
    let shifted = M::mul_add(x, LOG2_E, SHIFT);
    let n = shifted - SHIFT;
    let r = M::mul_add(-n, LN2_LO, M::mul_add(-n, LN2_HI, x));
    // e^r for |r| <= ln(2)/2: its Taylor series to r^7 (truncation below 6e-9 relative).
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = M::mul_add(p, r, c);
    }
    // 2^n for n in [-126, 127], built in the exponent field.
    let biased_exponent = shifted
        .to_bits()
        .wrapping_sub(SHIFT.to_bits())
        .wrapping_add(127);
    let scale = f32::from_bits(biased_exponent << 23);
    if underflows {
        0.0
    } else {
        p * scale
    }
}

/// `1 + erf(z)`, computed as such (no cancellation for negative `z`).
#[inline(always)]
fn one_plus_erf<M: MulAdd>(z: f32) -> f32 {
    let a = z.abs();
    // |z| <= 1: erf(z) = z * P(z^2), least-squares fit of the relative error (1.2e-7 in float32).
    const SMALL: [f32; 6] = [
        std::f32::consts::FRAC_2_SQRT_PI,
        -0.376_123_9,
        0.112_805_78,
        -0.026_720_882,
        0.004_927_408,
        -5.667_952e-4,
    ];
    let z2 = z * z;
    let mut p = SMALL[5];
    for c in SMALL[..5].iter().rev() {
        p = M::mul_add(p, z2, *c);
    }
    let small = M::mul_add(z, p, 1.0);
    // |z| > 1: erfc(|z|) = e^(-z^2) * Q(1/|z|), Q fitted on [1, 4] (3e-7 relative); beyond 4,
    // Q(1/4) stands in (erfc is then below 1.6e-8, so the result's absolute error stays under
    // float32's resolution), while e^(-z^2) keeps falling to 0. z^2 is split in two to keep
    // e^(-z^2) exact.
    const LARGE: [f32; 9] = [
        2.469_873_5e-4,
        0.559_415_5,
        0.039_473_172,
        -0.462_060_4,
        0.474_965_15,
        -0.210_593_23,
        -0.003_256_680_6,
        0.041_472_934,
        -0.012_079_885,
    ];
    let s = 1.0 / a.clamp(1.0, 4.0);
    let mut q = LARGE[8];
    for c in LARGE[..8].iter().rev() {
        q = M::mul_add(q, s, *c);
    }
    // e^(-z^2) is 0 in float32 from |z| = 9.35 on; capping |z| at 10 keeps z^2 finite. A select,
    // not `f32::min`: its NaN rule has no wasm SIMD instruction, and a NaN gives 10 either way.
    let t = if a < 10.0 { a } else { 10.0 };
    let t2 = t * t;
    let t2_low = square_error::<M>(t, t2);
    let erfc = exp::<M>(-t2) * (1.0 - t2_low) * q;
    let large = if z > 0.0 { 2.0 - erfc } else { erfc };
    if a <= 1.0 {
        small
    } else {
        large
    }
}

/// `t · t - t2` exactly, where `t2` is `t · t` rounded: one fused multiply-add, or without FMA
/// Dekker's product of `t` split into two halves of 12 significant bits (exact for `|t| < 2^100`).
#[inline(always)]
fn square_error<M: MulAdd>(t: f32, t2: f32) -> f32 {
    if M::FUSED {
        M::mul_add(t, t, -t2)
    } else {
        const SPLITTER: f32 = 4097.0; // 2^12 + 1
        let c = SPLITTER * t;
        let high = c - (c - t);
        let low = t - high;
        ((high * high - t2) + 2.0 * high * low) + low * low
    }
}

/// GELU with the exact error function: `x · Φ(x) = x/2 · (1 + erf(x/√2))`.
#[inline(always)]
pub(crate) fn gelu<M: MulAdd>(x: f32) -> f32 {
    0.5 * x * one_plus_erf::<M>(x * std::f32::consts::FRAC_1_SQRT_2)
}

/// The derivative of [`gelu`]: `Φ(x) + x · φ(x)`.
#[inline(always)]
pub(crate) fn gelu_derivative<M: MulAdd>(x: f32) -> f32 {
    // 1 / sqrt(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    0.5 * one_plus_erf::<M>(x * std::f32::consts::FRAC_1_SQRT_2)
        + x * INV_SQRT_2PI * exp::<M>(-0.5 * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf in float64 (Abramowitz–Stegun 7.1.26 is too coarse; this is the series / continued
    /// fraction pair, good to ~1e-15 where it is used).
    fn erf64(x: f64) -> f64 {
        if x.abs() < 2.5 {
            // Maclaurin series.
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                let add = term / (2 * n + 1) as f64;
                sum += add;
                if add.abs() < 1e-18 {
                    break;
                }
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // Continued fraction for erfc.
            let a = x.abs();
            let mut f = 0.0;
            for n in (1..200).rev() {
                f = (n as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn exp_is_accurate_over_the_float32_range() {
        exp_is_accurate::<Fused>();
        exp_is_accurate::<Separate>();
    }

    fn exp_is_accurate<M: MulAdd>() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let exact = (x as f64).exp();
            worst = worst.max(((exp::<M>(x) as f64) - exact).abs() / exact);
            x += 0.0137;
        }
        assert!(worst < 2e-7, "{worst}");
        assert_eq!(exp::<M>(-200.0), 0.0);
        assert!(exp::<M>(200.0).is_finite());
        assert_eq!(exp::<M>(0.0), 1.0);
    }

    #[test]
    fn gelu_and_its_derivative_match_the_error_function() {
        gelu_is_accurate::<Fused>();
        gelu_is_accurate::<Separate>();
    }

    fn gelu_is_accurate<M: MulAdd>() {
        let mut worst = (0.0f64, 0.0f64);
        let mut x = -40.0f32;
        while x < 40.0 {
            let x64 = x as f64;
            let phi = 0.5 * (1.0 + erf64(x64 / std::f64::consts::SQRT_2));
            let exact = x64 * phi;
            let derivative =
                phi + x64 * (-0.5 * x64 * x64).exp() / (2.0 * std::f64::consts::PI).sqrt();
            worst.0 = worst
                .0
                .max((gelu::<M>(x) as f64 - exact).abs() / exact.abs().max(1.0));
            worst.1 = worst
                .1
                .max((gelu_derivative::<M>(x) as f64 - derivative).abs());
            x += 0.00731;
        }
        assert!(worst.0 < 3e-7, "gelu: {}", worst.0);
        assert!(worst.1 < 5e-7, "derivative: {}", worst.1);
        // Far in the negative tail, x · Φ(x) is below float32's smallest number.
        for x in [-20.0f32, -1e4, f32::MIN] {
            assert_eq!((gelu::<M>(x), gelu_derivative::<M>(x)), (0.0, 0.0), "{x}");
        }
    }
}
