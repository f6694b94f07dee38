//! bitsandbytes' 8-bit blockwise quantization on the CPU (`quantize_cpu_impl` and
//! `dequantizeBlockwise8bitCpu` in csrc/cpu_ops.cpp), used for the double quantization: each
//! block's values are divided by its absmax and mapped to a code of a sorted 256-value code book.
//! The mapping is not a plain nearest-value search: the kernel rounds the scaled value to one of
//! 65,536 bins of [-1, 1] and looks the bin's code up in a table built once per code book, and
//! its compiler fuses one multiply-add of that rounding. Both are reproduced here.

/// bitsandbytes' AdamW8bit: elements per block of its 8-bit states (the optimizer's block size).
pub const ADAMW8BIT_BLOCK: usize = 256;
/// bitsandbytes' AdamW8bit: tensors with fewer elements keep 32-bit states (`min_8bit_size`).
pub const ADAMW8BIT_MIN_SIZE: usize = 4096;

/// Bins of [-1, 1] in the kernel's look-up table.
const LUT_SIZE: usize = 65_536;

/// Quantizes `values` in blocks of `block` to codes of `code` (sorted, 256 values): returns the
/// codes and each block's absmax (0 for a block of zeros, whose codes are then all 0).
pub fn quantize(values: &[f32], code: &[f32; 256], block: usize) -> (Vec<u8>, Vec<f32>) {
    let encoder = Encoder::new(code);
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(block));
    for chunk in values.chunks(block) {
        let max = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        absmax.push(max);
        codes.extend(chunk.iter().map(|v| encoder.encode(*v, max)));
    }
    (codes, absmax)
}

/// The kernel's mapping of one value to its code, given its block's absmax.
pub struct Encoder {
    lut: Vec<u8>,
}

impl Encoder {
    pub fn new(code: &[f32; 256]) -> Self {
        Self { lut: code_of_bin(code) }
    }

    /// The code of `value` in a block of absmax `absmax` (code 0 in a block of zeros).
    #[inline]
    pub fn encode(&self, value: f32, absmax: f32) -> u8 {
        if absmax == 0.0 {
            return 0;
        }
        let inv = 1.0 / absmax;
        self.lut[bin((value * inv).clamp(-1.0, 1.0))]
    }
}

/// `code[codes[i]] * absmax[i / block]`, as f32.
pub fn dequantize(codes: &[u8], absmax: &[f32], code: &[f32], block: usize) -> Vec<f32> {
    codes.iter().enumerate().map(|(i, c)| code[*c as usize] * absmax[i / block]).collect()
}

/// `norm_to_lut_index`: `(v + 1) * 0.5 * 65535 + 0.5`, truncated; the compiled kernel computes
/// the last multiply and the add as one fused multiply-add.
fn bin(v: f32) -> usize {
    let half = (v + 1.0) * 0.5;
    half.mul_add((LUT_SIZE - 1) as f32, 0.5) as u16 as usize
}

/// `build_quantize_lut`: bin `i` stands for `2i / 65535 - 1`, and gets the first code whose
/// midpoint with the next one is not below it (a value on a midpoint takes the lower code).
fn code_of_bin(code: &[f32; 256]) -> Vec<u8> {
    let midpoints: Vec<f32> = code.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut lut = Vec::with_capacity(LUT_SIZE);
    let mut idx = 0;
    for i in 0..LUT_SIZE {
        let val = (2.0 * i as f32) / (LUT_SIZE - 1) as f32 - 1.0;
        while idx < midpoints.len() && midpoints[idx] < val {
            idx += 1;
        }
        lut.push(idx as u8);
    }
    lut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dynamic_map;

    #[test]
    fn round_trips_within_the_code_spacing() {
        let values: Vec<f32> = (0..600).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let map = dynamic_map();
        let (codes, absmax) = quantize(&values, &map, 256);
        assert_eq!(absmax.len(), 3);
        let back = dequantize(&codes, &absmax, &map, 256);
        for (v, b) in values.iter().zip(&back) {
            assert!((v - b).abs() <= 0.01 * absmax[0], "{v} vs {b}");
        }
    }

    #[test]
    fn a_block_of_zeros_has_absmax_zero_and_code_zero() {
        let (codes, absmax) = quantize(&[0.0; 10], &dynamic_map(), 256);
        assert_eq!((codes, absmax), (vec![0; 10], vec![0.0]));
    }
}
