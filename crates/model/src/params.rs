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

/// Whether transformers quantizes parameter `name` of a Mistral model: every decoder linear (the
/// embedding, the norms and `lm_head` stay as they are).
pub fn is_quantized_linear(name: &str) -> bool {
    name.starts_with("model.layers.")
        && PROJECTIONS.iter().any(|p| name.strip_suffix(".weight").is_some_and(|n| n.ends_with(&format!(".{p}"))))
}

/// How a block is split into the flat vectors the engine shards (its *parts*): what the engine
/// builds, its accounting counts and the planner sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockParts {
    /// The parameters held in the compute dtype: every one but a QLoRA layer's projections.
    pub base: Vec<ParamSpec>,
    /// Whether the base is trained: in full fine-tuning; frozen, in every block, when adapters are.
    pub base_trained: bool,
    /// A decoder layer's LoRA adapters, when adapters are trained.
    pub adapters: Option<Vec<ParamSpec>>,
    /// A QLoRA decoder layer's projections ([`is_quantized_linear`]), held as NF4; else empty.
    pub quantized: Vec<ParamSpec>,
}

impl Block {
    /// The block's parts when training `lora` adapters (or everything, without), with the
    /// decoder layers' projections in NF4 when `nf4_base` (QLoRA).
    pub fn parts(&self, cfg: &MistralConfig, lora: Option<&LoraConfig>, nf4_base: bool) -> BlockParts {
        let (quantized, base) = match self {
            Block::Layer(_) if nf4_base => self.params(cfg).into_iter().partition(|s| is_quantized_linear(&s.name)),
            _ => (Vec::new(), self.params(cfg)),
        };
        let adapters = match (lora, self) {
            (Some(lora), Block::Layer(i)) => Some(lora_params(cfg, *i, lora.r, lora.targeted())),
            _ => None,
        };
        BlockParts { base, base_trained: lora.is_none(), adapters, quantized }
    }
}

/// Every parameter of the model, in HF state-dict order.
pub fn all_params(cfg: &MistralConfig) -> Vec<ParamSpec> {
    Block::all(cfg).iter().flat_map(|b| b.params(cfg)).collect()
}

/// The exact number of parameters.
pub fn param_count(cfg: &MistralConfig) -> u64 {
    all_params(cfg).iter().map(|p| p.numel() as u64).sum()
}

/// The number of trained parameters: the LoRA adapters' (peft's `print_trainable_parameters`),
/// or every parameter without adapters.
pub fn trainable_param_count(cfg: &MistralConfig, lora: Option<&LoraConfig>) -> u64 {
    match lora {
        None => param_count(cfg),
        Some(lora) => {
            (0..cfg.num_hidden_layers).flat_map(|layer| lora_params(cfg, layer, lora.r, lora.targeted())).map(|p| p.numel() as u64).sum()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> MistralConfig {
        let cfg = serde_json::json!({
            "model_type": "mistral", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12, "head_dim": 4,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-5,
        });
        MistralConfig::from_json(&cfg, std::path::Path::new("config.json")).unwrap()
    }

    #[test]
    fn decoder_linears_are_quantized() {
        assert!(is_quantized_linear("model.layers.3.mlp.down_proj.weight"));
        assert!(is_quantized_linear("model.layers.0.self_attn.q_proj.weight"));
        for other in [
            "lm_head.weight",
            "model.embed_tokens.weight",
            "model.layers.0.input_layernorm.weight",
            "model.layers.0.mlp.down_proj.weight.absmax",
        ] {
            assert!(!is_quantized_linear(other), "{other}");
        }
    }

    /// Full fine-tuning trains one base part per block; LoRA adds each layer's adapters and
    /// freezes the base; QLoRA moves a layer's seven projections (and nothing else) to NF4.
    #[test]
    fn blocks_split_into_base_adapters_and_quantized_parts() {
        let cfg = config();
        let lora = LoraConfig { r: 2, alpha: 4.0, dropout: 0.0, targets: vec!["q_proj".into(), "v_proj".into()] };
        let names = |specs: &[ParamSpec]| specs.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        for block in Block::all(&cfg) {
            let full = block.parts(&cfg, None, false);
            assert_eq!((&full.base, &full.adapters, full.quantized.len()), (&block.params(&cfg), &None, 0));
            let with_adapters = block.parts(&cfg, Some(&lora), false);
            assert_eq!(with_adapters.base, block.params(&cfg));
            assert!(full.base_trained && !with_adapters.base_trained);
            let qlora = block.parts(&cfg, Some(&lora), true);
            match block {
                Block::Layer(i) => {
                    assert_eq!(with_adapters.adapters, Some(lora_params(&cfg, i, 2, lora.targeted())));
                    assert_eq!(
                        names(&qlora.base),
                        [format!("model.layers.{i}.input_layernorm.weight"), format!("model.layers.{i}.post_attention_layernorm.weight")]
                    );
                    assert_eq!(qlora.quantized.len(), PROJECTIONS.len());
                    assert!(qlora.quantized.iter().all(|s| s.shape.len() == 2 && is_quantized_linear(&s.name)));
                }
                Block::Embedding | Block::Head => {
                    assert_eq!((with_adapters.adapters, qlora.quantized.len()), (None, 0));
                    assert_eq!(qlora.base, block.params(&cfg));
                }
            }
        }
    }
}
