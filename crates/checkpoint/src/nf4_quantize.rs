//! Quantizing a Hugging Face checkpoint to NF4 as transformers + bitsandbytes save it
//! (`from_pretrained(dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True,
//! bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True), dtype=<the checkpoint's>)` then
//! `save_pretrained(out)`): every decoder linear in NF4, the rest in the model's dtype. One
//! tensor in memory at a time.

use std::path::Path;

use serde_json::Value;
use shard_model::{MistralConfig, all_params};
use shard_nf4::{NF4_LEVELS, Nf4Tensor, TorchReduction};

use shard_model::is_quantized_linear;

use crate::bnb::{QuantState, nf4_part_headers, nf4_part_names, quantization_config};
use crate::{COMPANION_FILES, CheckpointError, DEFAULT_MAX_SHARD_BYTES, DiskDtype, HfCheckpoint, HfExport, TensorHeader};

/// What [`quantize_checkpoint`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeSummary {
    /// Weights quantized to NF4.
    pub quantized: usize,
    /// Parameters kept as they were.
    pub kept: usize,
    /// Bytes of tensor data written (codes, absmaxes and states included).
    pub bytes: usize,
}

/// Writes `out_dir`: NF4 safetensors, and `config` (the parsed config.json of `dir`) with its
/// `quantization_config`. The model is loaded in `dtype`, by default config.json's (`dtype` or
/// `torch_dtype`) as transformers does, else each tensor's own; a weight is quantized from its
/// value in that dtype. `torch` is the reduction order of the absmaxes' mean, see
/// [`TorchReduction`].
pub fn quantize_checkpoint(
    dir: &Path,
    config: &Value,
    out_dir: &Path,
    dtype: Option<DiskDtype>,
    torch: TorchReduction,
) -> Result<QuantizeSummary, CheckpointError> {
    let config_path = dir.join("config.json");
    if config.get("quantization_config").is_some() {
        return Err(CheckpointError::BadQuantization {
            origin: config_path,
            key: "quantization_config".into(),
            why: "the model is quantized already".into(),
        });
    }
    let cfg = MistralConfig::from_json(config, &config_path)?;
    let ckpt = HfCheckpoint::open(dir)?;
    let specs = all_params(&cfg);
    ckpt.check_params(&specs)?;
    let model_dtype = dtype.or_else(|| cfg.torch_dtype.as_deref().and_then(DiskDtype::from_torch_name));
    let dtype_of = |name: &str| model_dtype.unwrap_or_else(|| ckpt.dtype(name).expect("checked above"));
    let read = |name: &str| {
        let mut values = ckpt.read_f32(name)?;
        dtype_of(name).round(&mut values);
        Ok::<_, CheckpointError>(values)
    };

    // The quant state, and so the file's header, holds each weight's offset: a first pass finds
    // them (a cheaper pass than quantizing: one absmax per block).
    let mut headers = Vec::new();
    let mut states = Vec::new();
    for spec in &specs {
        let dtype = dtype_of(&spec.name);
        if !is_quantized_linear(&spec.name) {
            headers.push(TensorHeader { name: spec.name.clone(), dtype, shape: spec.shape.clone() });
            continue;
        }
        let offset = shard_nf4::offset_of(&read(&spec.name)?, torch);
        let state = QuantState { dtype, shape: spec.shape.clone(), offset };
        headers.extend(nf4_part_headers(&spec.name, spec.numel(), state.to_json().len()));
        states.push(state);
    }
    let bytes = headers.iter().map(TensorHeader::bytes).sum();
    let mut out = HfExport::create(out_dir, headers, DEFAULT_MAX_SHARD_BYTES)?;
    let mut states = states.into_iter();
    for spec in &specs {
        let values = read(&spec.name)?;
        if !is_quantized_linear(&spec.name) {
            out.write(&spec.name, &values)?;
            continue;
        }
        let state = states.next().expect("one state per quantized weight");
        let nf4 = shard_nf4::quantize(&values, &spec.shape, torch);
        assert_eq!(nf4.offset.to_bits(), state.offset.to_bits(), "{}: the offset of both passes", spec.name);
        write_nf4(&mut out, &spec.name, &nf4, &state)?;
    }
    out.finish()?;

    let mut config = config.clone();
    config["quantization_config"] = quantization_config();
    if let Some(dtype) = model_dtype {
        let key = if config.get("torch_dtype").is_some() { "torch_dtype" } else { "dtype" };
        config[key] = dtype.torch_name().into();
    }
    let path = out_dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).expect("json") + "\n")
        .map_err(|source| CheckpointError::Io { path, source })?;
    for name in COMPANION_FILES {
        let from = dir.join(name);
        if from.exists() {
            std::fs::copy(&from, out_dir.join(name)).map_err(|source| CheckpointError::Io { path: from, source })?;
        }
    }
    let quantized = specs.iter().filter(|s| is_quantized_linear(&s.name)).count();
    Ok(QuantizeSummary { quantized, kept: specs.len() - quantized, bytes })
}

fn write_nf4(out: &mut HfExport, name: &str, nf4: &Nf4Tensor, state: &QuantState) -> Result<(), CheckpointError> {
    let [packed, absmax, nested_absmax, nested_map, quant_map, quant_state] = nf4_part_names(name);
    out.write_bytes(&packed, &nf4.packed)?;
    out.write_bytes(&absmax, &nf4.absmax_codes)?;
    out.write(&nested_absmax, &nf4.nested_absmax)?;
    out.write(&nested_map, &nf4.nested_code)?;
    out.write(&quant_map, &NF4_LEVELS)?;
    out.write_bytes(&quant_state, state.to_json().as_bytes())
}
