//! Counter-based standard normal draws, `std * N(0, 1)` rounded to f32, that depend only on
//! (stream, index): Box-Muller on two hashed uniforms, in f64 with the platform's `ln` and `cos`.
//!
//! Those two calls cost ~30 ns a value on one core (a 7B-shape model's 1.1 billion values: 35 s of
//! CPU). Where the CPU has AVX2 and FMA, [`fill`] draws blocks of values with polynomial `ln` and
//! `cos` that the compiler vectorises (~5 ns a value with AVX-512, ~11 with AVX2), and keeps a
//! value only when its f32 rounding is certain: the f64 result is within [`TOLERANCE`] (relative)
//! of [`standard_normal`]'s, so if both ends of that interval round to the same f32, so does the
//! formula's. The rest (about 1 value in 40,000) go through [`standard_normal`] itself: the bits
//! are the formula's, on any CPU.

use std::f64::consts::{FRAC_2_PI, LN_2, PI, SQRT_2};

use shard_model::hash;

/// A standard normal draw that depends only on (stream, index): Box-Muller on two hashed uniforms.
pub(crate) fn standard_normal(stream: u64, index: u64) -> f64 {
    let (u1, u2) = uniforms(stream, index);
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

/// Element `i` of `out` becomes `(std * standard_normal(stream, start + i)) as f32`.
pub(crate) fn fill(stream: u64, start: u64, std: f64, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") && is_x86_feature_detected!("avx512vl") {
            // SAFETY: the features fill_avx512 is compiled for are present.
            return unsafe { fill_avx512(stream, start, std, out) };
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { fill_avx2(stream, start, std, out) };
        }
    }
    fill_exact(stream, start, std, out);
}

/// [`fill`] with the formula for every value.
fn fill_exact(stream: u64, start: u64, std: f64, out: &mut [f32]) {
    for (value, index) in out.iter_mut().zip(start..) {
        *value = (std * standard_normal(stream, index)) as f32;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
unsafe fn fill_avx512(stream: u64, start: u64, std: f64, out: &mut [f32]) {
    fill_blocks(stream, start, std, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fill_avx2(stream: u64, start: u64, std: f64, out: &mut [f32]) {
    fill_blocks(stream, start, std, out);
}

/// The fast path's bound on its f64 result's distance from the formula's, relative. The
/// polynomials below are within 2^-51 of `ln` and `cos` (measured over millions of draws; their
/// truncation errors are below 2^-57), the formula's `ln` and `cos` within an ulp of the exact
/// values, and the rest a few roundings: 2^-40 leaves a factor of 1000 to spare.
const TOLERANCE: f64 = 1.0 / (1u64 << 40) as f64;

/// Below this reduced `cos` argument (|t - k pi/2|), the fast path does not vouch for its value:
/// `cos t` is then tiny and its relative error grows as the argument shrinks.
const SMALLEST_REDUCED_ARGUMENT: f64 = 1.0 / (1u64 << 20) as f64;

/// Inlined into the `target_feature` functions above, so that it is compiled (and vectorised) for
/// their instruction sets.
#[inline(always)]
fn fill_blocks(stream: u64, start: u64, std: f64, out: &mut [f32]) {
    const BLOCK: usize = 256;
    for (chunk, block_start) in out.chunks_mut(BLOCK).zip((start..).step_by(BLOCK)) {
        let mut certain = [false; BLOCK];
        for ((value, certain), index) in chunk.iter_mut().zip(&mut certain).zip(block_start..) {
            (*value, *certain) = fast_draw(stream, index, std);
        }
        for ((value, certain), index) in chunk.iter_mut().zip(certain).zip(block_start..) {
            if !certain {
                *value = exact_draw(stream, index, std);
            }
        }
    }
}

/// Kept out of line: inlined, the compiler unrolls the fix-up loop around it at a high cost.
#[cold]
#[inline(never)]
fn exact_draw(stream: u64, index: u64, std: f64) -> f32 {
    (std * standard_normal(stream, index)) as f32
}

/// The value and whether it is certainly the formula's.
#[inline(always)]
fn fast_draw(stream: u64, index: u64, std: f64) -> (f32, bool) {
    let (u1, u2) = uniforms(stream, index);
    let radius = (-2.0 * ln_unit(u1)).sqrt();
    let (cos, reduced) = cos_of_angle(2.0 * PI * u2);
    let value = std * (radius * cos);
    let rounded = value as f32;
    let certain = reduced > SMALLEST_REDUCED_ARGUMENT
        && (value * (1.0 - TOLERANCE)) as f32 == rounded
        && (value * (1.0 + TOLERANCE)) as f32 == rounded;
    (rounded, certain)
}

/// The draw's two uniforms: u1 in (0, 1) (its `ln` is finite), u2 in [0, 1).
#[inline(always)]
fn uniforms(stream: u64, index: u64) -> (f64, f64) {
    let h1 = hash::mix(stream, index);
    let h2 = hash::splitmix64(h1);
    let u1 = ((h1 >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let u2 = (h2 >> 11) as f64 / (1u64 << 53) as f64;
    (u1, u2)
}

/// `ln x` for x in (0, 1]: x = 2^e m with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s) with
/// s = (m - 1) / (m + 1), |s| <= 0.172, as s times a polynomial in s^2 (Taylor, to s^23).
#[inline(always)]
fn ln_unit(x: f64) -> f64 {
    const ATANH: [f64; 11] =
        [1.0 / 3.0, 1.0 / 5.0, 1.0 / 7.0, 1.0 / 9.0, 1.0 / 11.0, 1.0 / 13.0, 1.0 / 15.0, 1.0 / 17.0, 1.0 / 19.0, 1.0 / 21.0, 1.0 / 23.0];
    let bits = x.to_bits();
    let mantissa = f64::from_bits((bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000);
    let above = mantissa > SQRT_2;
    let m = if above { mantissa * 0.5 } else { mantissa };
    let exponent = ((bits >> 52) as i64 - 1023 + above as i64) as f64;
    let s = (m - 1.0) / (m + 1.0);
    let z = s * s;
    let tail = ATANH[..10].iter().rev().fold(ATANH[10], |p, &c| p.mul_add(z, c));
    let ln_m = (2.0 * s).mul_add(z * tail, 2.0 * s);
    exponent.mul_add(LN_2, ln_m)
}

/// pi/2 in three parts (Cody-Waite): the first two with 31 significant bits, so that k times them
/// is exact for the quadrants k <= 4 here.
const HALF_PI: [f64; 3] = [1.570_796_326_734_125_6, 6.077_100_503_593_46e-11, 2.912_732_056_093_356e-20];
/// Taylor coefficients of cos r and sin r / r in r^2, to r^16: on |r| <= pi/4 the next terms are
/// below 2^-57.
const COS: [f64; 9] = [
    1.0,
    -1.0 / 2.0,
    1.0 / 24.0,
    -1.0 / 720.0,
    1.0 / 40_320.0,
    -1.0 / 3_628_800.0,
    1.0 / 479_001_600.0,
    -1.0 / 87_178_291_200.0,
    1.0 / 20_922_789_888_000.0,
];
const SIN: [f64; 9] = [
    1.0,
    -1.0 / 6.0,
    1.0 / 120.0,
    -1.0 / 5040.0,
    1.0 / 362_880.0,
    -1.0 / 39_916_800.0,
    1.0 / 6_227_020_800.0,
    -1.0 / 1_307_674_368_000.0,
    1.0 / 355_687_428_096_000.0,
];

/// `cos t` for t in [0, 2 pi], and |r|, the argument reduced to [-pi/4, pi/4] (t = k pi/2 + r).
#[inline(always)]
fn cos_of_angle(t: f64) -> (f64, f64) {
    let k = (t * FRAC_2_PI).round();
    let r = k.mul_add(-HALF_PI[2], k.mul_add(-HALF_PI[1], k.mul_add(-HALF_PI[0], t)));
    let z = r * r;
    let cos_r = COS[..8].iter().rev().fold(COS[8], |p, &c| p.mul_add(z, c));
    let sin_r = r * SIN[..8].iter().rev().fold(SIN[8], |p, &c| p.mul_add(z, c));
    // k's low bits, read from the f64 (a float-to-int conversion does not vectorise everywhere):
    // cos t is cos r, -sin r, -cos r, sin r in quadrants 0 to 3.
    let quadrant = (k + 4_503_599_627_370_496.0).to_bits();
    let value = if quadrant & 1 == 0 { cos_r } else { sin_r };
    let value = if (quadrant + 1) & 2 == 0 { value } else { -value };
    (value, r.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path gives the formula's bits, for several streams and scales (millions of draws,
    /// so that the fix-up of uncertain values runs too: about 1 value in 40,000).
    #[test]
    fn fill_has_the_formulas_bits() {
        for (name, std, start) in [("model.embed_tokens.weight", 0.02, 0), ("lm_head.weight", 1.0, 1 << 40), ("a", 0.006, 77)] {
            let stream = hash::stream(5, name);
            let mut values = vec![0.0f32; 3_000_001];
            fill(stream, start, std, &mut values);
            let differ = (start..).zip(&values).filter(|&(i, v)| v.to_bits() != ((std * standard_normal(stream, i)) as f32).to_bits());
            assert_eq!(differ.count(), 0, "{name} std {std}");
        }
    }

    /// The polynomials' own accuracy, far inside [`TOLERANCE`].
    #[test]
    fn ln_and_cos_polynomials_are_within_2_pow_minus_50() {
        let stream = hash::stream(1, "accuracy");
        let (mut ln_error, mut cos_error) = (0f64, 0f64);
        for index in 0..1_000_000 {
            let (u1, u2) = uniforms(stream, index);
            ln_error = ln_error.max((ln_unit(u1) / u1.ln() - 1.0).abs());
            let t = 2.0 * PI * u2;
            let (cos, reduced) = cos_of_angle(t);
            if reduced > SMALLEST_REDUCED_ARGUMENT {
                cos_error = cos_error.max((cos / t.cos() - 1.0).abs());
            }
        }
        let bound = 2f64.powi(-50);
        assert!(ln_error < bound && cos_error < bound, "ln {ln_error:e}, cos {cos_error:e}");
    }
}
