//! `bitsandbytes.functional.quantize_4bit(w, blocksize=64, quant_type="nf4",
//! compress_statistics=True)` on the CPU. The 4-bit step is bitsandbytes' torch implementation
//! (backends/default/ops.py, which the CPU backend uses), the double quantization its C++ kernel.

use rayon::prelude::*;

use crate::{BLOCK, NESTED_BLOCK, NF4_LEVELS, Nf4Tensor, TorchReduction, blockwise8, dynamic_map};

/// The smallest absmax the 4-bit step divides by (`absmax.clamp(min=1e-38)`), so that a block of
/// zeros is scaled by a finite number and gets the code of 0.0.
const MIN_ABSMAX: f32 = 1e-38;

/// Quantizes `values` (row-major, `shape`) to NF4 with double-quantized absmax. A bf16 or f16
/// weight is quantized from its exact f32 value, as bitsandbytes does (`A.float()`). `torch`
/// says how the absmaxes' mean is summed (see [`TorchReduction`]).
pub fn quantize(values: &[f32], shape: &[usize], torch: TorchReduction) -> Nf4Tensor {
    assert_eq!(values.len(), shape.iter().product::<usize>(), "values do not fill the shape {shape:?}");
    let absmax = block_absmax(values);
    let packed = quantize_4bit(values, &absmax);
    let offset = torch.mean(&absmax);
    let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let nested_code = dynamic_map();
    let (absmax_codes, nested_absmax) = blockwise8::quantize(&centred, &nested_code, NESTED_BLOCK);
    Nf4Tensor { shape: shape.to_vec(), packed, absmax_codes, nested_absmax, nested_code: nested_code.to_vec(), offset }
}

/// The `offset` that [`quantize`] will give `values`, without quantizing them (a writer needs it
/// before the tensor: the quant state that holds it is sized in the file's header).
pub fn offset_of(values: &[f32], torch: TorchReduction) -> f32 {
    torch.mean(&block_absmax(values))
}

/// The absmax of each block of 64. The last, shorter block keeps its absmax clamped to
/// [`MIN_ABSMAX`], the full blocks do not: ops.py treats it apart.
fn block_absmax(values: &[f32]) -> Vec<f32> {
    let mut absmax: Vec<f32> = values.par_chunks(BLOCK).map(abs_max).collect();
    if !values.len().is_multiple_of(BLOCK) {
        let last = absmax.last_mut().expect("a short block");
        *last = last.max(MIN_ABSMAX);
    }
    absmax
}

/// Blocks quantized by one task.
const BLOCKS_PER_TASK: usize = 1024;

/// The packed codes of `values` in blocks of 64 scaled by `absmax` (a block packs into whole
/// bytes, so tasks of whole blocks concatenate).
fn quantize_4bit(values: &[f32], absmax: &[f32]) -> Vec<u8> {
    values
        .par_chunks(BLOCK * BLOCKS_PER_TASK)
        .zip(absmax.par_chunks(BLOCKS_PER_TASK))
        .flat_map_iter(|(v, a)| quantize_blocks(v, a))
        .collect()
}

fn quantize_blocks(values: &[f32], absmax: &[f32]) -> Vec<u8> {
    let bounds: Vec<f32> = NF4_LEVELS.windows(2).map(|w| (w[0] + w[1]) / 2.0).collect();
    // `torch.bucketize(x, bounds)`: the number of bounds below x, so a tie takes the lower level.
    let level = |x: f32| bounds.iter().take_while(|b| **b < x).count() as u8;
    let mut codes = Vec::with_capacity(values.len() + 1);
    for (block, max) in values.chunks(BLOCK).zip(absmax) {
        if block.len() == BLOCK {
            let scale = 1.0 / max.max(MIN_ABSMAX);
            codes.extend(block.iter().map(|v| level((v * scale).clamp(-1.0, 1.0))));
        } else {
            // The shorter last block is divided by its absmax, not multiplied by the inverse.
            codes.extend(block.iter().map(|v| level((v / max).clamp(-1.0, 1.0))));
        }
    }
    if codes.len() % 2 == 1 {
        codes.push(level(0.0));
    }
    codes.chunks_exact(2).map(|pair| (pair[0] << 4) | pair[1]).collect()
}

fn abs_max(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_quantize_to_themselves_and_pack_high_nibble_first() {
        let absmax = block_absmax(&NF4_LEVELS);
        assert_eq!(absmax, vec![1.0]);
        assert_eq!(quantize_4bit(&NF4_LEVELS, &absmax), (0..8u8).map(|i| (2 * i) << 4 | (2 * i + 1)).collect::<Vec<_>>());
    }

    #[test]
    fn an_odd_count_is_padded_with_the_code_of_zero() {
        let values = [1.0, -1.0, 1.0];
        assert_eq!(quantize_4bit(&values, &block_absmax(&values)), vec![0xF0, 0xF7]);
    }
}
