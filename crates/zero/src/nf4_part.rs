//! The NF4 part of a QLoRA decoder layer: its seven projections as bitsandbytes stores them,
//! sharded like any frozen part, gathered as NF4 bytes and dequantized on the device after the
//! gather.
//!
//! Shard boundaries: the part is a sequence of *records* (`shard_nf4::Records`), one per nested
//! block of 16,384 weights: its 8,192 bytes of packed codes and 256 absmax codes (one u8 tensor
//! of 8,448 bytes per record), and its nested absmax and the weight's offset (two f32 per
//! record). Each weight starts at a record of its own (its last record padded), and the part is
//! padded to a multiple of the group size in records, so every rank's slice is whole bytes,
//! whole absmax blocks and whole nested blocks: a gathered weight is a run of records that
//! dequantizes with reshapes and broadcasts only, no index arithmetic. Mistral-7B's projections
//! are multiples of 16,384 weights, so only the part's end is padded (at most N - 1 records);
//! the gather moves 8,456 bytes per 16,384 weights (0.516 bytes per weight).

use std::ops::Range;

use burn::tensor::{DType, Int, IntDType, Tensor, TensorData, backend::Backend};
use shard_checkpoint::CheckpointError;
use shard_comm::{Collective, Pending};
use shard_model::ParamSpec;
use shard_nf4::{
    BLOCK, BlockIndexing, NESTED_BLOCK, RECORD_BYTES, RECORD_CODE_BYTES, RECORD_PACKED_BYTES, RECORD_SCALES, RECORD_WEIGHTS, Records,
    byte_levels, dynamic_map, records_of,
};

use crate::Dtype;

/// Where a QLoRA base's quantized weights come from, by record.
pub trait Nf4Source {
    /// Appends records `records` of the quantized weight `spec` to `out`.
    fn read_records(&self, spec: &ParamSpec, records: Range<usize>, out: &mut Records) -> Result<(), CheckpointError>;

    /// How bitsandbytes dequantizes `spec` on the device the run computes on.
    fn dequantized_as(&self, spec: &ParamSpec) -> Dequantized;
}

/// How a weight is dequantized: which absmax each weight takes, and the dtype bitsandbytes
/// returns it in (the dtype it was quantized from), before the cast to the compute dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dequantized {
    pub indexing: BlockIndexing,
    /// f32, bf16 or f16.
    pub dtype: DType,
}

/// The records of a part: each weight and its first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nf4Layout {
    pub params: Vec<(ParamSpec, usize)>,
    /// Records before padding.
    pub records: usize,
    pub world_size: usize,
}

impl Nf4Layout {
    pub fn new(specs: Vec<ParamSpec>, world_size: usize) -> Self {
        let mut records = 0;
        let params = specs
            .into_iter()
            .map(|spec| {
                let first = records;
                records += records_of(spec.numel());
                (spec, first)
            })
            .collect();
        Self { params, records, world_size }
    }

    pub fn padded_records(&self) -> usize {
        self.records.div_ceil(self.world_size) * self.world_size
    }

    pub fn shard_records(&self) -> usize {
        self.padded_records() / self.world_size
    }

    /// Weights of the part (without padding).
    pub fn numel(&self) -> usize {
        self.params.iter().map(|(s, _)| s.numel()).sum()
    }

    /// Bytes a rank holds: its records.
    pub fn state_bytes(&self) -> usize {
        self.shard_records() * RECORD_BYTES
    }

    /// Bytes of the part gathered, as NF4 records.
    pub fn gathered_bytes(&self) -> usize {
        self.padded_records() * RECORD_BYTES
    }

    /// Bytes of its weights dequantized to `compute`.
    pub fn dequantized_bytes(&self, compute: Dtype) -> usize {
        self.numel() * compute.bytes()
    }

    /// This rank's records, read from `source`, padding included.
    pub fn read_shard(&self, source: &dyn Nf4Source, rank: usize) -> Result<Records, CheckpointError> {
        let s = self.shard_records();
        let mine = rank * s..(rank + 1) * s;
        let mut out = Records::default();
        for (spec, first) in &self.params {
            let records = mine.start.max(*first)..mine.end.min(first + records_of(spec.numel()));
            if !records.is_empty() {
                source.read_records(spec, records.start - first..records.end - first, &mut out)?;
            }
        }
        out.pad(s - out.len());
        Ok(out)
    }
}

/// This rank's records of a part, on the device.
pub struct Nf4Part<B: Backend> {
    pub layout: Nf4Layout,
    dequantized: Vec<Dequantized>,
    /// u8: each record's packed codes and absmax codes.
    codes: Tensor<B, 1, Int>,
    /// f32: each record's nested absmax and offset.
    scales: Tensor<B, 1>,
}

/// A part's records gathered from every rank of the group.
pub struct GatheredNf4<B: Backend> {
    codes: Tensor<B, 1, Int>,
    scales: Tensor<B, 1>,
}

/// A part's gather under way.
pub struct PendingNf4<B: Backend> {
    codes: Pending<B, Int>,
    scales: Pending<B>,
}

impl<B: Backend> PendingNf4<B> {
    pub fn wait(self) -> GatheredNf4<B> {
        GatheredNf4 { codes: self.codes.wait(), scales: self.scales.wait() }
    }
}

impl<B: Backend> Nf4Part<B> {
    /// Reads this rank's records of the weights `specs` from `source`.
    pub fn read(
        specs: Vec<ParamSpec>,
        source: &dyn Nf4Source,
        world: usize,
        rank: usize,
        device: &B::Device,
    ) -> Result<Self, CheckpointError> {
        let dequantized = specs.iter().map(|s| source.dequantized_as(s)).collect();
        let layout = Nf4Layout::new(specs, world);
        let records = layout.read_shard(source, rank)?;
        Ok(Self::new(layout, dequantized, records, device))
    }

    pub fn new(layout: Nf4Layout, dequantized: Vec<Dequantized>, records: Records, device: &B::Device) -> Self {
        assert_eq!(records.len(), layout.shard_records());
        let (codes_len, scales_len) = (records.codes.len(), records.scales.len());
        let codes = Tensor::from_data(TensorData::new(records.codes, [codes_len]), (device, DType::U8));
        let scales = Tensor::from_data(TensorData::new(records.scales, [scales_len]), (device, DType::F32));
        Self { layout, dequantized, codes, scales }
    }

    /// Starts gathering the part's records over `group`: its NF4 bytes, and two f32 per record.
    pub fn start_gather<C: Collective<B>>(&self, group: &C) -> PendingNf4<B> {
        PendingNf4 { codes: group.start_all_gather_bytes(self.codes.clone()), scales: group.start_all_gather(self.scales.clone()) }
    }

    /// Every weight of the gathered part, dequantized as bitsandbytes does (bit for bit) and cast
    /// to `compute`, flat, by name. Weight by weight, so that the temporaries are those of one
    /// weight.
    pub fn dequantize(&self, gathered: GatheredNf4<B>, compute: Dtype) -> Vec<(String, Tensor<B, 1>)> {
        let device = gathered.codes.device();
        let table = |values: &[f32]| Tensor::<B, 1>::from_data(TensorData::new(values.to_vec(), [values.len()]), (&device, DType::F32));
        let (high, low) = byte_levels();
        let (high, low, nested_code) = (table(&high), table(&low), table(&dynamic_map()));
        let mut weights = Vec::with_capacity(self.layout.params.len());
        for ((spec, first), how) in self.layout.params.iter().zip(&self.dequantized) {
            let n = records_of(spec.numel());
            let records =
                gathered.codes.clone().narrow(0, first * RECORD_CODE_BYTES, n * RECORD_CODE_BYTES).reshape([n, RECORD_CODE_BYTES]);
            let packed = records.clone().narrow(1, 0, RECORD_PACKED_BYTES).reshape([n * RECORD_PACKED_BYTES]).cast(IntDType::I32);
            let absmax_codes = records.narrow(1, RECORD_PACKED_BYTES, NESTED_BLOCK).reshape([n * NESTED_BLOCK]).cast(IntDType::I32);
            let scales = gathered.scales.clone().narrow(0, first * RECORD_SCALES, n * RECORD_SCALES).reshape([n, RECORD_SCALES]);
            // bitsandbytes' dequantize_blockwise of the absmaxes, then the offset added.
            let absmax = nested_code.clone().select(0, absmax_codes).reshape([n, NESTED_BLOCK]) * scales.clone().narrow(1, 0, 1)
                + scales.narrow(1, 1, 1);
            let absmax = absmax.reshape([n * NESTED_BLOCK]);
            let levels = Tensor::stack::<2>(vec![high.clone().select(0, packed.clone()), low.clone().select(0, packed)], 1)
                .reshape([n * RECORD_WEIGHTS]);
            let scale = block_scales(absmax, spec, how.indexing, &device);
            let values = levels.narrow(0, 0, spec.numel()) * scale;
            weights.push((spec.name.clone(), values.cast(how.dtype).cast(DType::F32).cast(compute.dtype())));
        }
        weights
    }
}

/// The absmax each weight of `spec` is scaled by, flat: its block's (`e / 64`), or with
/// [`BlockIndexing::Avx512Rows`] the block of its row and column, `r * (width / 64) + c / 64`.
fn block_scales<B: Backend>(absmax: Tensor<B, 1>, spec: &ParamSpec, indexing: BlockIndexing, device: &B::Device) -> Tensor<B, 1> {
    let numel = spec.numel();
    match indexing {
        BlockIndexing::Flat => {
            let blocks = absmax.dims()[0];
            absmax.reshape([blocks, 1]).expand([blocks, BLOCK]).reshape([blocks * BLOCK]).narrow(0, 0, numel)
        }
        BlockIndexing::Avx512Rows => {
            let width = *spec.shape.last().expect("a weight has a shape");
            let (rows, segments) = (numel / width, width.div_ceil(BLOCK));
            let index: Vec<i32> = (0..rows).flat_map(|r| (0..segments).map(move |s| (r * (width / BLOCK) + s) as i32)).collect();
            let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [rows * segments]), (device, DType::I32));
            absmax
                .select(0, index)
                .reshape([rows, segments, 1])
                .expand([rows, segments, BLOCK])
                .reshape([rows, segments * BLOCK])
                .narrow(1, 0, width)
                .reshape([numel])
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use burn::backend::Flex;
    use shard_checkpoint::DiskDtype;
    use shard_nf4::{Nf4Tensor, TorchReduction, quantize};

    use super::*;

    /// Weights quantized here, as a source.
    struct Quantized(Vec<(ParamSpec, Nf4Tensor, Dequantized)>, RefCell<usize>);

    impl Nf4Source for Quantized {
        fn read_records(&self, spec: &ParamSpec, records: Range<usize>, out: &mut Records) -> Result<(), CheckpointError> {
            *self.1.borrow_mut() += records.len();
            self.0.iter().find(|(s, ..)| s == spec).unwrap().1.push_records(records, out);
            Ok(())
        }

        fn dequantized_as(&self, spec: &ParamSpec) -> Dequantized {
            self.0.iter().find(|(s, ..)| s == spec).unwrap().2
        }
    }

    fn weight(name: &str, shape: &[usize], seed: usize) -> Vec<f32> {
        let numel: usize = shape.iter().product();
        let mut values: Vec<f32> = (0..numel).map(|i| (((i * 7919 + seed * 104_729) % 10_007) as f32 / 10_007.0 - 0.5) * 0.1).collect();
        if name.contains("zeros") {
            values[64..128].fill(0.0);
        }
        if name.contains("outlier") {
            values[3] = 7.5;
        }
        values
    }

    /// The dequantized weights of every rank's shard gathered (concatenated in rank order, as
    /// the all-gather does) equal crates/nf4's host dequantize bit for bit, rounded to the
    /// weight's dtype, for shapes of odd widths, more than one record, an all-zero block, an
    /// outlier, and the AVX-512 kernel's row indexing; at group sizes 1 to 4.
    #[test]
    fn gathered_shards_dequantize_as_the_host_does_bit_for_bit() {
        let device = Default::default();
        let cases: [(&str, &[usize], BlockIndexing, DType); 5] = [
            ("q_proj zeros", &[64, 64], BlockIndexing::Flat, DType::F32),
            ("down_proj", &[64, 160], BlockIndexing::Avx512Rows, DType::F32),
            ("odd outlier", &[33, 45], BlockIndexing::Flat, DType::BF16),
            ("two records", &[130, 200], BlockIndexing::Flat, DType::F16),
            ("rows bf16", &[300, 80], BlockIndexing::Avx512Rows, DType::BF16),
        ];
        let weights: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, (name, shape, indexing, dtype))| {
                let spec = ParamSpec { name: name.to_string(), shape: shape.to_vec() };
                (
                    spec,
                    quantize(&weight(name, shape, i), shape, TorchReduction::default()),
                    Dequantized { indexing: *indexing, dtype: *dtype },
                )
            })
            .collect();
        let source = Quantized(weights, RefCell::new(0));
        let specs: Vec<ParamSpec> = source.0.iter().map(|(s, ..)| s.clone()).collect();
        for world in 1..=4 {
            *source.1.borrow_mut() = 0;
            let parts: Vec<Nf4Part<Flex>> =
                (0..world).map(|rank| Nf4Part::read(specs.clone(), &source, world, rank, &device).unwrap()).collect();
            assert_eq!(*source.1.borrow(), parts[0].layout.records, "each record read by one rank only");
            let gathered = GatheredNf4 {
                codes: Tensor::cat(parts.iter().map(|p| p.codes.clone()).collect(), 0),
                scales: Tensor::cat(parts.iter().map(|p| p.scales.clone()).collect(), 0),
            };
            for compute in [Dtype::F32, Dtype::Bf16] {
                let gathered = GatheredNf4 { codes: gathered.codes.clone(), scales: gathered.scales.clone() };
                for ((name, values), (_, nf4, how)) in parts[0].dequantize(gathered, compute).into_iter().zip(&source.0) {
                    // The host's dequantize as `Nf4Base` rounds it, then the cast to the compute dtype.
                    let mut expected = nf4.dequantize(how.indexing);
                    [(DType::F32, DiskDtype::F32), (DType::BF16, DiskDtype::BF16), (DType::F16, DiskDtype::F16)]
                        .iter()
                        .find(|(dtype, _)| *dtype == how.dtype)
                        .unwrap()
                        .1
                        .round(&mut expected);
                    let expected =
                        Tensor::<Flex, 1>::from_data(TensorData::new(expected, [nf4.numel()]), (&device, DType::F32)).cast(compute.dtype());
                    let bits = |t: Tensor<Flex, 1>| {
                        t.cast(DType::F32).into_data().into_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                    };
                    assert_eq!(bits(values), bits(expected), "{name}, world {world}, {compute:?}");
                }
            }
        }
    }

    #[test]
    fn records_are_padded_to_the_group_and_a_weight_starts_a_record() {
        let spec = |n: &str, shape: &[usize]| ParamSpec { name: n.into(), shape: shape.to_vec() };
        let layout = Nf4Layout::new(vec![spec("a", &[64, 64]), spec("b", &[RECORD_WEIGHTS + 1]), spec("c", &[8])], 3);
        assert_eq!(layout.params.iter().map(|(_, first)| *first).collect::<Vec<_>>(), vec![0, 1, 3]);
        assert_eq!((layout.records, layout.padded_records(), layout.shard_records()), (4, 6, 2));
        assert_eq!(layout.state_bytes(), 2 * RECORD_BYTES);
        assert_eq!(RECORD_BYTES, 8_456);
    }
}
