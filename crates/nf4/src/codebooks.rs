//! The two code books: bitsandbytes' 16 NF4 levels, and its 8-bit "dynamic" code
//! (`create_dynamic_map()`), which the double quantization uses for the absmaxes.

/// `get_4bit_type("nf4")`: quantiles of N(0, 1) normalised to [-1, 1], ascending; code `i` is
/// `NF4_LEVELS[i]`.
#[allow(clippy::excessive_precision)] // bitsandbytes' digits, as its source writes them
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// The levels of a packed byte's two codes, by byte: `(NF4_LEVELS[byte >> 4], NF4_LEVELS[byte & 15])`
/// (the first element is in the high nibble). Looking a byte up in these two tables unpacks and
/// decodes it at once.
pub fn byte_levels() -> ([f32; 256], [f32; 256]) {
    (std::array::from_fn(|b| NF4_LEVELS[b >> 4]), std::array::from_fn(|b| NF4_LEVELS[b & 0x0F]))
}

/// bitsandbytes' `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`, sorted:
/// for each decade `10^(i-6)`, i = 0..6, the midpoints of `torch.linspace(0.1, 1, 2^i + 1)`
/// scaled by it, both signs; then 0 and 1. Computed as torch computes it in f32.
pub fn dynamic_map() -> [f32; 256] {
    dynamic_map_of(true)
}

/// `create_dynamic_map(signed=False)`, sorted: the same decades with twice the midpoints
/// (`torch.linspace(0.1, 1, 2^(i+1) + 1)`), positive only; then 0 and 1. AdamW8bit's map for v.
pub fn dynamic_map_unsigned() -> [f32; 256] {
    dynamic_map_of(false)
}

fn dynamic_map_of(signed: bool) -> [f32; 256] {
    // Python's `10 ** (i - 6)`, each correctly rounded, as torch casts the scalar: to f32.
    const DECADES: [f64; 7] = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0];
    let mut data = Vec::with_capacity(256);
    for (i, decade) in DECADES.iter().enumerate() {
        let scale = *decade as f32;
        let fractions = if signed { 1 << i } else { 2 << i };
        let bounds = torch_linspace(0.1, 1.0, fractions + 1);
        let means: Vec<f32> = bounds.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
        data.extend(means.iter().map(|m| scale * m));
        if signed {
            data.extend(means.iter().map(|m| -scale * m));
        }
    }
    data.extend([0.0, 1.0]);
    assert_eq!(data.len(), 256, "the dynamic map has 2^8 values");
    data.sort_by(f32::total_cmp);
    data.try_into().expect("256 values")
}

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU: the first half counts up from
/// `start`, the second half down from `end`, each element one fused multiply-add of the f32 step
/// (torch's kernel is compiled with FMA contraction; without it 1 in 5 values differ in the last bit).
fn torch_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps).map(|i| if i < halfway { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - i - 1) as f32, end) }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_map_is_sorted_and_spans_minus_one_to_one() {
        let map = dynamic_map();
        assert!(map.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(map[255], 1.0);
        assert!(map[0] > -1.0 && map[0] < -0.99, "{}", map[0]);
        assert_eq!(map.iter().filter(|v| **v == 0.0).count(), 1);
    }

    #[test]
    fn unsigned_dynamic_map_is_sorted_and_spans_zero_to_one() {
        let map = dynamic_map_unsigned();
        assert!(map.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!((map[0], map[255]), (0.0, 1.0));
    }
}
