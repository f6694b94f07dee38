//! The end-of-run export: every rank gathers one unit at a time and rank 0 streams it into
//! `<output.dir>/final/`, written under a temporary name and renamed once complete.
//! - `hf`: a Hugging Face checkpoint in the model's dtype (with LoRA, the merged model), plus
//!   config.json and the model dir's tokenizer files;
//! - `peft`: `adapter_model.safetensors` and `adapter_config.json` as peft writes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::backend::AutodiffBackend;
use shard_checkpoint::{DEFAULT_MAX_SHARD_BYTES, DiskDtype, HfExport, SafetensorsWriter, TensorHeader, adapter_config, peft_name};
use shard_comm::Collective;
use shard_zero::{Engine, ExportKind};

use crate::run_config::ExportFormat;

/// Files besides the weights that make the export loadable as it was (tokenizer, generation).
const COMPANION_FILES: [&str; 5] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "generation_config.json"];

/// Where the model came from: its config.json and, for a checkpoint, its directory.
pub struct ModelOrigin<'a> {
    pub config_json: &'a Path,
    pub dir: Option<&'a Path>,
}

/// Writes the export on rank 0 (every rank must call this); returns its directory.
pub fn export<B: AutodiffBackend, C: Collective<B::InnerBackend>>(
    engine: &mut Engine<B, C>,
    format: ExportFormat,
    out_dir: &Path,
    origin: &ModelOrigin,
) -> Result<Option<PathBuf>> {
    let kind = match format {
        ExportFormat::None => return Ok(None),
        ExportFormat::Hf => ExportKind::Model,
        ExportFormat::Peft if engine.lora().is_some() => ExportKind::Adapters,
        ExportFormat::Peft => bail!("output.export = \"peft\" needs train.mode = \"lora\""),
    };
    let final_dir = out_dir.join("final");
    if !engine.comm().world().is_main() {
        engine.export(kind, None)?;
        return Ok(Some(final_dir));
    }
    let partial = out_dir.join("final.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    match kind {
        ExportKind::Model => write_hf(engine, &partial, origin)?,
        ExportKind::Adapters => write_peft(engine, &partial, origin)?,
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).with_context(|| format!("cannot replace {}", final_dir.display()))?;
    }
    std::fs::rename(&partial, &final_dir).with_context(|| format!("cannot move the export to {}", final_dir.display()))?;
    Ok(Some(final_dir))
}

fn write_hf<B: AutodiffBackend, C: Collective<B::InnerBackend>>(engine: &mut Engine<B, C>, dir: &Path, origin: &ModelOrigin) -> Result<()> {
    let dtype = engine.config().torch_dtype.as_deref().and_then(DiskDtype::from_torch_name).unwrap_or(DiskDtype::F32);
    let headers = engine.export_params(ExportKind::Model).into_iter().map(|p| TensorHeader { name: p.name, dtype, shape: p.shape }).collect();
    let mut writer = HfExport::create(dir, headers, DEFAULT_MAX_SHARD_BYTES)?;
    engine.export(ExportKind::Model, Some(&mut |spec, values| writer.write(&spec.name, values)))?;
    writer.finish()?;
    copy(origin.config_json, &dir.join("config.json"))?;
    if let Some(model_dir) = origin.dir {
        for name in COMPANION_FILES {
            if model_dir.join(name).is_file() {
                copy(&model_dir.join(name), &dir.join(name))?;
            }
        }
    }
    Ok(())
}

fn write_peft<B: AutodiffBackend, C: Collective<B::InnerBackend>>(engine: &mut Engine<B, C>, dir: &Path, origin: &ModelOrigin) -> Result<()> {
    let headers = engine
        .export_params(ExportKind::Adapters)
        .into_iter()
        .map(|p| TensorHeader { name: peft_name(&p.name), dtype: DiskDtype::F32, shape: p.shape })
        .collect();
    let metadata = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
    let mut writer = SafetensorsWriter::create(&dir.join("adapter_model.safetensors"), headers, &metadata)?;
    engine.export(ExportKind::Adapters, Some(&mut |spec, values| writer.write(&peft_name(&spec.name), values)))?;
    writer.finish()?;
    let lora = engine.lora().expect("checked by the caller");
    let base = origin.dir.map(|d| d.display().to_string());
    let path = dir.join("adapter_config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&adapter_config(lora, base.as_deref()))?)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
