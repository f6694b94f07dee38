//! A save turned into a Hugging Face checkpoint or peft adapters, offline, in one process (no
//! mpirun), a unit at a time: each unit is assembled from the rank files that hold it, so peak
//! memory is about one unit whatever the size of the model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use shard_checkpoint::{CheckpointError, DiskDtype, HfCheckpoint, PartState, SavedCheckpoint, ShardKind, TrainState, UnitState, saves};
use shard_model::{MistralConfig, ParamSpec};
use shard_zero::{FlatPart, NF4_PART, ParamSource};

use crate::run::nf4_base::Nf4Base;
use crate::saves::export::{ExportTarget, Exporter, model_dtype};
use crate::saves::save::check_lora_base;
use crate::saves::tokenizer_files::ExportSources;

/// What to export from a save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveExport {
    /// The model (with LoRA, merged), in `dtype` (default: the model's own).
    Hf { dtype: Option<DiskDtype>, max_shard_bytes: usize },
    /// The LoRA adapters as peft writes them.
    Peft,
}

/// Exports the save `checkpoint` (a checkpoint, or a run's output.dir or checkpoints directory:
/// its latest complete checkpoint) into `out`, written as [`shard_checkpoint::OutDir`] says: the
/// save and every directory above it are never replaced, a directory holding other files only
/// with `overwrite`.
pub fn export_save(checkpoint: &Path, out: &Path, what: SaveExport, overwrite: bool) -> Result<PathBuf> {
    let saved = open_checkpoint(checkpoint)?;
    let dir = saved.dir().to_owned();
    let state = saved.state();
    let model = MistralConfig::from_json(&state.model_config, &dir.join(saves::STATE_FILE))?;
    let target = match what {
        SaveExport::Peft => ExportTarget::Peft,
        SaveExport::Hf { dtype, max_shard_bytes } => {
            ExportTarget::Hf { dtype: dtype.unwrap_or_else(|| model_dtype(&model)), max_shard_bytes }
        }
    };
    let with_base = matches!(target, ExportTarget::Hf { .. });
    let params = state
        .units
        .iter()
        .flat_map(|unit| match target {
            ExportTarget::Peft => adapters_part(unit).map(|p| part_params(&unit.parts[p])).unwrap_or_default(),
            ExportTarget::Hf { .. } => base_layout(unit),
        })
        .map(|(spec, _)| spec)
        .collect();
    let lora = state.lora.clone();
    let (model_config, model_dir, tokenizer, chat_template) =
        (state.model_config.clone(), state.model_path.clone(), state.tokenizer.clone(), state.chat_template.clone());
    let units = SaveUnits::new(saved, with_base)?;
    let mut exporter = Exporter::create(out, &[&dir], overwrite, target, params, lora)?;
    for u in 0..units.state().units.len() {
        let (base, adapters) = units.read_unit(u)?;
        if base.is_some() || adapters.is_some() {
            exporter.write_unit(base, adapters)?;
        }
    }
    exporter.finish(
        &model_config,
        &ExportSources { model_dir: model_dir.as_deref(), tokenizer: tokenizer.as_deref(), chat_template: chat_template.as_deref() },
    )
}

/// A save's parameters, a unit at a time: trained parts from its rank files, frozen ones (a LoRA
/// save's base) from the model the run started from.
pub struct SaveUnits {
    saved: SavedCheckpoint,
    /// The frozen base, when the base parts are read and the save holds adapters only.
    base_model: Option<Box<dyn ParamSource>>,
    with_base: bool,
}

impl SaveUnits {
    /// The save `checkpoint` means (see [`export_save`]), read with its base parts when `with_base`.
    pub fn open(checkpoint: &Path, with_base: bool) -> Result<Self> {
        Self::new(open_checkpoint(checkpoint)?, with_base)
    }

    fn new(saved: SavedCheckpoint, with_base: bool) -> Result<Self> {
        let state = saved.state();
        // A LoRA save holds the adapters only: its base is read from the model it started from.
        let base_model = match &state.lora {
            Some(_) if with_base => {
                let model = MistralConfig::from_json(&state.model_config, &saved.dir().join(saves::STATE_FILE))?;
                let path = state.model_path.as_deref().context("this LoRA save has no model.path to read its frozen base from")?;
                check_lora_base(&saved, Some(path), Some(&HfCheckpoint::open(path)?.fingerprint()))?;
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
        Ok(Self { saved, base_model, with_base })
    }

    pub fn state(&self) -> &TrainState {
        self.saved.state()
    }

    pub fn dir(&self) -> &Path {
        self.saved.dir()
    }

    /// Unit `u`'s base parameters (when read with them; a QLoRA layer's NF4 projections first, as
    /// the engine exports them) and its adapters, each with its layout.
    pub fn read_unit(&self, u: usize) -> Result<(Option<FlatPart>, Option<FlatPart>)> {
        let unit = &self.state().units[u];
        let read = |p: usize| -> Result<Vec<f32>> {
            let part = &unit.parts[p];
            if part.trainable {
                let mut values = Vec::with_capacity(part.numel);
                self.saved.read_flat(u, p, ShardKind::Param, 0..part.numel, &mut values)?;
                Ok(values)
            } else {
                let model = self.base_model.as_ref().expect("a frozen part is read only with the base");
                read_frozen(model.as_ref(), &part_params(part), part.numel)
            }
        };
        let adapters = adapters_part(unit).map(|p| Ok::<_, anyhow::Error>((part_params(&unit.parts[p]), read(p)?))).transpose()?;
        let base = match self.with_base {
            false => None,
            true => {
                let mut values = Vec::new();
                for (p, _) in base_parts(unit) {
                    values.extend(read(p)?);
                }
                Some((base_layout(unit), values))
            }
        };
        Ok((base, adapters))
    }
}

fn adapters_part(unit: &UnitState) -> Option<usize> {
    unit.parts.iter().position(|p| p.name == "adapters")
}

/// A unit's base parts: its frozen or trained base part, after a QLoRA layer's NF4 projections
/// (HF order: the projections, then the norms), by index.
fn base_parts(unit: &UnitState) -> Vec<(usize, &PartState)> {
    let mut parts: Vec<(usize, &PartState)> = unit.parts.iter().enumerate().filter(|(_, p)| p.name != "adapters").collect();
    parts.sort_by_key(|(_, p)| p.name != NF4_PART);
    parts
}

/// A unit's base parts as one flat vector, as the engine exports it.
fn base_layout(unit: &UnitState) -> Vec<(ParamSpec, usize)> {
    let mut start = 0;
    let mut layout = Vec::new();
    for (_, part) in base_parts(unit) {
        layout.extend(part_params(part).into_iter().map(|(spec, offset)| (spec, start + offset)));
        start += part.numel;
    }
    layout
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

/// The checkpoint `path` means, its rank files' checksums checked: itself, or the latest sound
/// one under it (a damaged one skipped with a warning).
fn open_checkpoint(path: &Path) -> Result<SavedCheckpoint> {
    if saves::is_complete(path) {
        return Ok(saves::open_checked(path, path, SavedCheckpoint::verify_all)?.0);
    }
    if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")) {
        return Err(CheckpointError::Incomplete(path.to_owned()).into());
    }
    let root = if path.join("checkpoints").is_dir() { path.join("checkpoints") } else { path.to_owned() };
    if !root.is_dir() {
        bail!("{} is not a checkpoint directory", path.display());
    }
    let (saved, warnings) = saves::open_checked(&root, Path::new("latest"), SavedCheckpoint::verify_all)?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    Ok(saved)
}
