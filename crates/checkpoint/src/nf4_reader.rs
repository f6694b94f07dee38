//! Reading a pre-quantized bitsandbytes checkpoint (what transformers saves of a 4-bit model, or
//! `shard-train quantize` writes): every quantized weight's parts checked at open, then its NF4
//! bytes read by element range (a rank reads only its slice) or the whole weight as an
//! [`Nf4Tensor`]. Parameters that are not quantized are read through [`Nf4Checkpoint::checkpoint`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde_json::Value;
use shard_model::{MistralConfig, all_params};
use shard_nf4::{BlockIndexing, NF4_LEVELS, Nf4Tensor, dynamic_map};

use shard_model::is_quantized_linear;

use crate::bnb::{QUANT_STATE_NF4, QuantState, check_quantization_config, nf4_part_headers, nf4_part_names};
use crate::{CheckpointError, HfCheckpoint};

/// An opened, checked NF4 checkpoint.
pub struct Nf4Checkpoint {
    ckpt: HfCheckpoint,
    states: BTreeMap<String, QuantState>,
}

/// Whether a parsed config.json describes a quantized model (it has a `quantization_config`).
pub fn is_quantized(config: &Value) -> bool {
    config.get("quantization_config").is_some()
}

impl Nf4Checkpoint {
    /// Opens `dir` for the model `cfg` (parsed from `config`, the directory's config.json), and
    /// checks the quantization config and each quantized weight: its six tensors, their dtypes and
    /// shapes, its quant state, the NF4 code book. Errors name the key or the tensor.
    pub fn open(dir: &Path, config: &Value, cfg: &MistralConfig) -> Result<Self, CheckpointError> {
        let config_path = dir.join("config.json");
        let quant_config = config.get("quantization_config").ok_or_else(|| CheckpointError::BadQuantization {
            origin: config_path.clone(),
            key: "quantization_config".into(),
            why: "missing: the checkpoint is not quantized".into(),
        })?;
        check_quantization_config(quant_config).map_err(|(key, why)| CheckpointError::BadQuantization { origin: config_path, key, why })?;
        let ckpt = HfCheckpoint::open(dir)?;
        let bad = |key: &str, why: String| CheckpointError::BadQuantization { origin: ckpt.origin().to_owned(), key: key.to_owned(), why };

        let mut states = BTreeMap::new();
        let mut expected: Vec<(String, Vec<usize>)> = Vec::new();
        let mut parts = Vec::new();
        for spec in all_params(cfg) {
            if !is_quantized_linear(&spec.name) {
                expected.push((spec.name, spec.shape));
                continue;
            }
            let names = nf4_part_names(&spec.name);
            let state_name = &names[5];
            let Some(state_shape) = ckpt.shape(state_name).map(<[usize]>::to_vec) else {
                let fp4 = format!("{}.quant_state.bitsandbytes__fp4", spec.name);
                return Err(match ckpt.shape(&fp4) {
                    Some(_) => bad(&fp4, format!("an fp4 quant state; only nf4 is read (no `{QUANT_STATE_NF4}`)")),
                    None => bad(state_name, "missing: no quant state for a quantized weight".into()),
                });
            };
            let json = ckpt.read_bytes_range(state_name, 0, state_shape.iter().product())?;
            let state = QuantState::parse(&json).map_err(|why| bad(state_name, format!("damaged quant state: {why}")))?;
            if state.shape != spec.shape {
                return Err(bad(state_name, format!("shape {:?}, but the model's `{}` is {:?}", state.shape, spec.name, spec.shape)));
            }
            parts.extend(nf4_part_headers(&spec.name, spec.numel(), state_shape.iter().product()));
            states.insert(spec.name, state);
        }
        ckpt.check_tensors(
            expected.iter().map(|(n, s)| (n.as_str(), s.as_slice())).chain(parts.iter().map(|p| (p.name.as_str(), p.shape.as_slice()))),
        )?;
        for part in &parts {
            let found = ckpt.dtype(&part.name).expect("checked above");
            if found != part.dtype {
                return Err(CheckpointError::WrongDtype {
                    origin: ckpt.origin().to_owned(),
                    name: part.name.clone(),
                    expected: part.dtype,
                    found,
                });
            }
        }
        let same =
            |values: Vec<f32>, book: &[f32]| values.len() == book.len() && values.iter().zip(book).all(|(a, b)| a.to_bits() == b.to_bits());
        let nested_code = dynamic_map();
        for name in states.keys() {
            let [_, _, _, nested_map, quant_map, _] = &nf4_part_names(name);
            if !same(ckpt.read_f32(quant_map)?, &NF4_LEVELS) {
                return Err(bad(quant_map, "is not the NF4 code book".into()));
            }
            if !same(ckpt.read_f32(nested_map)?, &nested_code) {
                return Err(bad(nested_map, "is not bitsandbytes' dynamic 8-bit code (create_dynamic_map)".into()));
            }
        }
        Ok(Self { ckpt, states })
    }

    /// The underlying checkpoint, for the parameters that are not quantized.
    pub fn checkpoint(&self) -> &HfCheckpoint {
        &self.ckpt
    }

    /// The quant state of `name`, or `None` when it is not a quantized weight.
    pub fn quant_state(&self, name: &str) -> Option<&QuantState> {
        self.states.get(name)
    }

    /// The packed codes of weights `elems` of `name` (the flattened weight): bytes
    /// `[start / 2, ceil(end / 2))`. `start` is even, so that no byte is shared with the previous
    /// range.
    pub fn packed_range(&self, name: &str, elems: Range<usize>) -> Result<Vec<u8>, CheckpointError> {
        assert!(elems.start.is_multiple_of(2), "`{name}`: an NF4 range starts at an even element, not {}", elems.start);
        let first = elems.start / 2;
        self.ckpt.read_bytes_range(name, first, elems.end.div_ceil(2) - first)
    }

    /// The absmax codes of NF4 blocks `blocks` of `name` (block `b` covers weights `64b..64b + 64`).
    pub fn absmax_codes_range(&self, name: &str, blocks: Range<usize>) -> Result<Vec<u8>, CheckpointError> {
        let [_, absmax, ..] = nf4_part_names(name);
        self.ckpt.read_bytes_range(&absmax, blocks.start, blocks.len())
    }

    /// The nested absmaxes of nested blocks `nested` of `name` (nested block `k` covers NF4
    /// blocks `256k..256k + 256`).
    pub fn nested_absmax_range(&self, name: &str, nested: Range<usize>, out: &mut Vec<f32>) -> Result<(), CheckpointError> {
        let [_, _, nested_absmax, ..] = nf4_part_names(name);
        self.ckpt.read_f32_range_into(&nested_absmax, nested.start, nested.len(), out)
    }

    /// `name` dequantized as bitsandbytes' `dequantize_4bit` returns it: rounded to the dtype it
    /// was quantized from (as f32 values), its blocks looked up as `indexing` says.
    pub fn dequantize(&self, name: &str, indexing: BlockIndexing) -> Result<Vec<f32>, CheckpointError> {
        let mut values = self.tensor(name)?.dequantize(indexing);
        self.states[name].dtype.round(&mut values);
        Ok(values)
    }

    /// The whole quantized weight `name`.
    pub fn tensor(&self, name: &str) -> Result<Nf4Tensor, CheckpointError> {
        let state = self
            .states
            .get(name)
            .ok_or_else(|| CheckpointError::MissingTensor { origin: self.ckpt.origin().to_owned(), name: format!("{name} (quantized)") })?;
        let numel: usize = state.shape.iter().product();
        let [_, _, nested_absmax, nested_map, _, _] = nf4_part_names(name);
        Ok(Nf4Tensor {
            shape: state.shape.clone(),
            packed: self.packed_range(name, 0..numel)?,
            absmax_codes: self.absmax_codes_range(name, 0..Nf4Tensor::blocks_of(numel))?,
            nested_absmax: self.ckpt.read_f32(&nested_absmax)?,
            nested_code: self.ckpt.read_f32(&nested_map)?,
            offset: state.offset,
        })
    }
}
