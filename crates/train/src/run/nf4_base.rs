//! The frozen base of a QLoRA run: every decoder linear in NF4 as bitsandbytes holds it, read
//! pre-quantized (by record, a rank reading only its own) or quantized here from a float
//! checkpoint (in the model's dtype, as transformers loads it, one weight at a time). The engine
//! holds the NF4 records and dequantizes them on the device as bitsandbytes does on the device
//! the run computes on; an export of a save reads the linears dequantized here.

use std::cell::RefCell;
use std::path::Path;

use std::ops::Range;

use burn::tensor::DType;
use shard_checkpoint::{CheckpointError, DiskDtype, HfCheckpoint, Nf4Checkpoint, is_quantized};
use shard_model::{MistralConfig, ParamSpec, all_params, is_quantized_linear};
use shard_nf4::{BlockIndexing, Nf4Tensor, RecordSpan, Records, TorchReduction};
use shard_zero::{Dequantized, Nf4Source, ParamSource};

/// Where the NF4 weights come from.
enum Weights {
    /// A bitsandbytes checkpoint.
    Quantized(Nf4Checkpoint),
    /// A float checkpoint, quantized weight by weight (from `dtype`).
    Float { ckpt: HfCheckpoint, dtype: Option<DiskDtype> },
}

/// A [`ParamSource`] of the QLoRA base: the decoder linears as NF4 records (or dequantized, for an
/// export), the rest as stored.
pub struct Nf4Base {
    weights: Weights,
    /// Whether to dequantize as bitsandbytes' AVX-512 CPU kernel does (see [`BlockIndexing`]).
    avx512_cpu: bool,
    /// The last weight quantized from a float checkpoint: a rank reads a weight in one or two
    /// ranges, one after the other.
    last: RefCell<Option<(String, Nf4Tensor)>>,
}

impl Nf4Base {
    /// Opens the base in `dir` (checked against `model`). `cpu`: the run computes on the CPU,
    /// where bitsandbytes dequantizes with its CPU kernels (AVX-512 ones when the CPU has them).
    pub fn open(dir: &Path, model: &MistralConfig, cpu: bool) -> Result<Self, CheckpointError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| CheckpointError::Io { path: config_path.clone(), source })?;
        let config: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt { path: config_path, why: e.to_string() })?;
        let weights = if is_quantized(&config) {
            Weights::Quantized(Nf4Checkpoint::open(dir, &config, model)?)
        } else {
            let ckpt = HfCheckpoint::open(dir)?;
            ckpt.check_params(&all_params(model))?;
            Weights::Float { ckpt, dtype: model.torch_dtype.as_deref().and_then(DiskDtype::from_torch_name) }
        };
        Ok(Self { weights, avx512_cpu: cpu && avx512(), last: RefCell::new(None) })
    }

    /// The dtype bitsandbytes dequantizes `spec` to: the one it was quantized from.
    fn dtype(&self, spec: &ParamSpec) -> DiskDtype {
        match &self.weights {
            Weights::Quantized(nf4) => nf4.quant_state(&spec.name).expect("a quantized linear, checked at open").dtype,
            Weights::Float { ckpt, dtype } => dtype.unwrap_or_else(|| ckpt.dtype(&spec.name).expect("checked at open")),
        }
    }

    /// Runs `f` on `spec` quantized from the float checkpoint `ckpt` (in its dtype).
    fn with_quantized<T>(&self, ckpt: &HfCheckpoint, spec: &ParamSpec, f: impl FnOnce(&Nf4Tensor) -> T) -> Result<T, CheckpointError> {
        let mut last = self.last.borrow_mut();
        if last.as_ref().is_none_or(|(name, _)| *name != spec.name) {
            let mut values = ckpt.read_f32(&spec.name)?;
            self.dtype(spec).round(&mut values);
            *last = Some((spec.name.clone(), shard_nf4::quantize(&values, &spec.shape, TorchReduction::default())));
        }
        Ok(f(&last.as_ref().expect("filled above").1))
    }

    fn indexing(&self, spec: &ParamSpec) -> BlockIndexing {
        BlockIndexing::bitsandbytes_cpu(&spec.shape, self.avx512_cpu)
    }
}

impl ParamSource for Nf4Base {
    /// The linears dequantized on the host (an export of a save reads them so), the rest as stored.
    fn read(&self, spec: &ParamSpec, start: usize, len: usize, out: &mut Vec<f32>) -> Result<(), CheckpointError> {
        if !is_quantized_linear(&spec.name) {
            let ckpt = match &self.weights {
                Weights::Quantized(nf4) => nf4.checkpoint(),
                Weights::Float { ckpt, .. } => ckpt,
            };
            return ckpt.read_f32_range_into(&spec.name, start, len, out);
        }
        let indexing = self.indexing(spec);
        let mut values = match &self.weights {
            Weights::Quantized(nf4) => nf4.tensor(&spec.name)?.dequantize_range(start..start + len, indexing),
            Weights::Float { ckpt, .. } => self.with_quantized(ckpt, spec, |nf4| nf4.dequantize_range(start..start + len, indexing))?,
        };
        self.dtype(spec).round(&mut values);
        out.extend_from_slice(&values);
        Ok(())
    }

    fn nf4(&self) -> Option<&dyn Nf4Source> {
        Some(self)
    }
}

impl Nf4Source for Nf4Base {
    fn read_records(&self, spec: &ParamSpec, records: Range<usize>, out: &mut Records) -> Result<(), CheckpointError> {
        match &self.weights {
            Weights::Quantized(nf4) => {
                let span = RecordSpan::new(spec.numel(), records);
                let packed = nf4.packed_range(&spec.name, span.weights.clone())?;
                let absmax_codes = nf4.absmax_codes_range(&spec.name, span.blocks.clone())?;
                let mut nested_absmax = Vec::with_capacity(span.nested.len());
                nf4.nested_absmax_range(&spec.name, span.nested.clone(), &mut nested_absmax)?;
                let offset = nf4.quant_state(&spec.name).expect("checked at open").offset;
                out.push(&span, &packed, &absmax_codes, &nested_absmax, offset);
            }
            Weights::Float { ckpt, .. } => self.with_quantized(ckpt, spec, |nf4| nf4.push_records(records, out))?,
        }
        Ok(())
    }

    fn dequantized_as(&self, spec: &ParamSpec) -> Dequantized {
        let dtype = match self.dtype(spec) {
            DiskDtype::BF16 => DType::BF16,
            DiskDtype::F16 => DType::F16,
            _ => DType::F32,
        };
        Dequantized { indexing: self.indexing(spec), dtype }
    }
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}
