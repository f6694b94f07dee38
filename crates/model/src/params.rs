//! Parameter names and shapes, in Hugging Face naming and state-dict order.
//!
//! The model is split into *blocks*: the token embedding, each decoder layer, and the final norm
//! with `lm_head`. A block is what the sharded engine gathers at once; here it is only the
//! natural structure of the architecture.

use crate::MistralConfig;

/// One parameter: its HF name and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl ParamSpec {
    fn new(name: String, shape: &[usize]) -> Self {
        Self { name, shape: shape.to_vec() }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A part of the model that runs as one piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Block {
    /// `model.embed_tokens`
    Embedding,
    /// `model.layers.{i}`
    Layer(usize),
    /// `model.norm` and `lm_head`
    Head,
}

/// The linear projections of a decoder layer that LoRA can target, as peft names them.
pub const PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

impl Block {
    /// Every block in forward order.
    pub fn all(cfg: &MistralConfig) -> Vec<Block> {
        let mut blocks = vec![Block::Embedding];
        blocks.extend((0..cfg.num_hidden_layers).map(Block::Layer));
        blocks.push(Block::Head);
        blocks
    }

    /// The HF name prefix of the block's parameters.
    pub fn prefix(&self) -> String {
        match self {
            Block::Embedding => "model.embed_tokens.".into(),
            Block::Layer(i) => format!("model.layers.{i}."),
            Block::Head => String::new(),
        }
    }

    /// The block's parameters in HF state-dict order.
    pub fn params(&self, cfg: &MistralConfig) -> Vec<ParamSpec> {
        let h = cfg.hidden_size;
        match self {
            Block::Embedding => vec![ParamSpec::new("model.embed_tokens.weight".into(), &[cfg.vocab_size, h])],
            Block::Layer(_) => {
                let p = self.prefix();
                let mut specs: Vec<ParamSpec> = PROJECTIONS
                    .iter()
                    .map(|proj| ParamSpec::new(format!("{p}{}.{proj}.weight", projection_module(proj)), &projection_shape(cfg, proj)))
                    .collect();
                specs.push(ParamSpec::new(format!("{p}input_layernorm.weight"), &[h]));
                specs.push(ParamSpec::new(format!("{p}post_attention_layernorm.weight"), &[h]));
                specs
            }
            Block::Head => {
                vec![ParamSpec::new("model.norm.weight".into(), &[h]), ParamSpec::new("lm_head.weight".into(), &[cfg.vocab_size, h])]
            }
        }
    }
}

/// Which projections carry adapters, and their shape and scale.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// peft's `target_modules`, among [`PROJECTIONS`].
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// peft's scaling: alpha / r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    pub fn targets(&self, proj: &str) -> bool {
        self.targets.iter().any(|t| t == proj)
    }

    /// The targeted projections in [`PROJECTIONS`] order (the order of the adapter layout).
    pub fn targeted(&self) -> impl Iterator<Item = &'static str> + '_ {
        PROJECTIONS.into_iter().filter(|p| self.targets(p))
    }
}

/// `self_attn` or `mlp`: the submodule of a decoder layer that holds a projection.
pub fn projection_module(proj: &str) -> &'static str {
    match proj {
        "gate_proj" | "up_proj" | "down_proj" => "mlp",
        _ => "self_attn",
    }
}

/// `[out_features, in_features]` of a projection, as `nn.Linear` stores it.
pub fn projection_shape(cfg: &MistralConfig, proj: &str) -> [usize; 2] {
    let h = cfg.hidden_size;
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let i = cfg.intermediate_size;
    match proj {
        "q_proj" => [q, h],
        "k_proj" | "v_proj" => [kv, h],
        "o_proj" => [h, q],
        "gate_proj" | "up_proj" => [i, h],
        "down_proj" => [h, i],
        other => panic!("not a projection: {other}"),
    }
}

/// The LoRA adapters of decoder layer `layer` in our naming (peft's without its
/// `base_model.model.` prefix): for each targeted projection in [`PROJECTIONS`] order, `lora_A`
/// [r, in] then `lora_B` [out, r].
pub fn lora_params(cfg: &MistralConfig, layer: usize, r: usize, targets: impl Iterator<Item = &'static str>) -> Vec<ParamSpec> {
    let mut specs = Vec::new();
    for proj in targets {
        let [out, input] = projection_shape(cfg, proj);
        let name = format!("model.layers.{layer}.{}.{proj}", projection_module(proj));
        specs.push(ParamSpec::new(format!("{name}.lora_A.weight"), &[r, input]));
        specs.push(ParamSpec::new(format!("{name}.lora_B.weight"), &[out, r]));
    }
    specs
}

/// Every parameter of the model, in HF state-dict order.
pub fn all_params(cfg: &MistralConfig) -> Vec<ParamSpec> {
    Block::all(cfg).iter().flat_map(|b| b.params(cfg)).collect()
}

/// The exact number of parameters.
pub fn param_count(cfg: &MistralConfig) -> u64 {
    all_params(cfg).iter().map(|p| p.numel() as u64).sum()
}
