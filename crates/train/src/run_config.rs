//! The run config (TOML): what to train, on what, how, and where to write.
//!
//! Unknown keys are refused (`deny_unknown_fields`), values are validated once at start-up, and
//! every error names the file and the key. Relative paths are taken relative to the config
//! file's own directory, so that a config works from any working directory, and made absolute.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shard_data::{DataSpec, Format, OnBadExample};
use shard_model::MistralConfig;
use shard_model::PROJECTIONS;

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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A Hugging Face checkpoint directory (config.json + safetensors).
    pub path: Option<PathBuf>,
    /// `"random"`: no checkpoint, HF's initialisation from `config`.
    pub init: Option<ModelInit>,
    /// A config.json, for `init = "random"`.
    pub config: Option<PathBuf>,
    /// What the model computes in; by default f32 on the CPU, bf16 on GPUs (see `compute_dtype`).
    pub dtype: Option<ComputeDtype>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelInit {
    Random,
}

/// A float dtype of the run config: `model.dtype`, `runtime.reduce_dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    #[default]
    F32,
    Bf16,
}

impl ComputeDtype {
    /// The engine's name for it.
    pub fn float(self) -> shard_zero::Float {
        match self {
            Self::F32 => shard_zero::Float::F32,
            Self::Bf16 => shard_zero::Float::Bf16,
        }
    }

    /// The planner's name for it.
    pub fn precision(self) -> shard_plan::Precision {
        match self {
            Self::F32 => shard_plan::Precision::F32,
            Self::Bf16 => shard_plan::Precision::Bf16,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// The JSONL file.
    pub path: PathBuf,
    #[serde(default)]
    pub format: Format,
    /// A tokenizer.json; by default the checkpoint's own (`<model.path>/tokenizer.json`).
    pub tokenizer: Option<PathBuf>,
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Pack whole examples, each closed by EOS and attending only to itself, into rows of at most
    /// `seq_len` tokens (docs/packing.md).
    #[serde(default)]
    pub packing: bool,
    #[serde(default)]
    pub on_bad_example: OnBadExample,
    #[serde(default = "default_true")]
    pub shuffle: bool,
    #[serde(default)]
    pub seed: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub mode: TrainMode,
    /// Optimizer steps; or `epochs`, not both (neither: [`DEFAULT_STEPS`]).
    pub steps: Option<u64>,
    /// Passes over the training examples, rounded up to whole steps.
    pub epochs: Option<f64>,
    pub micro_batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    pub warmup_steps: u64,
    pub weight_decay: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    /// 0 turns clipping off.
    pub max_grad_norm: f64,
    pub seed: u64,
    /// What a step with a non-finite loss or gradient norm does (never an update).
    pub on_nonfinite: OnNonFinite,
    /// With `on_nonfinite = "skip"`: this many skipped steps in a row end the run.
    pub max_nonfinite_skips: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnNonFinite {
    /// The run ends with an error naming the step; nothing of that step is saved.
    Error,
    /// The step is dropped (no update) and counted.
    Skip,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            mode: TrainMode::Full,
            steps: None,
            epochs: None,
            micro_batch_size: 1,
            grad_accum: 1,
            lr: 2e-5,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            max_grad_norm: 1.0,
            seed: 0,
            on_nonfinite: OnNonFinite::Error,
            max_nonfinite_skips: 5,
        }
    }
}

/// The run's length when it names neither `train.steps` nor `train.epochs`.
pub const DEFAULT_STEPS: u64 = 100;

impl TrainSection {
    /// The optimizer steps of the run, for `examples` training examples taken `examples_per_step`
    /// at a time: `steps`, or as many steps as `epochs` passes take, the last one rounded up.
    pub fn total_steps(&self, examples: usize, examples_per_step: u64) -> u64 {
        match (self.steps, self.epochs) {
            (Some(steps), _) => steps,
            (None, Some(epochs)) => ((epochs * examples as f64) / examples_per_step as f64).ceil().max(1.0) as u64,
            (None, None) => DEFAULT_STEPS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainMode {
    Full,
    Lora,
    /// LoRA on a base whose decoder linears are NF4 (quantized at load as bitsandbytes does, or
    /// read pre-quantized) and dequantized as bitsandbytes does.
    Qlora,
}

impl TrainMode {
    /// Whether the run trains LoRA adapters (on a frozen base).
    pub fn trains_adapters(self) -> bool {
        matches!(self, Self::Lora | Self::Qlora)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    Linear,
    Cosine,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraSection {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<String>,
    /// A peft `adapter_model.safetensors` to start from, instead of peft's default init.
    pub init: Option<PathBuf>,
}

impl LoraSection {
    /// The adapters these settings describe.
    pub fn config(&self) -> shard_model::LoraConfig {
        shard_model::LoraConfig { r: self.r, alpha: self.alpha, dropout: self.dropout, targets: self.targets.clone() }
    }
}

impl Default for LoraSection {
    fn default() -> Self {
        Self { r: 16, alpha: 32.0, dropout: 0.0, targets: ["q_proj", "k_proj", "v_proj", "o_proj"].map(String::from).to_vec(), init: None }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputSection {
    pub dir: PathBuf,
    pub export: ExportFormat,
    /// Save every N steps (0: only at the end and when asked to stop).
    pub save_every: u64,
    /// Complete saves kept (0: all).
    pub keep_last: usize,
    /// Save after the last step. Off for benchmarks and throughput checks that keep nothing (a
    /// save of a large model's optimizer states takes minutes); `save_every` and a stop on
    /// request still save.
    pub save_at_end: bool,
    /// Write TensorBoard event files under `<dir>/tb/`.
    pub tensorboard: bool,
}

impl Default for OutputSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("runs/default"),
            export: ExportFormat::Hf,
            save_every: 0,
            keep_last: 2,
            save_at_end: true,
            tensorboard: false,
        }
    }
}

/// Held-out examples, evaluated every `every` steps and at the end: `path`, a file in the
/// format of `[data]` (tokenized as it is), or `fraction`, a slice of the training data that is
/// never trained on.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    pub path: Option<PathBuf>,
    pub fraction: Option<f64>,
    /// Steps between evaluations (0: only at the end).
    #[serde(default)]
    pub every: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    None,
    Hf,
    Peft,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    pub device: Device,
    /// Seconds a collective call may wait for the other ranks once training runs, before the
    /// watchdog ends the job (see docs/saves-and-faults.md).
    pub timeout_s: u64,
    /// The same during start-up (config, plan, data cache, weights), when one rank may tokenize
    /// the dataset while the others wait.
    pub startup_timeout_s: u64,
    /// A GPU preset of the planner (`a100-80gb`, ...): its memory is the limit the plan checks
    /// before training, its peak FLOP/s and links time the plan.
    pub gpu: Option<String>,
    /// The memory each GPU may use (`80GB`, `80GiB`); overrides the preset's.
    pub gpu_memory: Option<String>,
    /// What gradients are reduce-scattered in: f32 (FSDP2's `reduce_dtype=float32`, exact sums)
    /// or bf16 (half the traffic, each rank's contribution rounded to bf16 first).
    pub reduce_dtype: ComputeDtype,
    /// How shards move between ranks: `"nccl"` (cuda's default) or `"mpi"` (through host
    /// buffers; the only choice on the CPU and on wgpu, and a fallback on cuda).
    pub collectives: Option<Collectives>,
    /// Ranks that shard one copy of the model together (hybrid sharding): a number of
    /// consecutive ranks, or `"node"`; default every rank (ZeRO-3). Checked against the world at
    /// start-up.
    pub shard_size: Option<ShardSize>,
}

/// `runtime.shard_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged, expecting = "a number of ranks or \"node\"")]
pub enum ShardSize {
    Ranks(usize),
    Node(NodeKeyword),
}

/// The word `"node"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKeyword {
    Node,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            timeout_s: 1800,
            startup_timeout_s: 7200,
            gpu: None,
            gpu_memory: None,
            reduce_dtype: ComputeDtype::default(),
            collectives: None,
            shard_size: None,
        }
    }
}

impl RuntimeSection {
    /// `gpu_memory` in bytes (validated at load).
    pub fn gpu_memory_bytes(&self) -> Option<u64> {
        self.gpu_memory.as_deref().and_then(|s| shard_plan::parse_size(s).ok())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
    /// burn-wgpu (Vulkan, Metal): AMD, Intel and Apple GPUs, and Mesa's lavapipe on the CPU.
    Wgpu,
}

impl Device {
    /// Its name in the run config.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Wgpu => "wgpu",
        }
    }
}

/// `runtime.collectives`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Collectives {
    Nccl,
    Mpi,
}

fn default_seq_len() -> usize {
    1024
}

fn default_true() -> bool {
    true
}

/// Why `path`, which should be a file, is not: a directory, or nothing.
fn not_a_file(path: &Path) -> String {
    let why = if path.is_dir() { "a directory, expected a file" } else { "no such file" };
    format!("= {}: {why}", path.display())
}

/// Whether `value`, used as an f32, is finite there (1e39 is finite as f64, infinite as f32).
fn f32_is_finite(value: f64) -> bool {
    (value as f32).is_finite()
}

/// A config that cannot be used; the message names the file and key.
#[derive(Debug, thiserror::Error)]
pub enum RunConfigError {
    #[error("cannot read run config {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}` {why}")]
    Invalid { path: PathBuf, key: &'static str, why: String },
}

impl RunConfig {
    /// `model.dtype`, or its default: bf16 on cuda, f32 on the CPU and on wgpu (which has no bf16).
    pub fn compute_dtype(&self) -> ComputeDtype {
        self.model.dtype.unwrap_or(match self.runtime.device {
            Device::Cpu | Device::Wgpu => ComputeDtype::F32,
            Device::Cuda => ComputeDtype::Bf16,
        })
    }

    /// `runtime.collectives`, or its default: NCCL on cuda, MPI elsewhere.
    pub fn collectives(&self) -> Collectives {
        self.runtime.collectives.unwrap_or(match self.runtime.device {
            Device::Cuda => Collectives::Nccl,
            Device::Cpu | Device::Wgpu => Collectives::Mpi,
        })
    }

    /// Reads, resolves paths against the file's directory, validates the values, and checks
    /// that the run can start: its input files exist.
    pub fn load(path: &Path) -> Result<Self, RunConfigError> {
        let config = Self::load_for_plan(path)?;
        config.check_runnable(path)?;
        Ok(config)
    }

    /// Reads, resolves paths and validates the values, without looking for the checkpoint, the
    /// data or the adapters: a plan needs only the model's config.json, so that a run can be
    /// planned before its weights and data are downloaded.
    pub fn load_for_plan(path: &Path) -> Result<Self, RunConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| RunConfigError::Io { path: path.to_owned(), source })?;
        let mut config: RunConfig =
            toml::from_str(&text).map_err(|e| RunConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.refuse_empty_paths(path)?;
        // Absolute, so that what names a path later (saves, peft's adapter_config.json, run.toml)
        // names it from anywhere.
        let base = std::path::absolute(path).ok().and_then(|p| p.parent().map(Path::to_owned)).unwrap_or_default();
        config.resolve_paths(&base);
        config.validate(path)?;
        Ok(config)
    }

    /// An empty path would resolve to the config file's own directory (`output.dir = ""` would
    /// write the run there): every path key must name something.
    fn refuse_empty_paths(&self, path: &Path) -> Result<(), RunConfigError> {
        let eval_path = self.eval.as_ref().and_then(|e| e.path.as_ref());
        let keys = [
            ("model.path", self.model.path.as_ref()),
            ("model.config", self.model.config.as_ref()),
            ("data.path", Some(&self.data.path)),
            ("data.tokenizer", self.data.tokenizer.as_ref()),
            ("output.dir", Some(&self.output.dir)),
            ("lora.init", self.lora.init.as_ref()),
            ("eval.path", eval_path),
        ];
        match keys.into_iter().find(|(_, value)| value.is_some_and(|p| p.as_os_str().is_empty())) {
            Some((key, _)) => Err(RunConfigError::Invalid { path: path.to_owned(), key, why: "= \"\": expected a path".into() }),
            None => Ok(()),
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.model.path.as_mut().map(resolve);
        self.model.config.as_mut().map(resolve);
        resolve(&mut self.data.path);
        self.data.tokenizer.as_mut().map(resolve);
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
            tokenizer: d.tokenizer.clone(),
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

    fn validate(&self, path: &Path) -> Result<(), RunConfigError> {
        let invalid = |key: &'static str, why: String| Err(RunConfigError::Invalid { path: path.to_owned(), key, why });
        let m = &self.model;
        match (&m.path, m.init, &m.config) {
            (Some(_), None, None) | (None, Some(ModelInit::Random), Some(_)) => {}
            (None, Some(ModelInit::Random), None) => {
                return invalid("model.config", "is needed with init = \"random\" (a config.json)".into());
            }
            _ => return invalid("model", "needs either `path` (a checkpoint directory) or `init = \"random\"` with `config`".into()),
        }
        if self.data.seq_len < 2 {
            return invalid("data.seq_len", "must be at least 2 (a token and the one it predicts)".into());
        }
        let t = &self.train;
        match (t.steps, t.epochs) {
            (Some(_), Some(_)) => return invalid("train.epochs", "and train.steps both set the run's length: give one of them".into()),
            (Some(0), None) => return invalid("train.steps", "must be at least 1".into()),
            (None, Some(epochs)) if !(epochs.is_finite() && epochs > 0.0) => {
                return invalid("train.epochs", format!("must be a number > 0, found {epochs}"));
            }
            _ => {}
        }
        if t.micro_batch_size == 0 {
            return invalid("train.micro_batch_size", "must be at least 1".into());
        }
        if t.grad_accum == 0 {
            return invalid("train.grad_accum", "must be at least 1".into());
        }
        // The optimizer's kernels take these as f32 (shard_zero::optimizer): each is checked as
        // that f32, where a value finite in f64 (lr = 1e39) would overflow.
        if !(f32_is_finite(t.lr) && t.lr >= 0.0) {
            return invalid("train.lr", format!("must be a number >= 0 and finite as f32 (at most {:e}), found {:e}", f32::MAX, t.lr));
        }
        if t.betas.iter().any(|&b| !(0.0..1.0).contains(&b) || b as f32 >= 1.0) {
            return invalid("train.betas", format!("must both lie in [0, 1), also as f32 (0.99999999 rounds to 1), found {:?}", t.betas));
        }
        if !(t.eps > 0.0 && t.eps as f32 > 0.0 && f32_is_finite(t.eps)) {
            return invalid("train.eps", format!("must be > 0 and finite as f32 (at least {:e}), found {:e}", f32::from_bits(1), t.eps));
        }
        if !(t.weight_decay >= 0.0 && f32_is_finite(t.weight_decay) && f32_is_finite(t.lr * t.weight_decay)) {
            return invalid(
                "train.weight_decay",
                format!("must be >= 0 and finite as f32, also times train.lr ({:e}), found {:e}", t.lr, t.weight_decay),
            );
        }
        // Clipping multiplies by max_grad_norm / norm in f32: a positive value that is 0 as f32
        // would zero every update.
        if t.max_grad_norm.is_nan() || t.max_grad_norm < 0.0 || (t.max_grad_norm > 0.0 && t.max_grad_norm as f32 == 0.0) {
            return invalid(
                "train.max_grad_norm",
                format!("must be >= 0 (0 turns clipping off) and, when > 0, also > 0 as f32, found {}", t.max_grad_norm),
            );
        }
        if t.on_nonfinite == OnNonFinite::Skip && t.max_nonfinite_skips == 0 {
            return invalid("train.max_nonfinite_skips", "must be at least 1 with on_nonfinite = \"skip\"".into());
        }
        if let Some(steps) = t.steps.filter(|&steps| t.warmup_steps > steps) {
            return invalid("train.warmup_steps", format!("({}) is more than train.steps ({steps})", t.warmup_steps));
        }
        if t.mode == TrainMode::Qlora && self.model.path.is_none() {
            return invalid("train.mode", "= \"qlora\" quantizes a checkpoint's base: it needs model.path".into());
        }
        if t.mode.trains_adapters() {
            self.validate_lora(path)?;
        } else if self.output.export == ExportFormat::Peft {
            return invalid("output.export", "= \"peft\" writes LoRA adapters: it needs train.mode = \"lora\" or \"qlora\"".into());
        }
        self.validate_eval(path)?;
        self.validate_runtime(path)
    }

    fn validate_eval(&self, path: &Path) -> Result<(), RunConfigError> {
        let invalid = |key: &'static str, why: String| Err(RunConfigError::Invalid { path: path.to_owned(), key, why });
        match self.eval.as_ref().map(|e| (&e.path, e.fraction)) {
            None => Ok(()),
            Some((Some(_), Some(_)) | (None, None)) => {
                invalid("eval", "needs either `path` (a held-out file) or `fraction` (of the training data), not both".into())
            }
            Some((Some(file), None)) if !file.is_file() => invalid("eval.path", not_a_file(file)),
            Some((None, Some(fraction))) if !(fraction > 0.0 && fraction < 1.0) => {
                invalid("eval.fraction", format!("must lie in (0, 1), found {fraction}"))
            }
            Some(_) => Ok(()),
        }
    }

    /// What a run needs beyond valid values: the files it reads.
    fn check_runnable(&self, path: &Path) -> Result<(), RunConfigError> {
        let invalid = |key: &'static str, why: String| Err(RunConfigError::Invalid { path: path.to_owned(), key, why });
        match (&self.model.path, &self.model.config) {
            (Some(dir), _) if !dir.is_dir() => {
                let why = if dir.exists() { "a file, expected a checkpoint directory" } else { "no such directory" };
                return invalid("model.path", format!("= {}: {why}", dir.display()));
            }
            (None, Some(config)) if !config.is_file() => return invalid("model.config", not_a_file(config)),
            _ => {}
        }
        if !self.data.path.is_file() {
            return invalid("data.path", not_a_file(&self.data.path));
        }
        match &self.data.tokenizer {
            Some(tokenizer) if !tokenizer.is_file() => {
                return invalid("data.tokenizer", not_a_file(tokenizer));
            }
            None if self.data.format.needs_tokenizer() => {
                let why = match &self.model.path {
                    Some(dir) => format!("{} has no tokenizer.json", dir.display()),
                    None => "there is no model.path to take one from".into(),
                };
                return invalid("data.tokenizer", format!("is needed for format = \"{}\" ({why})", self.data.format));
            }
            _ => {}
        }
        if let Some(init) = self.lora.init.as_ref().filter(|_| self.train.mode.trains_adapters())
            && !init.is_file()
        {
            return invalid("lora.init", not_a_file(init));
        }
        Ok(())
    }

    fn validate_runtime(&self, path: &Path) -> Result<(), RunConfigError> {
        let invalid = |key: &'static str, why: String| Err(RunConfigError::Invalid { path: path.to_owned(), key, why });
        let r = &self.runtime;
        if r.device == Device::Cpu && (r.gpu.is_some() || r.gpu_memory.is_some()) {
            let key = if r.gpu.is_some() { "runtime.gpu" } else { "runtime.gpu_memory" };
            return invalid(
                key,
                "applies to runtime.device = \"cuda\" or \"wgpu\"; on the CPU the plan checks the host's available memory".into(),
            );
        }
        if r.collectives == Some(Collectives::Nccl) && r.device != Device::Cuda {
            return invalid(
                "runtime.collectives",
                format!("= \"nccl\" needs runtime.device = \"cuda\" (found \"{}\"): use \"mpi\"", r.device.name()),
            );
        }
        if r.device == Device::Wgpu {
            // burn-wgpu has no bf16: a cast to it fails on the device thread, not here.
            let bf16 = [("model.dtype", self.model.dtype), ("runtime.reduce_dtype", Some(r.reduce_dtype))];
            if let Some((key, _)) = bf16.into_iter().find(|(_, dtype)| *dtype == Some(ComputeDtype::Bf16)) {
                return invalid(
                    key,
                    "= \"bf16\" is not available on runtime.device = \"wgpu\" (burn-wgpu has no bf16): use \"f32\"".into(),
                );
            }
        }
        if let Some(gpu) = r.gpu.as_ref().filter(|g| shard_plan::Hardware::preset(g).is_none_or(|h| h.kind != shard_plan::Kind::Gpu)) {
            let known: Vec<_> = shard_plan::preset_names().into_iter().filter(|n| *n != "cpu").collect();
            return invalid("runtime.gpu", format!("= {gpu:?} is not a known GPU (expected one of {known:?})"));
        }
        if let Some(Err(e)) = r.gpu_memory.as_deref().map(shard_plan::parse_size) {
            return invalid("runtime.gpu_memory", e.to_string());
        }
        for (key, seconds) in [("runtime.timeout_s", r.timeout_s), ("runtime.startup_timeout_s", r.startup_timeout_s)] {
            if seconds == 0 {
                return invalid(key, "must be at least 1 (seconds)".into());
            }
        }
        if r.shard_size == Some(ShardSize::Ranks(0)) {
            return invalid("runtime.shard_size", "= 0: a shard group needs at least 1 rank (or \"node\": the ranks of a node)".into());
        }
        Ok(())
    }

    fn validate_lora(&self, path: &Path) -> Result<(), RunConfigError> {
        let invalid = |key: &'static str, why: String| Err(RunConfigError::Invalid { path: path.to_owned(), key, why });
        let l = &self.lora;
        if l.r == 0 {
            return invalid("lora.r", "must be at least 1".into());
        }
        // The adapters' scale alpha / r is applied as f32.
        let scale = l.alpha / l.r as f64;
        if !(l.alpha > 0.0 && f32_is_finite(scale) && scale as f32 > 0.0) {
            return invalid("lora.alpha", format!("must be a number > 0 with alpha / r finite and > 0 as f32, found {:e}", l.alpha));
        }
        if !(0.0..1.0).contains(&l.dropout) {
            return invalid("lora.dropout", format!("must lie in [0, 1), found {}", l.dropout));
        }
        if l.targets.is_empty() {
            return invalid("lora.targets", "is empty: name at least one projection".into());
        }
        for (i, target) in l.targets.iter().enumerate() {
            if !PROJECTIONS.contains(&target.as_str()) {
                return invalid(
                    "lora.targets",
                    format!("has {target:?}, which is not a projection of the model (expected some of {PROJECTIONS:?})"),
                );
            }
            if l.targets[..i].contains(target) {
                return invalid("lora.targets", format!("names {target:?} twice"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<RunConfig, RunConfigError> {
        let dir = std::env::temp_dir().join(format!("run-config-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(dir.join("ckpt")).unwrap();
        std::fs::write(dir.join("data.jsonl"), "{}").unwrap();
        let path = dir.join("run.toml");
        std::fs::write(&path, text).unwrap();
        let result = RunConfig::load(&path);
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
        let cfg = RunConfig::load(&path).unwrap();
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
        let cfg = RunConfig::load(&relative).unwrap();
        let model = cfg.model.path.unwrap();
        assert!(model.is_absolute() && cfg.output.dir.is_absolute(), "{} {}", model.display(), cfg.output.dir.display());
        assert_eq!(model.canonicalize().unwrap(), dir.join("ckpt").canonicalize().unwrap());
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
            (format!("{MINIMAL}on_bad_example = \"ignore\"\n"), "unknown variant `ignore`, expected `error` or `skip`"),
            (format!("{MINIMAL}packing = \"yes\"\n"), "invalid type: string \"yes\", expected a boolean"),
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
