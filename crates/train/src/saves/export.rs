//! Exports, written unit by unit into a staging directory that takes the place of the output
//! directory once complete (`shard_checkpoint::OutDir`: an export never removes what it did not
//! write):
//! - a Hugging Face checkpoint (with LoRA, the merged model W + (alpha / r) B A) in the dtype
//!   asked for, sharded when over the shard size, with config.json and the model's tokenizer
//!   files;
//! - or peft's `adapter_model.safetensors` and `adapter_config.json`.
//!
//! The end-of-run export (units gathered by the engine) and the export of a save (units read from
//! its rank files, `export_save`) both feed an [`Exporter`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use shard_checkpoint::{
    COMPANION_FILES, CheckpointError, DiskDtype, HfExport, OutDir, SafetensorsWriter, TensorHeader, adapter_config, merge_lora, peft_name,
};
use shard_comm::Collective;
use shard_model::{LoraConfig, MistralConfig, ParamSpec};
use shard_zero::{Engine, ExportKind, FlatPart};

/// The dtype a model's export has by default: its config.json's `torch_dtype`, else float32.
pub fn model_dtype(model: &MistralConfig) -> DiskDtype {
    model.torch_dtype.as_deref().and_then(DiskDtype::from_torch_name).unwrap_or(DiskDtype::F32)
}

/// What an export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportTarget {
    Hf { dtype: DiskDtype, max_shard_bytes: usize },
    Peft,
}

impl ExportTarget {
    pub fn kind(self) -> ExportKind {
        match self {
            ExportTarget::Hf { .. } => ExportKind::Model,
            ExportTarget::Peft => ExportKind::Adapters,
        }
    }
}

enum Writer {
    Hf(HfExport, DiskDtype),
    Peft(SafetensorsWriter),
}

/// Writes one export, a unit at a time.
pub struct Exporter {
    out: OutDir,
    writer: Writer,
    lora: Option<LoraConfig>,
}

impl Exporter {
    /// Starts an export of `params` (in the order units will come) into `out`; `protected` and
    /// `overwrite` as [`OutDir::create`] takes them.
    pub fn create(
        out: &Path,
        protected: &[&Path],
        overwrite: bool,
        target: ExportTarget,
        params: Vec<ParamSpec>,
        lora: Option<LoraConfig>,
    ) -> Result<Self> {
        if target == ExportTarget::Peft && lora.is_none() {
            bail!("a peft export needs LoRA adapters, and this model has none (train.mode = \"full\")");
        }
        let out = OutDir::create(out, protected, overwrite)?;
        let staging = out.path();
        let writer = match target {
            ExportTarget::Hf { dtype, max_shard_bytes } => {
                let headers = params.into_iter().map(|p| TensorHeader { name: p.name, dtype, shape: p.shape }).collect();
                Writer::Hf(HfExport::create(staging, headers, max_shard_bytes)?, dtype)
            }
            ExportTarget::Peft => {
                let headers =
                    params.into_iter().map(|p| TensorHeader { name: peft_name(&p.name), dtype: DiskDtype::F32, shape: p.shape }).collect();
                let metadata = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
                Writer::Peft(SafetensorsWriter::create(&staging.join("adapter_model.safetensors"), headers, &metadata)?)
            }
        };
        Ok(Self { out, writer, lora })
    }

    /// One unit: for an HF export its base part, merged with its adapters when it has them; for
    /// a peft export its adapters.
    pub fn write_unit(&mut self, base: Option<FlatPart>, adapters: Option<FlatPart>) -> Result<(), CheckpointError> {
        match &mut self.writer {
            Writer::Hf(writer, _) => {
                let (params, mut values) = base.expect("an HF export writes the base part");
                if let (Some((adapter_params, adapter_values)), Some(lora)) = (adapters, &self.lora) {
                    merge_unit(&params, &mut values, &adapter_params, &adapter_values, lora);
                }
                for (spec, offset) in &params {
                    writer.write(&spec.name, &values[*offset..offset + spec.numel()])?;
                }
            }
            Writer::Peft(writer) => {
                let (params, values) = adapters.expect("a peft export writes adapters");
                for (spec, offset) in &params {
                    writer.write(&peft_name(&spec.name), &values[*offset..offset + spec.numel()])?;
                }
            }
        }
        Ok(())
    }

    /// Writes the side files and moves the export into place. `model_config` is the model's
    /// config.json; `model_dir`, when the model came from a checkpoint, where its tokenizer
    /// files are (and what a peft adapter names as its base).
    pub fn finish(self, model_config: &serde_json::Value, model_dir: Option<&Path>) -> Result<PathBuf> {
        let dir = self.out.path();
        match self.writer {
            Writer::Hf(writer, dtype) => {
                writer.finish()?;
                write_json(&dir.join("config.json"), &exported_config(model_config, dtype))?;
                for name in COMPANION_FILES {
                    if let Some(file) = model_dir.map(|d| d.join(name)).filter(|f| f.is_file()) {
                        std::fs::copy(&file, dir.join(name)).with_context(|| format!("cannot copy {}", file.display()))?;
                    }
                }
            }
            Writer::Peft(writer) => {
                writer.finish()?;
                let lora = self.lora.as_ref().expect("checked in create");
                let base = base_model_name(model_config, model_dir);
                write_json(&dir.join("adapter_config.json"), &adapter_config(lora, base.as_deref()))?;
            }
        }
        Ok(self.out.commit()?)
    }
}

/// The model's config.json for an export of float tensors in `dtype`: the dtype under the key
/// transformers 5 reads and writes (`dtype`) and, where the config has it, the older
/// `torch_dtype` (transformers loads a model in the dtype its config names); and no
/// `quantization_config`, as a QLoRA base's weights leave dequantized.
fn exported_config(model_config: &serde_json::Value, dtype: DiskDtype) -> serde_json::Value {
    let mut config = model_config.clone();
    if let Some(keys) = config.as_object_mut() {
        keys.remove("quantization_config");
        keys.insert("dtype".into(), dtype.torch_name().into());
        if keys.contains_key("torch_dtype") {
            keys.insert("torch_dtype".into(), dtype.torch_name().into());
        }
    }
    config
}

/// What a peft adapter names as its base: the checkpoint's own `_name_or_path` where that is a
/// hub id (`org/name`), else the model directory as an absolute path, so that
/// `AutoPeftModelForCausalLM.from_pretrained` finds it from any working directory.
fn base_model_name(model_config: &serde_json::Value, model_dir: Option<&Path>) -> Option<String> {
    let is_hub_id = |name: &&str| {
        let mut parts = name.split('/');
        let word = |w: Option<&str>| {
            w.is_some_and(|w| !w.is_empty() && !w.starts_with('.') && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        };
        word(parts.next()) && word(parts.next()) && parts.next().is_none() && !Path::new(name).exists()
    };
    if let Some(hub_id) = model_config["_name_or_path"].as_str().filter(is_hub_id) {
        return Some(hub_id.to_owned());
    }
    let dir = model_dir?;
    let absolute = dir.canonicalize().or_else(|_| std::path::absolute(dir)).unwrap_or(dir.to_owned());
    Some(absolute.display().to_string())
}

/// W += (alpha / r) B A for every adapted projection of a unit.
fn merge_unit(
    params: &[(ParamSpec, usize)],
    values: &mut [f32],
    adapter_params: &[(ParamSpec, usize)],
    adapter_values: &[f32],
    lora: &LoraConfig,
) {
    let find = |params: &[(ParamSpec, usize)], suffix: &str| {
        let (spec, offset) = params.iter().find(|(s, _)| s.name.ends_with(suffix)).expect("every adapted projection has its tensors");
        *offset..offset + spec.numel()
    };
    for proj in lora.targeted() {
        let a = &adapter_values[find(adapter_params, &format!(".{proj}.lora_A.weight"))];
        let b = &adapter_values[find(adapter_params, &format!(".{proj}.lora_B.weight"))];
        merge_lora(&mut values[find(params, &format!(".{proj}.weight"))], a, b, lora.r, lora.scale());
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)?).with_context(|| format!("cannot write {}", path.display()))
}

/// The export at the end of training, into `<output.dir>/final`: every rank gathers, rank 0 writes.
pub fn export_at_end<B: AutodiffBackend, C: Collective<B::InnerBackend>>(
    engine: &Engine<B, C>,
    target: ExportTarget,
    final_dir: &Path,
    model_config: &serde_json::Value,
    model_dir: Option<&Path>,
) -> Result<PathBuf> {
    let kind = target.kind();
    if !engine.comm().world().is_main() {
        engine.export_units(kind, None)?;
        return Ok(final_dir.to_owned());
    }
    // `final/` is the run's own: an earlier invocation's export is replaced, a file the user put
    // there stays.
    let mut exporter = Exporter::create(final_dir, &[], true, target, engine.export_params(kind), engine.lora().cloned())?;
    engine.export_units(kind, Some(&mut |base, adapters| exporter.write_unit(base, adapters)))?;
    exporter.finish(model_config, model_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_json_names_the_exported_dtype() {
        let v5 = serde_json::json!({ "dtype": "float32", "hidden_size": 64 });
        assert_eq!(exported_config(&v5, DiskDtype::BF16), serde_json::json!({ "dtype": "bfloat16", "hidden_size": 64 }));
        let v4 = serde_json::json!({ "torch_dtype": "bfloat16", "quantization_config": { "quant_method": "bitsandbytes" } });
        assert_eq!(exported_config(&v4, DiskDtype::F32), serde_json::json!({ "torch_dtype": "float32", "dtype": "float32" }));
    }

    #[test]
    fn peft_names_a_hub_base_by_its_id_and_a_local_one_by_its_absolute_path() {
        let hub = serde_json::json!({ "_name_or_path": "mistralai/Mistral-7B-v0.1" });
        assert_eq!(base_model_name(&hub, Some(Path::new("."))).as_deref(), Some("mistralai/Mistral-7B-v0.1"));
        let local = serde_json::json!({ "_name_or_path": "../checkpoints/mistral" });
        let dir = tempfile_dir();
        let named = base_model_name(&local, Some(&dir.join("sub/.."))).unwrap();
        assert_eq!(Path::new(&named), dir.canonicalize().unwrap());
        assert_eq!(base_model_name(&local, None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("export-base-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        dir
    }
}
