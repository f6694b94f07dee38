//! NF4 as bitsandbytes 0.50 stores it, computed bit for bit as its CPU code does: 4-bit NormalFloat
//! codes in blocks of 64 weights, two codes per byte (the first element in the high nibble), and
//! the blocks' absmax double-quantized (minus their mean, to 8 bits with bitsandbytes' dynamic
//! code, in blocks of 256 with an f32 absmax each). Plain slices in and out: reading and writing
//! checkpoints is `shard-checkpoint`'s job, moving the bytes between ranks the engine's.

mod blockwise8;
mod codebooks;
mod dequantize;
mod quantize;
mod records;
mod torch_sum;

pub use blockwise8::{
    ADAMW8BIT_BLOCK, ADAMW8BIT_MIN_SIZE, Encoder as Blockwise8Encoder, dequantize as dequantize_blockwise_8bit,
    quantize as quantize_blockwise_8bit,
};
pub use codebooks::{NF4_LEVELS, byte_levels, dynamic_map, dynamic_map_unsigned};
pub use dequantize::BlockIndexing;
pub use quantize::{offset_of, quantize};
pub use records::{RECORD_BYTES, RECORD_CODE_BYTES, RECORD_PACKED_BYTES, RECORD_SCALES, RECORD_WEIGHTS, RecordSpan, Records, records_of};
pub use torch_sum::TorchReduction;

/// Weights per NF4 block (one absmax each): bitsandbytes' default, the only size read or written.
pub const BLOCK: usize = 64;
/// Absmaxes per block of the double quantization (one f32 nested absmax each).
pub const NESTED_BLOCK: usize = 256;

/// One weight tensor in NF4 with double-quantized absmax: what bitsandbytes keeps per linear.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    /// The shape of the weight it stands for (row-major), e.g. `[out_features, in_features]`.
    pub shape: Vec<usize>,
    /// Two codes per byte, the first element in the high nibble; `numel.div_ceil(2)` bytes (an
    /// odd last element is followed by the code of 0.0).
    pub packed: Vec<u8>,
    /// Each block's absmax minus `offset`, as an index into `nested_code`.
    pub absmax_codes: Vec<u8>,
    /// The absmax of each block of [`NESTED_BLOCK`] centred absmaxes.
    pub nested_absmax: Vec<f32>,
    /// The 256 values `absmax_codes` index (checkpoints store it; [`dynamic_map`] when quantized here).
    pub nested_code: Vec<f32>,
    /// The mean of the blocks' absmax, added back after dequantizing them.
    pub offset: f32,
}

impl Nf4Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of NF4 blocks (and absmaxes) of a tensor of `numel` weights.
    pub fn blocks_of(numel: usize) -> usize {
        numel.div_ceil(BLOCK)
    }

    /// Number of nested blocks (and nested absmaxes) of a tensor of `numel` weights.
    pub fn nested_blocks_of(numel: usize) -> usize {
        Self::blocks_of(numel).div_ceil(NESTED_BLOCK)
    }
}
