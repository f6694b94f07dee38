//! An NF4 weight cut into *records*, one per nested block: 256 blocks of 64 weights (16,384
//! weights) with their packed codes, absmax codes, nested absmax and the weight's offset. A record
//! dequantizes on its own (no other record's values are needed), so a record is the smallest
//! piece of a weight that can be held, moved and dequantized apart: the engine shards QLoRA's
//! base in whole records.

use std::ops::Range;

use crate::{BLOCK, NESTED_BLOCK, Nf4Tensor};

/// Weights per record.
pub const RECORD_WEIGHTS: usize = BLOCK * NESTED_BLOCK;
/// Bytes of a record's packed codes (two per byte).
pub const RECORD_PACKED_BYTES: usize = RECORD_WEIGHTS / 2;
/// Bytes of a record's codes: its packed codes, then its 256 absmax codes.
pub const RECORD_CODE_BYTES: usize = RECORD_PACKED_BYTES + NESTED_BLOCK;
/// f32 scales of a record: its nested absmax, then the weight's offset.
pub const RECORD_SCALES: usize = 2;
/// Bytes of a whole record: about 0.516 bytes per weight (4.13 bits).
pub const RECORD_BYTES: usize = RECORD_CODE_BYTES + 4 * RECORD_SCALES;

/// Records of a weight of `numel` weights (its nested blocks).
pub fn records_of(numel: usize) -> usize {
    Nf4Tensor::nested_blocks_of(numel)
}

/// What records `records` of a weight of `numel` weights cover, clipped to the weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpan {
    pub weights: Range<usize>,
    /// Bytes of the packed codes: `weights` halved (a record starts at an even weight).
    pub packed: Range<usize>,
    /// NF4 blocks, i.e. absmax codes.
    pub blocks: Range<usize>,
    /// Nested blocks, i.e. nested absmaxes (the records themselves).
    pub nested: Range<usize>,
}

impl RecordSpan {
    pub fn new(numel: usize, records: Range<usize>) -> Self {
        assert!(records.end <= records_of(numel), "records {records:?} of a weight of {numel} weights");
        let weights = (records.start * RECORD_WEIGHTS).min(numel)..(records.end * RECORD_WEIGHTS).min(numel);
        let packed = weights.start / 2..weights.end.div_ceil(2);
        let blocks = weights.start / BLOCK..weights.end.div_ceil(BLOCK);
        Self { weights, packed, blocks, nested: records }
    }
}

/// Records laid out for moving: each record's code bytes padded to [`RECORD_CODE_BYTES`]
/// (padding codes are 0x77, the code of 0.0, padding absmax codes 0) and its scales.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Records {
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
}

impl Records {
    /// Appends the records of one weight, given the parts of `span` as the weight stores them.
    pub fn push(&mut self, span: &RecordSpan, packed: &[u8], absmax_codes: &[u8], nested_absmax: &[f32], offset: f32) {
        assert_eq!((packed.len(), absmax_codes.len(), nested_absmax.len()), (span.packed.len(), span.blocks.len(), span.nested.len()));
        for (r, nested) in nested_absmax.iter().enumerate() {
            let start = self.codes.len();
            let packed = &packed[(r * RECORD_PACKED_BYTES).min(packed.len())..((r + 1) * RECORD_PACKED_BYTES).min(packed.len())];
            self.codes.extend_from_slice(packed);
            self.codes.resize(start + RECORD_PACKED_BYTES, 0x77);
            let codes = &absmax_codes[(r * NESTED_BLOCK).min(absmax_codes.len())..((r + 1) * NESTED_BLOCK).min(absmax_codes.len())];
            self.codes.extend_from_slice(codes);
            self.codes.resize(start + RECORD_CODE_BYTES, 0);
            self.scales.extend([*nested, offset]);
        }
    }

    /// `n` records of padding (they dequantize to zeros).
    pub fn pad(&mut self, n: usize) {
        self.codes.resize(self.codes.len() + n * RECORD_CODE_BYTES, 0x77);
        self.scales.resize(self.scales.len() + n * RECORD_SCALES, 0.0);
    }

    pub fn len(&self) -> usize {
        self.scales.len() / RECORD_SCALES
    }

    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }
}

impl Nf4Tensor {
    /// Appends records `records` of this weight to `out`.
    pub fn push_records(&self, records: Range<usize>, out: &mut Records) {
        let span = RecordSpan::new(self.numel(), records);
        out.push(
            &span,
            &self.packed[span.packed.clone()],
            &self.absmax_codes[span.blocks.clone()],
            &self.nested_absmax[span.nested.clone()],
            self.offset,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_clip_to_the_weight_and_keep_records_whole() {
        let numel = RECORD_WEIGHTS + 101;
        assert_eq!(records_of(numel), 2);
        let second = RecordSpan::new(numel, 1..2);
        assert_eq!(second.weights, RECORD_WEIGHTS..numel);
        assert_eq!(second.packed, RECORD_PACKED_BYTES..RECORD_PACKED_BYTES + 51);
        assert_eq!(second.blocks, 256..258);
        let whole = RecordSpan::new(numel, 0..2);
        assert_eq!((whole.packed.len(), whole.blocks.len(), whole.nested.len()), (numel.div_ceil(2), numel.div_ceil(64), 2));
    }

    #[test]
    fn records_are_padded_to_whole_records() {
        let values: Vec<f32> = (0..300).map(|i| (i as f32 * 0.37).sin()).collect();
        let nf4 = crate::quantize(&values, &[3, 100], crate::TorchReduction::default());
        let mut records = Records::default();
        nf4.push_records(0..1, &mut records);
        records.pad(1);
        assert_eq!(records.len(), 2);
        assert_eq!(records.codes.len(), 2 * RECORD_CODE_BYTES);
        assert_eq!(&records.codes[..150], &nf4.packed[..]);
        assert!(records.codes[150..RECORD_PACKED_BYTES].iter().all(|&c| c == 0x77));
        assert_eq!(&records.codes[RECORD_PACKED_BYTES..RECORD_PACKED_BYTES + 5], &nf4.absmax_codes[..]);
        assert_eq!(records.scales, vec![nf4.nested_absmax[0], nf4.offset, 0.0, 0.0]);
    }
}
