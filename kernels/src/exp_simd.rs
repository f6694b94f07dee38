//! exp and max over a row of f32 scores in SIMD registers, for the CPU fused attention's softmax.
//!
//! std's `f32::exp` is a call per value (glibc's `expf`, ~2 ns here): in the f32 fused attention
//! at 4,096 tokens it took a sixth of a training step. [`exp_minus`] evaluates exp on 16 (AVX-512)
//! or 8 (AVX2) values at once, within 1 ulp of `expf` (Cephes' `expf`: a degree-5 polynomial
//! after reducing by ln 2), and sums them on the way. The loops are plain Rust; the CPU's vector
//! instructions come from compiling them a second time under `#[target_feature]`, chosen at run
//! time as the gemm crate chooses its kernels.

/// Lanes of the partial sums and maxima: as wide as an AVX-512 register, so that the compiler can
/// keep them in one (two AVX2 ones) instead of summing in order.
const LANES: usize = 16;

/// The largest value in `values`, -inf if there is none.
pub(crate) fn max(values: &[f32]) -> f32 {
    dispatch!(max_with(values))
}

/// `values[i] = exp(values[i] - shift)` in place (each within 1 ulp of std's); returns their sum.
pub(crate) fn exp_minus(values: &mut [f32], shift: f32) -> f32 {
    dispatch!(exp_minus_with(values, shift))
}

/// Calls `$f` compiled for AVX-512 or AVX2 + FMA where the CPU has them, else as compiled.
macro_rules! dispatch {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512<T>(f: impl FnOnce() -> T) -> T {
                    f()
                }
                // SAFETY: the CPU has the features (checked above).
                return unsafe { avx512(|| $f($($arg),*)) };
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T>(f: impl FnOnce() -> T) -> T {
                    f()
                }
                // SAFETY: the CPU has the features (checked above).
                return unsafe { avx2(|| $f($($arg),*)) };
            }
        }
        $f($($arg),*)
    }};
}
use dispatch;

#[inline(always)]
fn max_with(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(m, &v)| *m = m.max(v));
    }
    lanes.into_iter().fold(tail, f32::max)
}

#[inline(always)]
fn exp_minus_with(values: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let mut chunks = values.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        lanes.iter_mut().zip(chunk.iter_mut()).for_each(|(sum, v)| {
            *v = exp(*v - shift);
            *sum += *v;
        });
    }
    let tail: f32 = chunks
        .into_remainder()
        .iter_mut()
        .map(|v| {
            *v = exp(*v - shift);
            *v
        })
        .sum();
    lanes.into_iter().sum::<f32>() + tail
}

/// exp(x) without branches (so that it vectorises; `mul_add` is one instruction under FMA, a
/// libm call only on x86 CPUs without it): x = k ln 2 + r with |r| <= ln 2 / 2, exp(r)
/// by Cephes' polynomial, times 2^k built in the exponent bits. 0 below ln(2^-126) (exp would be
/// subnormal there: nothing next to the row's largest value, whose exp is 1).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, the first with few mantissa bits so that k * LN2_HIGH is exact.
    const LN2_HIGH: f32 = 0.693_359_4;
    const LN2_LOW: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to an integer, which then sits in the low mantissa bits.
    const ROUNDER: f32 = 12_582_912.0;
    const MIN: f32 = -87.336_55; // ln(2^-126)
    const MAX: f32 = 88.0; // below ln(2^127.5), where k would round to 128
    let clamped = x.clamp(MIN, MAX);
    let rounded = clamped.mul_add(LOG2_E, ROUNDER);
    let k = rounded - ROUNDER;
    let r = k.mul_add(-LN2_LOW, k.mul_add(-LN2_HIGH, clamped));
    let mut p = 1.987_569_1e-4f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = p.mul_add(r, c);
    }
    let exp_r = (p * r).mul_add(r, r) + 1.0;
    // 2^k: k (in rounded's low bits, two's complement) plus the bias, into the exponent field.
    let two_to_k = f32::from_bits((rounded.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32 + 127).wrapping_shl(23) as u32);
    if x < MIN { 0.0 } else { exp_r * two_to_k }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i32 - b.to_bits() as i32).unsigned_abs()
    }

    /// Every f32 in the range the attention meets (score - max <= 0, down to where exp is 0),
    /// and some above, against std's exp.
    #[test]
    fn exp_within_one_ulp_of_std() {
        let mut values: Vec<f32> = Vec::new();
        let mut x = -87.0f32;
        while x < 88.0 {
            values.push(x);
            x = if x.abs() < 1e-3 { x + 1e-6 } else { x + x.abs() * 3e-6 };
        }
        let mut computed = values.clone();
        exp_minus(&mut computed, 0.0);
        let worst = values.iter().zip(&computed).map(|(x, e)| ulps(x.exp(), *e)).max().unwrap();
        assert!(worst <= 1, "{worst} ulp");
    }

    /// The sum of a row's exps (values up to 1, as the attention's) against f64's.
    #[test]
    fn exp_minus_sums_what_it_computes() {
        for len in [1, 15, 16, 17, 64, 1000] {
            let mut values: Vec<f32> = (0..len).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
            let expected: f64 = values.iter().map(|&x| f64::from(x - 10.0).exp()).sum();
            let sum = exp_minus(&mut values, 10.0);
            assert!((f64::from(sum) / expected - 1.0).abs() < 1e-6, "{len} values: {sum} against {expected}");
        }
    }

    #[test]
    fn exp_of_what_a_row_never_reaches_is_zero() {
        let mut values = [f32::NEG_INFINITY, -1e4, -88.0, 0.0];
        assert_eq!(exp_minus(&mut values, 0.0), 1.0);
        assert_eq!(values, [0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn max_of_rows_of_any_length() {
        for len in [0, 1, 15, 16, 17, 64, 100] {
            let values: Vec<f32> = (0..len).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
            assert_eq!(max(&values), values.iter().copied().fold(f32::NEG_INFINITY, f32::max), "{len} values");
        }
    }
}
