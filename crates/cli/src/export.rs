//! The end-of-run export as a Hugging Face checkpoint: every rank gathers one unit at a time and
//! rank 0 streams it into safetensors in the checkpoint's dtype, under a temporary name that is
//! renamed to `<output.dir>/final` once complete.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use shard_checkpoint::{DEFAULT_MAX_SHARD_BYTES, DiskDtype, HfExport, TensorHeader};
use shard_comm::Collective;
use shard_model::all_params;
use shard_zero::Engine;

/// Files besides the weights that make the export loadable as it was (tokenizer, generation).
const COMPANION_FILES: [&str; 5] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "generation_config.json"];

/// Returns the export directory (on every rank).
pub fn export_hf<B: AutodiffBackend, C: Collective<B::InnerBackend>>(
    engine: &mut Engine<B, C>,
    out_dir: &Path,
    config_json: &Path,
    model_dir: Option<&Path>,
) -> Result<PathBuf> {
    let final_dir = out_dir.join("final");
    if !engine.comm().world().is_main() {
        engine.export(None)?;
        return Ok(final_dir);
    }
    let partial = out_dir.join("final.partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).with_context(|| format!("cannot remove {}", partial.display()))?;
    }
    let cfg = engine.config();
    let dtype = cfg.torch_dtype.as_deref().and_then(DiskDtype::from_torch_name).unwrap_or(DiskDtype::F32);
    let headers = all_params(cfg).into_iter().map(|p| TensorHeader { name: p.name, dtype, shape: p.shape }).collect();
    let mut writer = HfExport::create(&partial, headers, DEFAULT_MAX_SHARD_BYTES)?;
    engine.export(Some(&mut |spec, values| writer.write(&spec.name, values)))?;
    writer.finish()?;

    copy(config_json, &partial.join("config.json"))?;
    if let Some(dir) = model_dir {
        for name in COMPANION_FILES {
            if dir.join(name).is_file() {
                copy(&dir.join(name), &partial.join(name))?;
            }
        }
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).with_context(|| format!("cannot replace {}", final_dir.display()))?;
    }
    std::fs::rename(&partial, &final_dir).with_context(|| format!("cannot move the export to {}", final_dir.display()))?;
    Ok(final_dir)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}
