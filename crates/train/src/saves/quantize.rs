//! A Hugging Face checkpoint quantized to NF4 as transformers + bitsandbytes save it (see
//! `shard_checkpoint::quantize_checkpoint`), with the checks a user's arguments need.

use std::path::Path;

use anyhow::{Context, Result, bail};
use shard_checkpoint::{DiskDtype, OutDir, QuantizeSummary, quantize_checkpoint};
use shard_nf4::TorchReduction;

/// Quantizes the checkpoint `model` into `out`, loaded in `dtype` (default: its own), matching
/// a bitsandbytes run on `torch_threads` threads bit for bit. `out` is written as an export is
/// (see [`OutDir`]: whole or not at all, never over anything but an earlier export unless
/// `overwrite`).
pub fn quantize(model: &Path, out: &Path, dtype: Option<DiskDtype>, torch_threads: usize, overwrite: bool) -> Result<QuantizeSummary> {
    let config_path = model.join("config.json");
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", config_path.display()))?;
    if torch_threads == 0 {
        bail!("--torch-threads must be at least 1");
    }
    if out.exists() && out.canonicalize()? == model.canonicalize()? {
        bail!("--out {} is the model directory: quantizing in place would overwrite the weights being read", out.display());
    }
    let torch = TorchReduction { threads: torch_threads };
    let out = OutDir::create(out, &[model], overwrite)?;
    let summary = quantize_checkpoint(model, &config, out.path(), dtype, torch)?;
    out.commit()?;
    Ok(summary)
}
