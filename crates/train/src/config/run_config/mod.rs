//! The run config (TOML): what to train, on what, how, and where to write.
//!
//! Unknown keys are refused (`deny_unknown_fields`), values are validated once at start-up, and
//! every error names the file and the key. Relative paths are taken relative to the config
//! file's own directory, so that a config works from any working directory, and made absolute.
//! Each section lives in its own module with the checks of its own keys; the checks that span
//! sections are here.

mod data;
mod eval;
mod invalid;
mod layers;
mod lora;
mod model;
mod output;
mod relative;
mod runtime;
mod train;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shard_core::Dtype;
use shard_data::DataSpec;
use shard_model::MistralConfig;

pub use data::DataSection;
pub use eval::EvalSection;
pub use invalid::RunConfigError;
use invalid::{Check, invalid};
pub use layers::{Override, parse_override};
pub use lora::LoraSection;
pub use model::{ModelInit, ModelSection};
pub use output::{ExportFormat, OutputSection};
pub use runtime::{Collectives, Device, NodeKeyword, Offload, RuntimeSection, ShardSize};
pub use train::{DEFAULT_STEPS, OnNonFinite, Optimizer, TrainMode, TrainSection};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: ModelSection,
    pub data: DataSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub lora: LoraSection,
    #[serde(default)]
    pub output: OutputSection,
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// Without an `[eval]` section, nothing is evaluated.
    pub eval: Option<EvalSection>,
}

impl RunConfig {
    /// `model.dtype`, or its default: bf16 on cuda, f32 on the CPU and on wgpu (which has no bf16).
    pub fn compute_dtype(&self) -> Dtype {
        self.model.dtype.unwrap_or(match self.runtime.device {
            Device::Cpu | Device::Wgpu => Dtype::F32,
            Device::Cuda => Dtype::Bf16,
        })
    }

    /// `runtime.collectives`, or its default: NCCL on cuda, MPI elsewhere.
    pub fn collectives(&self) -> Collectives {
        self.runtime.collectives.unwrap_or(match self.runtime.device {
            Device::Cuda => Collectives::Nccl,
            Device::Cpu | Device::Wgpu => Collectives::Mpi,
        })
    }

    /// Reads (with its base files and `overrides`, see [`layers`]), resolves paths against the
    /// file's directory, validates the values, and checks that the run can start: its input files
    /// exist.
    pub fn load(path: &Path, overrides: &[Override]) -> Result<Self, RunConfigError> {
        let config = Self::load_for_plan(path, overrides)?;
        config.check_runnable().map_err(|e| RunConfigError::invalid(path, e))?;
        Ok(config)
    }

    /// Reads, resolves paths and validates the values, without looking for the checkpoint, the
    /// data or the adapters: a plan needs only the model's config.json, so that a run can be
    /// planned before its weights and data are downloaded.
    pub fn load_for_plan(path: &Path, overrides: &[Override]) -> Result<Self, RunConfigError> {
        let mut config = Self::read(path, overrides)?;
        config.refuse_empty_paths().map_err(|e| RunConfigError::invalid(path, e))?;
        // Absolute, so that what names a path later (saves, peft's adapter_config.json, run.toml)
        // names it from anywhere.
        let base = std::path::absolute(path).ok().and_then(|p| p.parent().map(Path::to_owned)).unwrap_or_default();
        config.resolve_paths(&base);
        config.validate().map_err(|e| RunConfigError::invalid(path, e))?;
        Ok(config)
    }

    /// The file as it is, or merged over its bases with the overrides on top; a value of the
    /// wrong type is named by its key (and by its --set).
    fn read(path: &Path, overrides: &[Override]) -> Result<Self, RunConfigError> {
        let parse_error = |message: String| RunConfigError::Parse { path: path.to_owned(), message };
        let layered = layers::with_bases(path)?;
        if layered.is_none() && overrides.is_empty() {
            let text = std::fs::read_to_string(path).map_err(|source| RunConfigError::Io { path: path.to_owned(), source })?;
            return toml::from_str(&text).map_err(|e| parse_error(e.to_string()));
        }
        let file = match layered {
            Some(table) => table,
            None => toml::from_str(&std::fs::read_to_string(path).unwrap_or_default()).map_err(|e| parse_error(e.to_string()))?,
        };
        let deserialize = |table: toml::Table| toml::Value::Table(table).try_into::<Self>();
        match deserialize(layers::apply_overrides(file.clone(), overrides, path)?) {
            Ok(config) => Ok(config),
            Err(e) => {
                // The first override that breaks a config that read before it.
                let culprit = (0..overrides.len()).find(|&i| {
                    let before = layers::apply_overrides(file.clone(), &overrides[..i], path).ok().map(deserialize);
                    let with = layers::apply_overrides(file.clone(), &overrides[..=i], path).ok().map(deserialize);
                    before.is_some_and(|r| r.is_ok()) && with.is_none_or(|r| r.is_err())
                });
                Err(parse_error(match culprit {
                    Some(i) => format!("--set {}: `{}` = {}: {}", overrides[i].text, overrides[i].key, overrides[i].value, e.message()),
                    None => e.to_string(),
                }))
            }
        }
    }

    /// An empty path would resolve to the config file's own directory (`output.dir = ""` would
    /// write the run there): every path key must name something.
    fn refuse_empty_paths(&self) -> Check {
        let eval_path = self.eval.as_ref().and_then(|e| e.path.as_ref());
        let keys = [
            ("model.path", self.model.path.as_ref()),
            ("model.config", self.model.config.as_ref()),
            ("data.path", Some(&self.data.path)),
            ("data.tokenizer", self.data.tokenizer.as_ref()),
            ("data.chat_template", self.data.chat_template.as_ref()),
            ("output.dir", Some(&self.output.dir)),
            ("lora.init", self.lora.init.as_ref()),
            ("eval.path", eval_path),
        ];
        match keys.into_iter().find(|(_, value)| value.is_some_and(|p| p.as_os_str().is_empty())) {
            Some((key, _)) => invalid(key, "= \"\": expected a path"),
            None => Ok(()),
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| *p = relative::from_dir(base, p);
        self.model.path.as_mut().map(resolve);
        self.model.config.as_mut().map(resolve);
        resolve(&mut self.data.path);
        self.data.tokenizer.as_mut().map(resolve);
        self.data.chat_template.as_mut().map(resolve);
        resolve(&mut self.output.dir);
        self.lora.init.as_mut().map(resolve);
        if let Some(path) = self.eval.as_mut().and_then(|e| e.path.as_mut()) {
            resolve(path);
        }
        if self.data.tokenizer.is_none() {
            self.data.tokenizer = self.model.path.as_ref().map(|dir| dir.join("tokenizer.json")).filter(|t| t.is_file());
        }
    }

    /// The model's config.json.
    pub fn model_config_path(&self) -> PathBuf {
        match (&self.model.path, &self.model.config) {
            (Some(dir), _) => dir.join("config.json"),
            (None, Some(config)) => config.clone(),
            (None, None) => unreachable!("validated: model.path or model.config"),
        }
    }

    /// What the dataset is made from, with the vocabulary and special tokens of `model`.
    pub fn data_spec(&self, model: &MistralConfig) -> DataSpec {
        let d = &self.data;
        DataSpec {
            source: d.path.clone(),
            format: d.format,
            fields: d.fields.clone(),
            tokenizer: d.tokenizer.clone(),
            chat_template: d.chat_template.clone(),
            seq_len: d.seq_len,
            packing: d.packing,
            on_bad_example: d.on_bad_example,
            vocab_size: model.vocab_size,
            bos_token_id: model.bos_token_id,
            eos_token_id: model.eos_token_id,
        }
    }

    /// Where the tokenized dataset is cached: `<output.dir>/data/`.
    pub fn data_cache_dir(&self) -> PathBuf {
        self.output.dir.join("data")
    }

    /// The eval file's dataset (`eval.path`), tokenized as `[data]` says, and where it is cached:
    /// `<output.dir>/eval-data/`.
    pub fn eval_file_spec(&self, model: &MistralConfig) -> Option<(DataSpec, PathBuf)> {
        let path = self.eval.as_ref()?.path.clone()?;
        Some((DataSpec { source: path, ..self.data_spec(model) }, self.output.dir.join("eval-data")))
    }

    /// Each section's own checks, in the order of the file, and the checks across sections.
    fn validate(&self) -> Check {
        self.model.validate()?;
        self.data.validate()?;
        self.train.validate()?;
        if self.train.mode == TrainMode::Qlora && self.model.path.is_none() {
            return invalid("train.mode", "= \"qlora\" quantizes a checkpoint's base: it needs model.path");
        }
        if self.train.mode.trains_adapters() {
            self.lora.validate()?;
        } else if self.output.export == ExportFormat::Peft {
            return invalid("output.export", "= \"peft\" writes LoRA adapters: it needs train.mode = \"lora\" or \"qlora\"");
        }
        self.eval.as_ref().map_or(Ok(()), EvalSection::validate)?;
        if self.runtime.device == Device::Wgpu && self.model.dtype == Some(Dtype::Bf16) {
            return invalid("model.dtype", runtime::WGPU_HAS_NO_BF16);
        }
        self.runtime.validate()
    }

    /// What a run needs beyond valid values: the files it reads.
    fn check_runnable(&self) -> Check {
        self.model.check_runnable()?;
        self.data.check_runnable(self.model.path.as_deref())?;
        if self.train.mode.trains_adapters() {
            self.lora.check_runnable()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use shard_data::{Format, OnBadExample};

    use super::*;

    fn load(text: &str) -> Result<RunConfig, RunConfigError> {
        // A directory per call: tests run in parallel, and two configs may have the same length.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("run-config-{}-{call}", std::process::id()));
        std::fs::create_dir_all(dir.join("ckpt")).unwrap();
        std::fs::write(dir.join("data.jsonl"), "{}").unwrap();
        let path = dir.join("run.toml");
        std::fs::write(&path, text).unwrap();
        let result = RunConfig::load(&path, &[]);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    const MINIMAL: &str = "[model]\npath = \"ckpt\"\n[data]\npath = \"data.jsonl\"\n";

    #[test]
    fn defaults_and_relative_paths() {
        let cfg = load(MINIMAL).unwrap();
        assert!(cfg.model.path.unwrap().ends_with("ckpt"));
        assert!(cfg.data.path.is_absolute() || cfg.data.path.starts_with(std::env::temp_dir()));
        assert_eq!(cfg.train.total_steps(1000, 4), 100);
        assert_eq!(cfg.data.seq_len, 1024);
        assert_eq!(cfg.output.export, ExportFormat::Hf);
    }

    /// `runtime.tf32`: off by default, a boolean, recorded in run.toml (the config serialized).
    #[test]
    fn runtime_tf32_is_off_by_default_and_recorded() {
        assert!(!load(MINIMAL).unwrap().runtime.tf32);
        let cfg = load(&format!("{MINIMAL}[runtime]\ntf32 = true\n")).unwrap();
        assert!(cfg.runtime.tf32);
        let record = toml::to_string(&cfg).unwrap();
        assert!(record.contains("[runtime]") && record.contains("tf32 = true"), "{record}");
    }

    #[test]
    fn data_keys() {
        let cfg = load(&format!("{MINIMAL}format = \"chat\"\npacking = true\non_bad_example = \"skip\"\ntokenizer = \"tok.json\"\n"));
        let err = cfg.unwrap_err().to_string();
        assert!(err.contains("`data.tokenizer` = ") && err.contains("tok.json: no such file"), "{err}");

        let dir = std::env::temp_dir().join(format!("run-config-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ckpt")).unwrap();
        std::fs::write(dir.join("data.jsonl"), "{}").unwrap();
        std::fs::write(dir.join("ckpt/tokenizer.json"), "{}").unwrap();
        let path = dir.join("run.toml");
        std::fs::write(&path, format!("{MINIMAL}format = \"prompt_completion\"\npacking = true\non_bad_example = \"skip\"\n")).unwrap();
        let cfg = RunConfig::load(&path, &[]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cfg.data.tokenizer, Some(dir.join("ckpt/tokenizer.json")), "the checkpoint's own by default");
        assert_eq!((cfg.data.format, cfg.data.packing, cfg.data.on_bad_example), (Format::PromptCompletion, true, OnBadExample::Skip));
        assert_eq!(cfg.data_cache_dir(), dir.join("runs/default/data"));
    }

    #[test]
    fn epochs_round_up_to_whole_steps() {
        let epochs = |e: f64| TrainSection { epochs: Some(e), ..Default::default() };
        assert_eq!(epochs(2.0).total_steps(10, 4), 5);
        assert_eq!(epochs(0.5).total_steps(10, 4), 2);
        assert_eq!(epochs(0.01).total_steps(10, 4), 1);
        assert_eq!(TrainSection { steps: Some(7), ..Default::default() }.total_steps(10, 4), 7);
    }

    #[test]
    fn a_relative_config_path_gives_absolute_paths() {
        let dir = std::env::temp_dir().join(format!("run-config-relative-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ckpt")).unwrap();
        std::fs::write(dir.join("data.jsonl"), "{}").unwrap();
        std::fs::write(dir.join("run.toml"), MINIMAL).unwrap();
        let relative = pathdiff(&dir.join("run.toml"));
        let cfg = RunConfig::load(&relative, &[]).unwrap();
        let model = cfg.model.path.unwrap();
        assert!(model.is_absolute() && cfg.output.dir.is_absolute(), "{} {}", model.display(), cfg.output.dir.display());
        assert_eq!(model.canonicalize().unwrap(), dir.join("ckpt").canonicalize().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `--set` overrides are typed and checked like the file, each error naming its key and
    /// override; a config over a base in another directory takes each file's paths from its own
    /// directory, and an override's as if written in the config file.
    #[test]
    fn overrides_and_a_base_are_read_like_the_file() {
        let dir = std::env::temp_dir().join(format!("run-config-layers-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("common/ckpt")).unwrap();
        std::fs::write(dir.join("common/data.jsonl"), "{}").unwrap();
        std::fs::write(dir.join("eval.jsonl"), "{}").unwrap();
        std::fs::write(dir.join("common/base.toml"), format!("{MINIMAL}seq_len = 64\n[train]\nlr = 1e-3\n")).unwrap();
        let path = dir.join("run.toml");
        std::fs::write(&path, "base = \"common/base.toml\"\n[train]\nsteps = 3\n").unwrap();
        let set = |texts: &[&str]| texts.iter().map(|t| parse_override(t).unwrap()).collect::<Vec<_>>();

        let cfg = RunConfig::load(&path, &set(&["train.lr=1e-4", "data.seq_len=2048", "eval.path=eval.jsonl"])).unwrap();
        assert_eq!(cfg.model.path, Some(dir.join("common/ckpt")), "the base's paths from its own directory");
        assert_eq!(cfg.data.path, dir.join("common/data.jsonl"));
        assert_eq!((cfg.train.lr, cfg.data.seq_len, cfg.train.steps), (1e-4, 2048, Some(3)));
        assert_eq!(cfg.eval.unwrap().path, Some(dir.join("eval.jsonl")), "an override's path from the config's directory");

        for (overrides, expected) in [
            (vec!["train.steps=abc"], "--set train.steps=abc: `train.steps` = \"abc\": invalid type: string \"abc\", expected u64"),
            (vec!["train.lr=1e-4", "data.seq_len=true"], "--set data.seq_len=true: `data.seq_len` = true: invalid type: boolean"),
            (vec!["train.lrr=1"], "--set train.lrr=1: `train.lrr` = 1: unknown field `lrr`"),
            (vec!["train.lr.x=1"], "--set train.lr.x=1: `train.lr` is not a table"),
            (vec!["train.lr=-1"], "`train.lr`"),
        ] {
            let msg = RunConfig::load(&path, &set(&overrides)).unwrap_err().to_string();
            assert!(msg.contains(expected), "{overrides:?}: {msg}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `path` relative to the working directory, through `..` as far as needed.
    fn pathdiff(path: &Path) -> PathBuf {
        let cwd = std::env::current_dir().unwrap();
        let mut relative: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
        relative.push(path.strip_prefix("/").unwrap());
        relative
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (format!("{MINIMAL}[train]\nstepz = 3\n"), "unknown field `stepz`"),
            (format!("{MINIMAL}[train]\nsteps = \"3\"\n"), "invalid type"),
            (format!("{MINIMAL}[train]\nsteps = 0\n"), "`train.steps`"),
            (format!("{MINIMAL}[train]\nbetas = [0.9, 1.0]\n"), "`train.betas`"),
            ("[model]\npath = \"nope\"\n[data]\npath = \"data.jsonl\"\n".into(), "`model.path`"),
            ("[model]\ninit = \"random\"\n[data]\npath = \"data.jsonl\"\n".into(), "`model.config`"),
            (format!("{MINIMAL}[model2]\n"), "unknown field `model2`"),
            (format!("{MINIMAL}[train]\nmode = \"lora\"\n[lora]\nr = 0\n"), "`lora.r`"),
            (format!("{MINIMAL}[train]\nmode = \"lora\"\n[lora]\ntargets = [\"qkv\"]\n"), "`lora.targets` has \"qkv\""),
            (format!("{MINIMAL}[output]\nexport = \"peft\"\n"), "`output.export`"),
            (format!("{MINIMAL}format = \"text\"\n"), "`data.tokenizer` is needed for format = \"text\""),
            (
                format!("{MINIMAL}format = \"csv\"\n"),
                "unknown variant `csv`, expected one of `tokenized`, `text`, `prompt_completion`, `chat`",
            ),
            (format!("{MINIMAL}[runtime]\noffload = \"gpu\"\n"), "unknown variant `gpu`, expected `none` or `optimizer`"),
            (format!("{MINIMAL}[runtime]\nattention = \"flash\"\n"), "unknown variant `flash`, expected `fused` or `eager`"),
            (format!("{MINIMAL}[train]\noptimizer = \"adam8bit\"\n"), "unknown variant `adam8bit`, expected `adamw` or `adamw8bit`"),
            (format!("{MINIMAL}on_bad_example = \"ignore\"\n"), "unknown variant `ignore`, expected `error` or `skip`"),
            (format!("{MINIMAL}packing = \"yes\"\n"), "invalid type: string \"yes\", expected a boolean"),
            (format!("{MINIMAL}[runtime]\ntf32 = \"yes\"\n"), "tf32 = \"yes\""),
            (format!("{MINIMAL}[runtime]\ntf32 = 1\n"), "invalid type: integer `1`, expected a boolean"),
            (format!("{MINIMAL}[runtime]\ndevice = \"cuda\"\ngpu = \"v100\"\n"), "`runtime.gpu` = \"v100\" is not a known GPU"),
            (
                format!("{MINIMAL}[runtime]\ndevice = \"cuda\"\ngpu_memory = \"80 gigs\"\n"),
                "`runtime.gpu_memory` \"80 gigs\" is not a size",
            ),
            (format!("{MINIMAL}[runtime]\ngpu = \"a100-80gb\"\n"), "`runtime.gpu` applies to runtime.device = \"cuda\""),
            (format!("{MINIMAL}[runtime]\ncollectives = \"nccl\"\n"), "`runtime.collectives` = \"nccl\" needs runtime.device = \"cuda\""),
            (format!("{MINIMAL}[runtime]\ndevice = \"wgpu\"\ncollectives = \"nccl\"\n"), "`runtime.collectives` = \"nccl\" needs"),
            (format!("{MINIMAL}[runtime]\ncollectives = \"gloo\"\n"), "unknown variant `gloo`, expected `nccl` or `mpi`"),
            (
                MINIMAL.replace("[data]", "dtype = \"bf16\"\n[data]") + "[runtime]\ndevice = \"wgpu\"\n",
                "`model.dtype` = \"bf16\" is not available on runtime.device = \"wgpu\"",
            ),
            (
                format!("{MINIMAL}[runtime]\ndevice = \"wgpu\"\nreduce_dtype = \"bf16\"\n"),
                "`runtime.reduce_dtype` = \"bf16\" is not available",
            ),
            (format!("{MINIMAL}[runtime]\ndevice = \"tpu\"\n"), "unknown variant `tpu`, expected one of `cpu`, `cuda`, `wgpu`"),
            (format!("{MINIMAL}[train]\nsteps = 3\nepochs = 1\n"), "`train.epochs` and train.steps both set"),
            (format!("{MINIMAL}[train]\nepochs = 0\n"), "`train.epochs` must be a number > 0"),
            (format!("{MINIMAL}[eval]\nevery = 2\n"), "`eval` needs either `path`"),
            (format!("{MINIMAL}[eval]\nfraction = 1.5\n"), "`eval.fraction` must lie in (0, 1)"),
            (format!("{MINIMAL}[eval]\npath = \"nope.jsonl\"\n"), "`eval.path` = "),
            (format!("{MINIMAL}[eval]\nfraction = 0.1\nevry = 2\n"), "unknown field `evry`"),
            (format!("{MINIMAL}[train]\nlr = 1e39\n"), "`train.lr` must be a number >= 0 and finite as f32"),
            (format!("{MINIMAL}[train]\nweight_decay = 1e39\n"), "`train.weight_decay` must be >= 0 and finite as f32"),
            (format!("{MINIMAL}[train]\neps = 1e-50\n"), "`train.eps` must be > 0 and finite as f32"),
            (format!("{MINIMAL}[train]\nbetas = [0.9, 0.999999999]\n"), "`train.betas` must both lie in [0, 1), also as f32"),
            (format!("{MINIMAL}[train]\nmode = \"lora\"\n[lora]\nalpha = 1e40\n"), "`lora.alpha` must be a number > 0 with alpha / r"),
            ("[model]\npath = \"ckpt\"\n[data]\npath = \"ckpt\"\n".into(), "ckpt: a directory, expected a file"),
            (format!("{MINIMAL}[output]\ndir = \"\"\n"), "`output.dir` = \"\": expected a path"),
            ("[model]\npath = \"\"\n[data]\npath = \"data.jsonl\"\n".into(), "`model.path` = \"\": expected a path"),
            ("[model]\npath = \"ckpt\"\n[data]\npath = \"\"\n".into(), "`data.path` = \"\": expected a path"),
            (format!("{MINIMAL}tokenizer = \"\"\n"), "`data.tokenizer` = \"\": expected a path"),
            (format!("{MINIMAL}[train]\nmode = \"lora\"\n[lora]\ninit = \"\"\n"), "`lora.init` = \"\": expected a path"),
            (format!("{MINIMAL}[eval]\npath = \"\"\n"), "`eval.path` = \"\": expected a path"),
        ];
        for (text, expected) in cases {
            let msg = load(&text).unwrap_err().to_string();
            assert!(msg.contains(expected), "{msg:?} should contain {expected:?}");
            assert!(msg.contains("run.toml"), "{msg:?} should name the file");
        }
    }
}
