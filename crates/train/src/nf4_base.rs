//! The frozen base of a QLoRA run: every decoder linear in NF4 as bitsandbytes holds it, read
//! pre-quantized or quantized here from a float checkpoint (in the model's dtype, as transformers
//! loads it), and dequantized as bitsandbytes does on the device it runs on. For now the engine
//! holds that dequantized base in the compute dtype, as a LoRA base: the numerics are QLoRA's,
//! the memory is LoRA's (sharding the NF4 bytes themselves is the engine's next step).

use std::cell::RefCell;
use std::path::Path;

use shard_checkpoint::{CheckpointError, DiskDtype, HfCheckpoint, Nf4Checkpoint, is_quantized, is_quantized_linear};
use shard_model::{MistralConfig, ParamSpec, all_params};
use shard_nf4::{BlockIndexing, TorchReduction};
use shard_zero::ParamSource;

/// Where the NF4 weights come from.
enum Weights {
    /// A bitsandbytes checkpoint.
    Quantized(Nf4Checkpoint),
    /// A float checkpoint, quantized weight by weight (from `dtype`).
    Float { ckpt: HfCheckpoint, dtype: Option<DiskDtype> },
}

/// A [`ParamSource`] of the QLoRA base: NF4-dequantized decoder linears, the rest as stored.
pub struct Nf4Base {
    weights: Weights,
    /// Whether to dequantize as bitsandbytes' AVX-512 CPU kernel does (see [`BlockIndexing`]).
    avx512_cpu: bool,
    /// The last weight dequantized: a rank reads a weight in one or two ranges, one after the other.
    last: RefCell<Option<(String, Vec<f32>)>>,
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

    fn dequantized(&self, spec: &ParamSpec) -> Result<Vec<f32>, CheckpointError> {
        let indexing = BlockIndexing::bitsandbytes_cpu(&spec.shape, self.avx512_cpu);
        match &self.weights {
            Weights::Quantized(nf4) => nf4.dequantize(&spec.name, indexing),
            Weights::Float { ckpt, dtype } => {
                let dtype = dtype.unwrap_or_else(|| ckpt.dtype(&spec.name).expect("checked at open"));
                let mut values = ckpt.read_f32(&spec.name)?;
                dtype.round(&mut values);
                let mut values = shard_nf4::quantize(&values, &spec.shape, TorchReduction::default()).dequantize(indexing);
                dtype.round(&mut values);
                Ok(values)
            }
        }
    }
}

impl ParamSource for Nf4Base {
    fn read(&self, spec: &ParamSpec, start: usize, len: usize, out: &mut Vec<f32>) -> Result<(), CheckpointError> {
        if !is_quantized_linear(&spec.name) {
            let ckpt = match &self.weights {
                Weights::Quantized(nf4) => nf4.checkpoint(),
                Weights::Float { ckpt, .. } => ckpt,
            };
            return ckpt.read_f32_range_into(&spec.name, start, len, out);
        }
        let mut last = self.last.borrow_mut();
        if last.as_ref().is_none_or(|(name, _)| *name != spec.name) {
            *last = Some((spec.name.clone(), self.dequantized(spec)?));
        }
        let (_, values) = last.as_ref().expect("filled above");
        out.extend_from_slice(&values[start..start + len]);
        Ok(())
    }
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}
