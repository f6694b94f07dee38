//! Dequantizing as bitsandbytes does: the absmaxes first (`dequantize_blockwise` of the codes,
//! plus the offset), then each weight `NF4_LEVELS[code] * absmax` in f32. A bf16 or f16 model
//! rounds that product to its dtype (to nearest even), as bitsandbytes' kernels do.

use std::ops::Range;

use crate::{BLOCK, NESTED_BLOCK, NF4_LEVELS, Nf4Tensor, blockwise8};

/// Which absmax a weight is scaled by.
///
/// The format's blocks are flat: element `e` of the row-major tensor belongs to block `e / 64`.
/// That is what bitsandbytes' CUDA kernels and its generic torch code compute. Its AVX-512 CPU
/// kernel (`dequantizeBlockwise4bitCpu`, taken when the row width is a multiple of 16) instead
/// looks up element (r, c) at `r * (width / 64) + c / 64`, which is another block whenever the
/// width is not a multiple of 64 (e.g. a [64, 160] weight). Checkpoints quantized there are the
/// same; only that machine's dequantized weights differ. `Avx512Rows` reproduces them (the
/// reference QLoRA fixtures of tiny-mistral were made on such a machine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockIndexing {
    Flat,
    Avx512Rows,
}

impl BlockIndexing {
    /// What bitsandbytes 0.50's CPU `dequantize_4bit` uses for a weight of `shape`, on a CPU with
    /// or without AVX-512.
    pub fn bitsandbytes_cpu(shape: &[usize], avx512: bool) -> Self {
        let width = shape.last().copied().unwrap_or(0);
        let rows_differ = shape.len() >= 2 && width % 16 == 0 && width % BLOCK != 0;
        if avx512 && rows_differ { Self::Avx512Rows } else { Self::Flat }
    }
}

impl Nf4Tensor {
    /// The f32 absmax of every block (`dequantize_blockwise(absmax_codes) + offset`).
    pub fn absmax(&self) -> Vec<f32> {
        let mut absmax = blockwise8::dequantize(&self.absmax_codes, &self.nested_absmax, &self.nested_code, NESTED_BLOCK);
        for a in &mut absmax {
            *a += self.offset;
        }
        absmax
    }

    /// Every weight, in f32.
    pub fn dequantize(&self, indexing: BlockIndexing) -> Vec<f32> {
        self.dequantize_range(0..self.numel(), indexing)
    }

    /// Weights `range` of the flattened tensor, in f32.
    pub fn dequantize_range(&self, range: Range<usize>, indexing: BlockIndexing) -> Vec<f32> {
        assert!(range.end <= self.numel(), "range {range:?} outside a tensor of {} weights", self.numel());
        let absmax = self.absmax();
        let width = *self.shape.last().expect("a weight has a shape");
        range
            .map(|e| {
                let byte = self.packed[e / 2];
                let code = if e % 2 == 0 { byte >> 4 } else { byte & 0x0F };
                let block = match indexing {
                    BlockIndexing::Flat => e / BLOCK,
                    BlockIndexing::Avx512Rows => (e / width) * (width / BLOCK) + (e % width) / BLOCK,
                };
                NF4_LEVELS[code as usize] * absmax[block]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_differ_from_flat_only_for_widths_that_are_multiples_of_16_but_not_of_64() {
        let of = |shape: &[usize]| BlockIndexing::bitsandbytes_cpu(shape, true);
        assert_eq!(of(&[64, 160]), BlockIndexing::Avx512Rows);
        for shape in [&[64, 128][..], &[33, 100], &[7, 45], &[160]] {
            assert_eq!(of(shape), BlockIndexing::Flat, "{shape:?}");
        }
        assert_eq!(BlockIndexing::bitsandbytes_cpu(&[64, 160], false), BlockIndexing::Flat);
    }
}
