//! A save turned into a Hugging Face checkpoint or peft adapters, offline, in one process (no
//! mpirun), a unit at a time: each unit is assembled from the rank files that hold it, so peak
//! memory is about one unit whatever the size of the model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use shard_checkpoint::{CheckpointError, DiskDtype, HfCheckpoint, PartState, SavedCheckpoint, ShardKind, saves};
use shard_model::{MistralConfig, ParamSpec};
use shard_zero::ParamSource;

use crate::export::{ExportTarget, Exporter, model_dtype};
use crate::nf4_base::Nf4Base;

/// What to export from a save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveExport {
    /// The model (with LoRA, merged), in `dtype` (default: the model's own).
    Hf { dtype: Option<DiskDtype>, max_shard_bytes: usize },
    /// The LoRA adapters as peft writes them.
    Peft,
}

/// Exports the save `checkpoint` (a checkpoint, or a run's output.dir or checkpoints directory:
/// its latest complete checkpoint) into `out` (replaced if it exists).
pub fn export_save(checkpoint: &Path, out: &Path, what: SaveExport) -> Result<PathBuf> {
    let dir = find_checkpoint(checkpoint)?;
    let saved = SavedCheckpoint::open(&dir)?;
    let state = saved.state();
    let model = MistralConfig::from_json(&state.model_config, &dir.join(saves::STATE_FILE))?;
    let target = match what {
        SaveExport::Peft => ExportTarget::Peft,
        SaveExport::Hf { dtype, max_shard_bytes } => ExportTarget::Hf { dtype: dtype.unwrap_or_else(|| model_dtype(&model)), max_shard_bytes },
    };
    // A LoRA save holds the adapters only: merging reads the frozen base from the model it started from.
    let base_model = match (&state.lora, target) {
        (Some(_), ExportTarget::Hf { .. }) => {
            let path = state.model_path.as_deref().context("this LoRA save has no model.path to merge its adapters into")?;
            let base: Box<dyn ParamSource> = if state.nf4_base {
                // Dequantized as a CPU run does (a save does not record its device).
                Box::new(Nf4Base::open(path, &model, true)?)
            } else {
                Box::new(HfCheckpoint::open(path)?)
            };
            Some(base)
        }
        _ => None,
    };

    let layouts: Vec<Vec<(ParamSpec, usize)>> =
        state.units.iter().flat_map(|u| &u.parts).map(part_params).collect();
    let exported_part = if target == ExportTarget::Peft { "adapters" } else { "base" };
    let params = state
        .units
        .iter()
        .flat_map(|u| &u.parts)
        .zip(&layouts)
        .filter(|(p, _)| p.name == exported_part)
        .flat_map(|(_, l)| l.iter().map(|(s, _)| s.clone()))
        .collect();
    let mut exporter = Exporter::create(out, target, params, state.lora.clone())?;
    let mut layouts = layouts.iter();
    for (u, unit) in state.units.iter().enumerate() {
        let mut base = None;
        let mut adapters = None;
        for (p, part) in unit.parts.iter().enumerate() {
            let layout = layouts.next().expect("one layout per part");
            let wanted = part.name == "adapters" || target != ExportTarget::Peft;
            if !wanted {
                continue;
            }
            let values = if part.trainable {
                let mut values = Vec::with_capacity(part.numel);
                saved.read_flat(u, p, ShardKind::Param, 0..part.numel, &mut values)?;
                values
            } else {
                let model = base_model.as_ref().expect("a frozen part is exported only when merging");
                read_frozen(model.as_ref(), layout, part.numel)?
            };
            let flat = Some((layout.as_slice(), values));
            if part.name == "adapters" { adapters = flat } else { base = flat }
        }
        if base.is_some() || adapters.is_some() {
            exporter.write_unit(base, adapters)?;
        }
    }
    let model_dir = state.model_path.as_deref();
    exporter.finish(&state.model_config, model_dir)
}

fn part_params(part: &PartState) -> Vec<(ParamSpec, usize)> {
    part.params.iter().map(|p| (ParamSpec { name: p.name.clone(), shape: p.shape.clone() }, p.offset)).collect()
}

/// A frozen part's parameters from the model checkpoint, laid out flat.
fn read_frozen(model: &dyn ParamSource, layout: &[(ParamSpec, usize)], numel: usize) -> Result<Vec<f32>> {
    let mut values = Vec::with_capacity(numel);
    for (spec, offset) in layout {
        debug_assert_eq!(values.len(), *offset);
        model.read(spec, 0, spec.numel(), &mut values)?;
    }
    Ok(values)
}

/// The checkpoint directory `path` means: itself, or the latest complete one under it.
fn find_checkpoint(path: &Path) -> Result<PathBuf> {
    if saves::is_complete(path) {
        return Ok(path.to_owned());
    }
    if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")) {
        return Err(CheckpointError::Incomplete(path.to_owned()).into());
    }
    let root = if path.join("checkpoints").is_dir() { path.join("checkpoints") } else { path.to_owned() };
    if !root.is_dir() {
        bail!("{} is not a checkpoint directory", path.display());
    }
    let (dir, fallback) = saves::resolve(&root, Path::new("latest"))?;
    if let Some(why) = fallback {
        eprintln!("warning: {why}");
    }
    Ok(dir)
}
