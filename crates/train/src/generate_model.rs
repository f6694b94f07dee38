//! The model `shard-train generate` runs, whole on one device: read from a model directory (a
//! Hugging Face checkpoint or an export; f32, bf16 or f16 on disk, or bitsandbytes NF4
//! dequantized as a CPU run dequantizes it) or from a training save (so that a run can be looked
//! at mid-way), with peft LoRA adapters on top when given. Adapters stay separate from the base
//! (y = W x + (alpha / r) B A x), as peft computes them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::{Tensor, TensorData, backend::Backend};
use serde_json::Value;
use shard_checkpoint::{HfCheckpoint, is_quantized};
use shard_model::{LoraConfig, Mistral, MistralConfig, PROJECTIONS, ParamSpec, Weights, all_params, inference_model, lora_params};
use shard_zero::{FlatPart, ParamSource, PeftAdapters};

use crate::run::nf4_base::Nf4Base;
use crate::saves::export_save::SaveUnits;

/// Where the weights come from.
pub enum ModelSource<'a> {
    /// A model directory with config.json and safetensors.
    Dir(&'a Path),
    /// A save, or a run's output.dir or checkpoints directory (its latest complete save).
    Save(&'a Path),
}

/// A model ready to generate with.
pub struct GenerationModel<B: Backend> {
    pub model: Mistral<B>,
    /// The model's config.json.
    pub config_json: Value,
    /// The directory of the base model (where its tokenizer and generation_config.json are).
    pub model_dir: Option<PathBuf>,
    /// The adapters on the projections, if any.
    pub lora: Option<LoraConfig>,
}

/// Loads `source`, with the peft adapters in `adapter_dir` when given.
pub fn load<B: Backend>(source: ModelSource, adapter_dir: Option<&Path>, device: &B::Device) -> Result<GenerationModel<B>> {
    let (cfg, mut weights, mut lora, config_json, model_dir) = match source {
        ModelSource::Dir(dir) => {
            let (cfg, weights, config_json) = read_model_dir(dir, device)?;
            (cfg, weights, None, config_json, Some(dir.to_owned()))
        }
        ModelSource::Save(path) => read_save(path, device)?,
    };
    if let Some(dir) = adapter_dir {
        if lora.is_some() {
            bail!("--adapter {}: this save has adapters of its own (a LoRA run); give one or the other", dir.display());
        }
        lora = Some(read_adapters(dir, &cfg, &mut weights, device)?);
    }
    let model = inference_model(&cfg, weights, lora.as_ref())?;
    Ok(GenerationModel { model, config_json, model_dir, lora })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn read_model_dir<B: Backend>(dir: &Path, device: &B::Device) -> Result<(MistralConfig, Weights<B>, Value)> {
    let config_path = dir.join("config.json");
    let config_json = read_json(&config_path)?;
    let cfg = MistralConfig::from_json(&config_json, &config_path)?;
    let source: Box<dyn ParamSource> = if is_quantized(&config_json) {
        Box::new(Nf4Base::open(dir, &cfg, true)?)
    } else {
        let ckpt = HfCheckpoint::open(dir)?;
        ckpt.check_params(&all_params(&cfg))?;
        Box::new(ckpt)
    };
    let mut weights = Weights::default();
    for spec in all_params(&cfg) {
        let mut values = Vec::with_capacity(spec.numel());
        source.read(&spec, 0, spec.numel(), &mut values)?;
        insert(&mut weights, &spec, values, device);
    }
    Ok((cfg, weights, config_json))
}

type SaveContents<B> = (MistralConfig, Weights<B>, Option<LoraConfig>, Value, Option<PathBuf>);

fn read_save<B: Backend>(path: &Path, device: &B::Device) -> Result<SaveContents<B>> {
    let units = SaveUnits::open(path, true)?;
    let state = units.state();
    let cfg = MistralConfig::from_json(&state.model_config, &units.dir().join(shard_checkpoint::saves::STATE_FILE))?;
    let mut weights = Weights::default();
    for u in 0..state.units.len() {
        let (base, adapters) = units.read_unit(u)?;
        for part in base.into_iter().chain(adapters) {
            insert_part(&mut weights, part, device);
        }
    }
    eprintln!("save: {} (step {})", units.dir().display(), state.step);
    Ok((cfg, weights, state.lora.clone(), state.model_config.clone(), state.model_path.clone()))
}

fn insert_part<B: Backend>(weights: &mut Weights<B>, (layout, values): FlatPart, device: &B::Device) {
    for (spec, offset) in layout {
        let part = values[offset..offset + spec.numel()].to_vec();
        insert(weights, &spec, part, device);
    }
}

fn insert<B: Backend>(weights: &mut Weights<B>, spec: &ParamSpec, values: Vec<f32>, device: &B::Device) {
    let data = TensorData::new(values, [spec.numel()]).convert::<B::FloatElem>();
    weights.insert(spec.name.clone(), Tensor::from_data(data, device));
}

/// Reads peft's `adapter_config.json` and `adapter_model.safetensors` in `dir` into `weights`.
fn read_adapters<B: Backend>(dir: &Path, cfg: &MistralConfig, weights: &mut Weights<B>, device: &B::Device) -> Result<LoraConfig> {
    let lora = adapter_lora_config(&dir.join("adapter_config.json"))?;
    let specs: Vec<ParamSpec> = (0..cfg.num_hidden_layers).flat_map(|i| lora_params(cfg, i, lora.r, lora.targeted())).collect();
    let adapters = PeftAdapters(HfCheckpoint::open_file(&dir.join("adapter_model.safetensors"))?);
    adapters.check(&specs)?;
    for spec in &specs {
        let mut values = Vec::with_capacity(spec.numel());
        adapters.read(spec, 0, spec.numel(), &mut values)?;
        insert(weights, spec, values, device);
    }
    Ok(lora)
}

/// The adapters' shape and scale from peft's `adapter_config.json`: `r`, `lora_alpha`,
/// `target_modules` (names among the projections); variants that compute otherwise are refused.
fn adapter_lora_config(path: &Path) -> Result<LoraConfig> {
    let config = read_json(path)?;
    let bad = |key: &str, expected: &str| anyhow::anyhow!("{}: `{key}` is {}, expected {expected}", path.display(), config[key]);
    if config["peft_type"].as_str().is_some_and(|t| t != "LORA") {
        return Err(bad("peft_type", "\"LORA\""));
    }
    for key in ["use_dora", "use_rslora"] {
        if config[key].as_bool() == Some(true) {
            return Err(bad(key, "false (plain LoRA)"));
        }
    }
    let r = config["r"].as_u64().filter(|&r| r > 0).ok_or_else(|| bad("r", "a positive integer"))? as usize;
    let alpha = config["lora_alpha"].as_f64().ok_or_else(|| bad("lora_alpha", "a number"))?;
    let targets: Vec<String> = match &config["target_modules"] {
        Value::String(one) => vec![one.clone()],
        Value::Array(names) => names
            .iter()
            .map(|n| n.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("target_modules", "a list of projection names"))?,
        _ => return Err(bad("target_modules", "a list of projection names")),
    };
    if let Some(unknown) = targets.iter().find(|t| !PROJECTIONS.contains(&t.as_str())) {
        bail!("{}: `target_modules` names {unknown:?}, expected names among {}", path.display(), PROJECTIONS.join(", "));
    }
    Ok(LoraConfig { r, alpha, dropout: 0.0, targets })
}
